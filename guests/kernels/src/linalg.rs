//! Dense linear algebra: BLAS-3 style products (gemm, 2mm, 3mm, syrk, syr2k, trmm, symm,
//! doitgen) and BLAS-2 style matrix-vector kernels (atax, bicg, mvt, gemver, gesummv).

use crate::{Size, checksum, frac, mat, vector};
use alloc::vec;

const ALPHA: f64 = 1.5;
const BETA: f64 = 1.2;

/// `C := alpha·A·B + beta·C` with `A: ni×nk`, `B: nk×nj`, `C: ni×nj`.
pub fn gemm(size: Size) -> f64 {
    let [ni, nj, nk] = size.pick([[20, 25, 30], [60, 70, 80], [200, 220, 240], [480, 520, 560]]);
    let a = mat(ni, nk, |i, k| frac(i, k, 1, ni));
    let b = mat(nk, nj, |k, j| frac(k, j + 1, 0, nj));
    let mut c = mat(ni, nj, |i, j| frac(i, j + 2, 0, nk));
    for i in 0..ni {
        for j in 0..nj {
            c[i * nj + j] *= BETA;
        }
        for k in 0..nk {
            let t = ALPHA * a[i * nk + k];
            for j in 0..nj {
                c[i * nj + j] += t * b[k * nj + j];
            }
        }
    }
    checksum(&c)
}

/// `D := alpha·A·B·C + beta·D` (two chained products through a temporary).
pub fn mm2(size: Size) -> f64 {
    let [ni, nj, nk, nl] = size.pick([
        [16, 18, 22, 24],
        [40, 50, 70, 80],
        [180, 190, 210, 220],
        [360, 380, 420, 440],
    ]);
    let a = mat(ni, nk, |i, k| frac(i, k, 1, ni));
    let b = mat(nk, nj, |k, j| frac(k, j + 1, 0, nj));
    let c = mat(nj, nl, |j, l| frac(j, l + 3, 1, nl));
    let mut d = mat(ni, nl, |i, l| frac(i, l + 2, 0, nk));
    let mut tmp = vec![0.0; ni * nj];
    // tmp := alpha·A·B, each element as a dot product.
    for i in 0..ni {
        for j in 0..nj {
            let mut s = 0.0;
            for k in 0..nk {
                s += ALPHA * a[i * nk + k] * b[k * nj + j];
            }
            tmp[i * nj + j] = s;
        }
    }
    // D := tmp·C + beta·D.
    for i in 0..ni {
        for l in 0..nl {
            let mut s = BETA * d[i * nl + l];
            for j in 0..nj {
                s += tmp[i * nj + j] * c[j * nl + l];
            }
            d[i * nl + l] = s;
        }
    }
    checksum(&d)
}

/// `G := (A·B)·(C·D)` through the temporaries `E = A·B` and `F = C·D`.
pub fn mm3(size: Size) -> f64 {
    let [ni, nj, nk, nl, nm] = size.pick([
        [16, 18, 20, 22, 24],
        [40, 50, 60, 70, 80],
        [180, 190, 200, 210, 220],
        [400, 420, 440, 460, 480],
    ]);
    let a = mat(ni, nk, |i, k| frac(i, k, 1, 5 * ni));
    let b = mat(nk, nj, |k, j| frac(k, j + 1, 2, 5 * nj));
    let c = mat(nj, nm, |j, m| frac(j, m + 3, 0, 5 * nl));
    let d = mat(nm, nl, |m, l| frac(m, l + 2, 2, 5 * nk));
    let product = |x: &[f64], y: &[f64], rows: usize, inner: usize, cols: usize| {
        let mut z = vec![0.0; rows * cols];
        for i in 0..rows {
            for k in 0..inner {
                let t = x[i * inner + k];
                for j in 0..cols {
                    z[i * cols + j] += t * y[k * cols + j];
                }
            }
        }
        z
    };
    let e = product(&a, &b, ni, nk, nj);
    let f = product(&c, &d, nj, nm, nl);
    let g = product(&e, &f, ni, nj, nl);
    checksum(&g)
}

/// `y := Aᵀ·(A·x)` with `A: m×n`, repeated `reps` times.
pub fn atax(size: Size) -> f64 {
    let [m, n, reps] = size.pick([[38, 42, 1], [116, 124, 1], [390, 410, 1], [1900, 2100, 12]]);
    let a = mat(m, n, |i, j| frac(i, j, 1, n) / (5 * m) as f64);
    let x = vector(n, |i| 1.0 + i as f64 / n as f64);
    let mut y = vec![0.0; n];
    let mut tmp = vec![0.0; m];
    let mut total = 0.0;
    for _ in 0..reps {
        for j in 0..n {
            y[j] = 0.0;
        }
        for i in 0..m {
            let mut s = 0.0;
            for j in 0..n {
                s += a[i * n + j] * x[j];
            }
            tmp[i] = s;
            for j in 0..n {
                y[j] += a[i * n + j] * tmp[i];
            }
        }
        total += checksum(&y);
    }
    total
}

/// BiCG sub-kernel: `s := Aᵀ·r` and `q := A·p` with `A: n×m`, repeated `reps` times.
pub fn bicg(size: Size) -> f64 {
    let [m, n, reps] = size.pick([[38, 42, 1], [116, 124, 1], [390, 410, 1], [1900, 2100, 12]]);
    let a = mat(n, m, |i, j| frac(i, j + 1, 0, n) / n as f64);
    let p = vector(m, |i| (i % m) as f64 / m as f64);
    let r = vector(n, |i| (i % n) as f64 / n as f64);
    let mut s = vec![0.0; m];
    let mut q = vec![0.0; n];
    let mut total = 0.0;
    for _ in 0..reps {
        for j in 0..m {
            s[j] = 0.0;
        }
        for i in 0..n {
            let mut qi = 0.0;
            for j in 0..m {
                s[j] += r[i] * a[i * m + j];
                qi += a[i * m + j] * p[j];
            }
            q[i] = qi;
        }
        total += checksum(&s) + checksum(&q);
    }
    total
}

/// `x1 += A·y1` and `x2 += Aᵀ·y2` (accumulating over `reps` repetitions).
pub fn mvt(size: Size) -> f64 {
    let [n, reps] = size.pick([[40, 1], [120, 1], [400, 1], [2000, 10]]);
    let a = mat(n, n, |i, j| frac(i, j, 0, n) / n as f64);
    let mut x1 = vector(n, |i| (i % n) as f64 / n as f64);
    let mut x2 = vector(n, |i| ((i + 1) % n) as f64 / n as f64);
    let y1 = vector(n, |i| ((i + 3) % n) as f64 / n as f64);
    let y2 = vector(n, |i| ((i + 4) % n) as f64 / n as f64);
    for _ in 0..reps {
        for i in 0..n {
            let mut s = x1[i];
            for j in 0..n {
                s += a[i * n + j] * y1[j];
            }
            x1[i] = s;
        }
        for i in 0..n {
            for j in 0..n {
                x2[j] += a[i * n + j] * y2[i];
            }
        }
    }
    checksum(&x1) + checksum(&x2)
}

/// `A' := A + u1·v1ᵀ + u2·v2ᵀ`, `x := beta·A'ᵀ·y + z`, `w := alpha·A'·x`, repeated.
pub fn gemver(size: Size) -> f64 {
    let [n, reps] = size.pick([[40, 1], [120, 1], [400, 1], [2000, 6]]);
    let fnn = n as f64;
    let mut a = mat(n, n, |i, j| frac(i, j, 0, n) / fnn);
    let u1 = vector(n, |i| i as f64);
    let u2 = vector(n, |i| (i + 1) as f64 / fnn / 2.0);
    let v1 = vector(n, |i| (i + 1) as f64 / fnn / 4.0);
    let v2 = vector(n, |i| (i + 1) as f64 / fnn / 6.0);
    let y = vector(n, |i| (i + 1) as f64 / fnn / 8.0);
    let z = vector(n, |i| (i + 1) as f64 / fnn / 9.0);
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    let mut total = 0.0;
    for r in 0..reps {
        // Keep A bounded across repetitions: subtract the previous update's outer products.
        let sign = if r % 2 == 0 { 1.0 } else { -1.0 };
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] += sign * (u1[i] * v1[j] + u2[i] * v2[j]);
            }
        }
        for i in 0..n {
            x[i] = z[i];
        }
        for i in 0..n {
            for j in 0..n {
                x[j] += BETA * a[i * n + j] * y[i];
            }
        }
        for i in 0..n {
            let mut s = 0.0;
            for j in 0..n {
                s += ALPHA * a[i * n + j] * x[j];
            }
            w[i] = s;
        }
        total += checksum(&w) + checksum(&x);
    }
    total
}

/// `y := alpha·A·x + beta·B·x`, repeated `reps` times.
pub fn gesummv(size: Size) -> f64 {
    let [n, reps] = size.pick([[30, 1], [90, 1], [250, 1], [1300, 20]]);
    let a = mat(n, n, |i, j| frac(i, j, 1, n) / n as f64);
    let b = mat(n, n, |i, j| frac(i, j, 2, n) / n as f64);
    let x = vector(n, |i| (i % n) as f64 / n as f64);
    let mut y = vec![0.0; n];
    let mut total = 0.0;
    for _ in 0..reps {
        for i in 0..n {
            let mut sa = 0.0;
            let mut sb = 0.0;
            for j in 0..n {
                sa += a[i * n + j] * x[j];
                sb += b[i * n + j] * x[j];
            }
            y[i] = ALPHA * sa + BETA * sb;
        }
        total += checksum(&y);
    }
    total
}

/// Symmetric rank-k update of the lower triangle: `C := alpha·A·Aᵀ + beta·C`, `A: n×m`.
pub fn syrk(size: Size) -> f64 {
    let [m, n] = size.pick([[20, 30], [60, 80], [200, 240], [560, 640]]);
    let a = mat(n, m, |i, j| frac(i, j, 1, n) / n as f64);
    let mut c = mat(n, n, |i, j| frac(i, j, 2, m) / m as f64);
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in 0..m {
                s += a[i * m + k] * a[j * m + k];
            }
            c[i * n + j] = BETA * c[i * n + j] + ALPHA * s;
        }
    }
    checksum(&c)
}

/// Symmetric rank-2k update of the lower triangle: `C := alpha·(A·Bᵀ + B·Aᵀ) + beta·C`.
pub fn syr2k(size: Size) -> f64 {
    let [m, n] = size.pick([[20, 30], [60, 80], [200, 240], [440, 500]]);
    let a = mat(n, m, |i, j| frac(i, j, 1, n) / n as f64);
    let b = mat(n, m, |i, j| frac(i, j, 2, m) / m as f64);
    let mut c = mat(n, n, |i, j| frac(i, j, 3, n) / m as f64);
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in 0..m {
                s += a[i * m + k] * b[j * m + k] + b[i * m + k] * a[j * m + k];
            }
            c[i * n + j] = BETA * c[i * n + j] + ALPHA * s;
        }
    }
    checksum(&c)
}

/// Triangular matrix product `B := alpha·Aᵀ·B` with `A: m×m` unit lower triangular (only the
/// strictly lower part is read) and `B: m×n`, in place.
pub fn trmm(size: Size) -> f64 {
    let [m, n] = size.pick([[20, 30], [60, 80], [200, 240], [560, 640]]);
    // The upper triangle holds garbage that must never be read.
    let a = mat(m, m, |i, j| {
        if j < i {
            frac(i, j, 0, m) / m as f64
        } else {
            -999.0
        }
    });
    let mut b = mat(m, n, |i, j| frac(n + i - j, 1, 0, n) / n as f64);
    for i in 0..m {
        for j in 0..n {
            // Row i of the result only needs rows k > i of B, which are not yet overwritten.
            let mut s = b[i * n + j];
            for k in i + 1..m {
                s += a[k * m + i] * b[k * n + j];
            }
            b[i * n + j] = ALPHA * s;
        }
    }
    checksum(&b)
}

/// `C := alpha·A·B + beta·C` with `A: m×m` symmetric, stored in its lower triangle only.
pub fn symm(size: Size) -> f64 {
    let [m, n] = size.pick([[20, 30], [60, 80], [200, 240], [440, 500]]);
    let a = mat(m, m, |i, j| {
        if j <= i {
            frac(i, j, 0, m) / m as f64
        } else {
            -999.0
        }
    });
    let b = mat(m, n, |i, j| frac(n + i - j, 1, 0, 100) / m as f64);
    let mut c = mat(m, n, |i, j| frac(i, j, 0, 100) / m as f64);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for k in 0..=i {
                s += a[i * m + k] * b[k * n + j];
            }
            for k in i + 1..m {
                s += a[k * m + i] * b[k * n + j];
            }
            c[i * n + j] = BETA * c[i * n + j] + ALPHA * s;
        }
    }
    checksum(&c)
}

/// Multi-resolution analysis kernel: `A[r][q][·] := A[r][q][·]·C4` for every `(r, q)`.
pub fn doitgen(size: Size) -> f64 {
    let [nq, nr, np] = size.pick([[8, 10, 12], [20, 25, 30], [40, 50, 60], [80, 90, 128]]);
    let mut a = vec![0.0; nr * nq * np];
    for r in 0..nr {
        for q in 0..nq {
            for p in 0..np {
                a[(r * nq + q) * np + p] = ((r * q + p) % np) as f64 / np as f64;
            }
        }
    }
    let c4 = mat(np, np, |i, j| frac(i, j, 0, np) / np as f64);
    let mut sum = vec![0.0; np];
    for r in 0..nr {
        for q in 0..nq {
            let row = (r * nq + q) * np;
            for p in 0..np {
                let mut s = 0.0;
                for k in 0..np {
                    s += a[row + k] * c4[k * np + p];
                }
                sum[p] = s;
            }
            for p in 0..np {
                a[row + p] = sum[p];
            }
        }
    }
    checksum(&a)
}

//! Matrix factorisations: LU (Doolittle, no pivoting), Cholesky, modified Gram-Schmidt QR.

use crate::{Size, checksum, frac, mat, sqrt};
use alloc::vec;

/// A symmetric, strictly diagonally dominant matrix with a positive diagonal: symmetric
/// positive definite, and LU without pivoting is stable on it.
fn spd(n: usize) -> alloc::vec::Vec<f64> {
    mat(n, n, |i, j| {
        if i == j {
            n as f64 + 1.0
        } else {
            // Symmetric in (i, j), each entry in [0, 1).
            frac(i + j, (i * j) % n + 1, 1, n)
        }
    })
}

/// In-place LU factorisation `A = L·U` (L unit lower, U upper), Doolittle order.
pub fn lu(size: Size) -> f64 {
    let [n] = size.pick([[40], [120], [400], [720]]);
    let mut a = spd(n);
    for i in 0..n {
        // Row i of L: l_ij = (a_ij - sum_{k<j} l_ik u_kj) / u_jj.
        for j in 0..i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[k * n + j];
            }
            a[i * n + j] = s / a[j * n + j];
        }
        // Row i of U: u_ij = a_ij - sum_{k<i} l_ik u_kj.
        for j in i..n {
            let mut s = a[i * n + j];
            for k in 0..i {
                s -= a[i * n + k] * a[k * n + j];
            }
            a[i * n + j] = s;
        }
    }
    checksum(&a)
}

/// In-place Cholesky factorisation `A = L·Lᵀ`; L overwrites the lower triangle.
pub fn cholesky(size: Size) -> f64 {
    let [n] = size.pick([[40], [120], [400], [800]]);
    let mut a = spd(n);
    for i in 0..n {
        for j in 0..i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / a[j * n + j];
        }
        let mut d = a[i * n + i];
        for k in 0..i {
            d -= a[i * n + k] * a[i * n + k];
        }
        a[i * n + i] = sqrt(d);
    }
    // Only the lower triangle is the result.
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            l[i * n + j] = a[i * n + j];
        }
    }
    checksum(&l)
}

/// QR factorisation by modified Gram-Schmidt: `A: m×n` (m ≥ n) becomes orthonormal `Q`,
/// with `R: n×n` upper triangular.
pub fn gramschmidt(size: Size) -> f64 {
    let [m, n] = size.pick([[30, 20], [80, 60], [240, 200], [480, 400]]);
    // Full column rank: a dominant "diagonal" on top of bounded noise.
    let mut a = mat(m, n, |i, j| {
        frac(i, j, 0, m) + if i == j { 10.0 } else { 0.0 }
    });
    let mut q = vec![0.0; m * n];
    let mut r = vec![0.0; n * n];
    for k in 0..n {
        let mut nrm = 0.0;
        for i in 0..m {
            nrm += a[i * n + k] * a[i * n + k];
        }
        r[k * n + k] = sqrt(nrm);
        for i in 0..m {
            q[i * n + k] = a[i * n + k] / r[k * n + k];
        }
        for j in k + 1..n {
            let mut s = 0.0;
            for i in 0..m {
                s += q[i * n + k] * a[i * n + j];
            }
            r[k * n + j] = s;
            for i in 0..m {
                a[i * n + j] -= q[i * n + k] * s;
            }
        }
    }
    checksum(&q) + checksum(&r)
}

//! Stencil computations: Jacobi 1-D/2-D, Gauss-Seidel 2-D, 2-D FDTD (Yee scheme), 3-D heat
//! equation.

use crate::{Size, checksum, mat, vector};
use alloc::vec;

/// 3-point Jacobi smoothing, ping-ponging between two arrays for `t` steps.
pub fn jacobi_1d(size: Size) -> f64 {
    let [t, n] = size.pick([[20, 30], [40, 120], [100, 400], [2000, 40000]]);
    let mut a = vector(n, |i| (i as f64 + 2.0) / n as f64);
    let mut b = vector(n, |i| (i as f64 + 3.0) / n as f64);
    for _ in 0..t {
        for i in 1..n - 1 {
            b[i] = 0.33333 * (a[i - 1] + a[i] + a[i + 1]);
        }
        for i in 1..n - 1 {
            a[i] = 0.33333 * (b[i - 1] + b[i] + b[i + 1]);
        }
    }
    checksum(&a)
}

/// 5-point Jacobi smoothing on an `n×n` grid for `t` steps.
pub fn jacobi_2d(size: Size) -> f64 {
    let [t, n] = size.pick([[20, 30], [40, 90], [100, 250], [150, 700]]);
    let mut a = mat(n, n, |i, j| (i as f64 * (j as f64 + 2.0) + 2.0) / n as f64);
    let mut b = mat(n, n, |i, j| (i as f64 * (j as f64 + 3.0) + 3.0) / n as f64);
    for _ in 0..t {
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                b[i * n + j] = 0.2
                    * (a[i * n + j]
                        + a[i * n + j - 1]
                        + a[i * n + j + 1]
                        + a[(i + 1) * n + j]
                        + a[(i - 1) * n + j]);
            }
        }
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                a[i * n + j] = 0.2
                    * (b[i * n + j]
                        + b[i * n + j - 1]
                        + b[i * n + j + 1]
                        + b[(i + 1) * n + j]
                        + b[(i - 1) * n + j]);
            }
        }
    }
    checksum(&a)
}

/// In-place 9-point Gauss-Seidel relaxation on an `n×n` grid for `t` sweeps (each point uses
/// the already-updated neighbours above and to the left: a loop-carried dependence).
pub fn seidel_2d(size: Size) -> f64 {
    let [t, n] = size.pick([[20, 40], [40, 120], [100, 400], [20, 600]]);
    let mut a = mat(n, n, |i, j| (i as f64 * (j as f64 + 2.0) + 2.0) / n as f64);
    for _ in 0..t {
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                a[i * n + j] = (a[(i - 1) * n + j - 1]
                    + a[(i - 1) * n + j]
                    + a[(i - 1) * n + j + 1]
                    + a[i * n + j - 1]
                    + a[i * n + j]
                    + a[i * n + j + 1]
                    + a[(i + 1) * n + j - 1]
                    + a[(i + 1) * n + j]
                    + a[(i + 1) * n + j + 1])
                    / 9.0;
            }
        }
    }
    checksum(&a)
}

/// 2-D finite-difference time-domain (TE mode): electric fields `ex`, `ey` and magnetic field
/// `hz` on an `nx×ny` grid, with a source driven along the `i = 0` boundary.
pub fn fdtd_2d(size: Size) -> f64 {
    let [tmax, nx, ny] = size.pick([[20, 20, 30], [40, 60, 80], [100, 200, 240], [160, 600, 700]]);
    let mut ex = mat(nx, ny, |i, j| (i * (j + 1)) as f64 / nx as f64);
    let mut ey = mat(nx, ny, |i, j| (i * (j + 2)) as f64 / ny as f64);
    let mut hz = mat(nx, ny, |i, j| (i * (j + 3)) as f64 / nx as f64);
    for t in 0..tmax {
        for j in 0..ny {
            ey[j] = t as f64;
        }
        for i in 1..nx {
            for j in 0..ny {
                ey[i * ny + j] -= 0.5 * (hz[i * ny + j] - hz[(i - 1) * ny + j]);
            }
        }
        for i in 0..nx {
            for j in 1..ny {
                ex[i * ny + j] -= 0.5 * (hz[i * ny + j] - hz[i * ny + j - 1]);
            }
        }
        for i in 0..nx - 1 {
            for j in 0..ny - 1 {
                hz[i * ny + j] -= 0.7
                    * (ex[i * ny + j + 1] - ex[i * ny + j] + ey[(i + 1) * ny + j] - ey[i * ny + j]);
            }
        }
    }
    checksum(&ex) + checksum(&ey) + checksum(&hz)
}

/// Explicit 3-D heat equation on an `n³` grid for `t` steps (7-point stencil, ping-pong).
pub fn heat_3d(size: Size) -> f64 {
    let [t, n] = size.pick([[20, 10], [40, 20], [100, 40], [60, 80]]);
    let idx = |i: usize, j: usize, k: usize| (i * n + j) * n + k;
    let mut a = vec![0.0; n * n * n];
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                a[idx(i, j, k)] = (i + j + (n - k)) as f64 * 10.0 / n as f64;
            }
        }
    }
    let mut b = a.clone();
    let step = |src: &[f64], dst: &mut [f64]| {
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                for k in 1..n - 1 {
                    let c = src[idx(i, j, k)];
                    dst[idx(i, j, k)] = 0.125
                        * (src[idx(i + 1, j, k)] - 2.0 * c + src[idx(i - 1, j, k)])
                        + 0.125 * (src[idx(i, j + 1, k)] - 2.0 * c + src[idx(i, j - 1, k)])
                        + 0.125 * (src[idx(i, j, k + 1)] - 2.0 * c + src[idx(i, j, k - 1)])
                        + c;
                }
            }
        }
    };
    for _ in 0..t {
        step(&a, &mut b);
        step(&b, &mut a);
    }
    checksum(&a)
}

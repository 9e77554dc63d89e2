//! Data mining: sample covariance and Pearson correlation matrices of `m` variables observed
//! `n` times (`data: n×m`, one observation per row).

use crate::{Size, checksum, mat, sqrt};
use alloc::vec;

fn observations(n: usize, m: usize) -> alloc::vec::Vec<f64> {
    mat(n, m, |i, j| (i * j) as f64 / m as f64 + i as f64 / n as f64)
}

/// Subtracts each column's mean from the column.
fn center(data: &mut [f64], n: usize, m: usize) {
    for j in 0..m {
        let mut mean = 0.0;
        for i in 0..n {
            mean += data[i * m + j];
        }
        mean /= n as f64;
        for i in 0..n {
            data[i * m + j] -= mean;
        }
    }
}

/// Sample covariance `cov[i][j] = Σ_k (x_ki − x̄_i)(x_kj − x̄_j) / (n − 1)` (symmetric).
pub fn covariance(size: Size) -> f64 {
    let [m, n] = size.pick([[28, 32], [80, 100], [240, 260], [500, 560]]);
    let mut data = observations(n, m);
    center(&mut data, n, m);
    let mut cov = vec![0.0; m * m];
    for i in 0..m {
        for j in i..m {
            let mut s = 0.0;
            for k in 0..n {
                s += data[k * m + i] * data[k * m + j];
            }
            s /= (n - 1) as f64;
            cov[i * m + j] = s;
            cov[j * m + i] = s;
        }
    }
    checksum(&cov)
}

/// Pearson correlation matrix: standardise each column, then `corr = Zᵀ·Z` with unit diagonal.
pub fn correlation(size: Size) -> f64 {
    let [m, n] = size.pick([[28, 32], [80, 100], [240, 260], [500, 560]]);
    const EPS: f64 = 0.1;
    let mut data = observations(n, m);
    // The columns differ by a constant multiple of the row index plus a linear term; perturb
    // them so that no two columns are exactly proportional.
    for i in 0..n {
        for j in 0..m {
            data[i * m + j] += ((i * 7 + j * 3) % 11) as f64 / 11.0;
        }
    }
    center(&mut data, n, m);
    let sqrt_n = sqrt(n as f64);
    for j in 0..m {
        let mut var = 0.0;
        for i in 0..n {
            var += data[i * m + j] * data[i * m + j];
        }
        let mut sd = sqrt(var / n as f64);
        // Near-constant columns would divide by ~0: treat them as unit spread (as PolyBench).
        if sd <= EPS {
            sd = 1.0;
        }
        for i in 0..n {
            data[i * m + j] /= sqrt_n * sd;
        }
    }
    let mut corr = vec![0.0; m * m];
    for i in 0..m {
        corr[i * m + i] = 1.0;
        for j in i + 1..m {
            let mut s = 0.0;
            for k in 0..n {
                s += data[k * m + i] * data[k * m + j];
            }
            corr[i * m + j] = s;
            corr[j * m + i] = s;
        }
    }
    checksum(&corr)
}

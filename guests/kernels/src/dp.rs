//! Dynamic programming on integer tables: Floyd-Warshall all-pairs shortest paths and
//! Nussinov RNA secondary-structure folding. (PolyBench uses `int` for both; so do we, which
//! adds integer and branch-heavy code to the otherwise floating-point suite.)

use crate::Size;
use alloc::vec;

/// Checksum of an integer table, with the same weights as [`crate::checksum`].
fn checksum_i32(v: &[i32]) -> f64 {
    let mut s = 0.0;
    for i in 0..v.len() {
        s += v[i] as f64 * ((i % 17) + 1) as f64;
    }
    s
}

/// All-pairs shortest paths on a dense `n×n` distance matrix (999 = no direct edge).
pub fn floyd_warshall(size: Size) -> f64 {
    let [n] = size.pick([[60], [180], [500], [512]]);
    let mut path = vec![0_i32; n * n];
    for i in 0..n {
        for j in 0..n {
            let no_edge = (i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0;
            path[i * n + j] = if no_edge { 999 } else { (i * j % 7 + 1) as i32 };
        }
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                let via = path[i * n + k] + path[k * n + j];
                if via < path[i * n + j] {
                    path[i * n + j] = via;
                }
            }
        }
    }
    checksum_i32(&path)
}

/// Nussinov folding: `T[i][j]` is the largest number of non-crossing base pairs in the
/// subsequence `i..=j`, computed for `i` from the end and `j` increasing.
pub fn nussinov(size: Size) -> f64 {
    let [n] = size.pick([[60], [180], [500], [800]]);
    // Bases A, C, G, U as 0..=3; a pair matches when the two codes sum to 3 (A-U, C-G).
    let seq: alloc::vec::Vec<i32> = (0..n).map(|i| ((i + 1) % 4) as i32).collect();
    let mut t = vec![0_i32; n * n];
    let max = |a: i32, b: i32| if a >= b { a } else { b };
    for i in (0..n).rev() {
        for j in i + 1..n {
            let mut best = t[i * n + j];
            best = max(best, t[i * n + j - 1]);
            if i + 1 < n {
                best = max(best, t[(i + 1) * n + j]);
                let inner = t[(i + 1) * n + j - 1];
                if i + 1 < j {
                    let pair = if seq[i] + seq[j] == 3 { 1 } else { 0 };
                    best = max(best, inner + pair);
                } else {
                    best = max(best, inner);
                }
            }
            for k in i + 1..j {
                best = max(best, t[i * n + k] + t[(k + 1) * n + j]);
            }
            t[i * n + j] = best;
        }
    }
    checksum_i32(&t)
}

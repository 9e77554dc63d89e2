//! Clean-room numeric kernels of the kinds in PolyBench, for the WASM compute benchmark.
//!
//! Every kernel is written from its mathematical definition (linear algebra, solvers, stencils,
//! dynamic programming, data mining) and uses PolyBench's kernel *names* and its idea of dataset
//! sizes. The same source is compiled natively (linked into `psl-bench`) and for `wasm32`
//! (exported by `psl-kernels-wasm`), so a run on a WebAssembly engine can be compared with the
//! native run: each kernel returns a checksum (a weighted sum of its output) that must agree
//! to within 1e-9 relative.
//!
//! Rules the kernels follow so that both compilers see the same program:
//! * `#![no_std]` + `alloc`, no dependencies, no `unsafe`, no hints: plain index loops over flat
//!   `Vec<f64>` matrices (row-major, `a[i * cols + j]`), as a C programmer would write them.
//! * Only IEEE basic operations (`+ - * /`, comparisons); Rust never contracts `a * b + c` into
//!   an FMA, so native and wasm results are bit-identical. `core` has no `f64::sqrt`, so
//!   [`sqrt`] is a Newton iteration built from basic operations.
//! * Deterministic initialisation from the indices; the problem size is a run-time value
//!   ([`Size`]), so neither compiler can specialise a kernel for constant bounds.
//! * Initialisation happens inside the kernel and is timed with it; for the O(n²) kernels the
//!   computation is repeated (`reps`) so that it dominates.

#![no_std]
#![forbid(unsafe_code)]
#![allow(
    clippy::needless_range_loop,
    clippy::manual_memcpy,
    reason = "plain index loops, as in the C originals, so that both compilers see the same code"
)]

extern crate alloc;

mod datamining;
mod dp;
mod linalg;
mod solvers;
mod stencils;

pub use datamining::{correlation, covariance};
pub use dp::{floyd_warshall, nussinov};
pub use linalg::{
    atax, bicg, doitgen, gemm, gemver, gesummv, mm2, mm3, mvt, symm, syr2k, syrk, trmm,
};
pub use solvers::{cholesky, gramschmidt, lu};
pub use stencils::{fdtd_2d, heat_3d, jacobi_1d, jacobi_2d, seidel_2d};

/// Problem-size preset. `Mini`, `Small` and `Medium` follow PolyBench's dataset sizes where the
/// kernel exists there; `Bench` is chosen so each kernel runs for roughly 20–200 ms natively on
/// a current x86-64 core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// Tiny: for tests (well under a millisecond natively).
    Mini,
    /// PolyBench SMALL.
    Small,
    /// PolyBench MEDIUM.
    Medium,
    /// The benchmark size (about 20–200 ms natively).
    Bench,
}

impl Size {
    /// All presets, smallest first.
    pub const ALL: [Size; 4] = [Size::Mini, Size::Small, Size::Medium, Size::Bench];

    /// The numeric code used across the wasm ABI (`0..=3`).
    pub const fn code(self) -> i32 {
        match self {
            Size::Mini => 0,
            Size::Small => 1,
            Size::Medium => 2,
            Size::Bench => 3,
        }
    }

    /// Inverse of [`Size::code`]; `None` for an unknown code.
    pub const fn from_code(code: i32) -> Option<Size> {
        match code {
            0 => Some(Size::Mini),
            1 => Some(Size::Small),
            2 => Some(Size::Medium),
            3 => Some(Size::Bench),
            _ => None,
        }
    }

    /// Lower-case name (`"mini"`, `"small"`, `"medium"`, `"bench"`).
    pub const fn name(self) -> &'static str {
        match self {
            Size::Mini => "mini",
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Bench => "bench",
        }
    }

    /// Parses a name produced by [`Size::name`].
    pub fn from_name(name: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Picks the entry for this size from a table ordered `[mini, small, medium, bench]`.
    pub(crate) const fn pick<const K: usize>(self, table: [[usize; K]; 4]) -> [usize; K] {
        table[self.code() as usize]
    }
}

/// A kernel: runs at the given size and returns the checksum of its output.
pub type KernelFn = fn(Size) -> f64;

/// Every kernel, by its PolyBench name, in a stable order.
pub static KERNELS: &[(&str, KernelFn)] = &[
    ("gemm", gemm),
    ("2mm", mm2),
    ("3mm", mm3),
    ("atax", atax),
    ("bicg", bicg),
    ("mvt", mvt),
    ("gemver", gemver),
    ("gesummv", gesummv),
    ("syrk", syrk),
    ("syr2k", syr2k),
    ("trmm", trmm),
    ("symm", symm),
    ("doitgen", doitgen),
    ("lu", lu),
    ("cholesky", cholesky),
    ("gramschmidt", gramschmidt),
    ("jacobi-1d", jacobi_1d),
    ("jacobi-2d", jacobi_2d),
    ("seidel-2d", seidel_2d),
    ("fdtd-2d", fdtd_2d),
    ("heat-3d", heat_3d),
    ("floyd-warshall", floyd_warshall),
    ("nussinov", nussinov),
    ("covariance", covariance),
    ("correlation", correlation),
];

/// Looks a kernel up by name.
pub fn find(name: &str) -> Option<KernelFn> {
    KERNELS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Runs kernel number `index` (into [`KERNELS`]) at size `code` ([`Size::code`]).
/// Returns NaN for an unknown index or size, so a caller across an FFI boundary gets a value
/// that can never match a real checksum.
pub fn run_by_code(index: i32, code: i32) -> f64 {
    let (Ok(i), Some(size)) = (usize::try_from(index), Size::from_code(code)) else {
        return f64::NAN;
    };
    match KERNELS.get(i) {
        Some((_, f)) => f(size),
        None => f64::NAN,
    }
}

/// Weighted sum of `v`: element `i` has weight `1 + (i mod 17)`, so a permuted or shifted
/// output gives a different checksum.
pub fn checksum(v: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..v.len() {
        s += v[i] * ((i % 17) + 1) as f64;
    }
    s
}

/// Square root from basic IEEE operations (Newton's method), because `core` has no
/// `f64::sqrt`. Accurate to a few ulp for finite positive input, identical on every target.
pub fn sqrt(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return x;
    }
    // Initial guess: halve the exponent through the bit pattern (within a factor of ~1.5).
    let mut y = f64::from_bits((x.to_bits() >> 1) + (0x3ff_u64 << 51));
    for _ in 0..7 {
        y = 0.5 * (y + x / y);
    }
    y
}

/// A `rows × cols` row-major matrix initialised from `f(i, j)`.
pub(crate) fn mat(
    rows: usize,
    cols: usize,
    f: impl Fn(usize, usize) -> f64,
) -> alloc::vec::Vec<f64> {
    let mut m = alloc::vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            m[i * cols + j] = f(i, j);
        }
    }
    m
}

/// A vector initialised from `f(i)`.
pub(crate) fn vector(n: usize, f: impl Fn(usize) -> f64) -> alloc::vec::Vec<f64> {
    let mut v = alloc::vec![0.0; n];
    for i in 0..n {
        v[i] = f(i);
    }
    v
}

/// `((a * b + c) mod m) / m`: PolyBench-style deterministic initial values in `[0, 1)`.
pub(crate) fn frac(a: usize, b: usize, c: usize, m: usize) -> f64 {
    ((a * b + c) % m) as f64 / m as f64
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn sqrt_is_accurate() {
        for &x in &[
            1e-300, 1e-10, 0.25, 1.0, 2.0, 3.0, 10.0, 12345.678, 1e10, 1e300,
        ] {
            let got = sqrt(x);
            let want = std::primitive::f64::sqrt(x);
            assert!(
                ((got - want) / want).abs() < 4e-16,
                "sqrt({x}) = {got}, want {want}"
            );
        }
        assert_eq!(sqrt(0.0), 0.0);
        assert!(sqrt(-1.0).is_nan());
    }

    #[test]
    fn every_kernel_runs_at_mini_and_small_and_is_deterministic() {
        for (name, f) in KERNELS {
            for size in [Size::Mini, Size::Small] {
                let a = f(size);
                assert!(a.is_finite() && a != 0.0, "{name} {size:?}: checksum {a}");
                assert_eq!(a.to_bits(), f(size).to_bits(), "{name} not deterministic");
            }
        }
    }

    #[test]
    fn names_are_unique_and_codes_round_trip() {
        for (i, (a, _)) in KERNELS.iter().enumerate() {
            assert!(KERNELS[i + 1..].iter().all(|(b, _)| a != b), "{a} twice");
            assert!(find(a).is_some());
        }
        for s in Size::ALL {
            assert_eq!(Size::from_code(s.code()), Some(s));
            assert_eq!(Size::from_name(s.name()), Some(s));
        }
        assert!(run_by_code(99, 0).is_nan());
        assert!(run_by_code(0, 9).is_nan());
        assert!(run_by_code(-1, 0).is_nan());
    }

    #[test]
    fn gemm_matches_a_naive_product() {
        // Cross-check the i-k-j loop order against the textbook triple sum at MINI size.
        let (ni, nj, nk) = (20, 25, 30);
        let a = mat(ni, nk, |i, k| frac(i, k, 1, ni));
        let b = mat(nk, nj, |k, j| frac(k, j + 1, 0, nj));
        let c = mat(ni, nj, |i, j| frac(i, j + 2, 0, nk));
        let mut out = std::vec![0.0; ni * nj];
        for i in 0..ni {
            for j in 0..nj {
                let mut s = 1.2 * c[i * nj + j];
                for k in 0..nk {
                    s += 1.5 * a[i * nk + k] * b[k * nj + j];
                }
                out[i * nj + j] = s;
            }
        }
        let want = checksum(&out);
        let got = gemm(Size::Mini);
        assert!(((got - want) / want).abs() < 1e-12, "{got} vs {want}");
    }
}

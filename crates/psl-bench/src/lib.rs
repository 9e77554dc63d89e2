//! PSL benchmarks.
//!
//! * [`kernels`]: the WASM compute benchmark of DESIGN.md §7: the clean-room PolyBench-style
//!   kernels of `psl-kernels`, run natively and on WebAssembly engines (wasmtime Cranelift plain,
//!   with epoch interruption, with fuel; the wasmi interpreter), each with the SIMD and the
//!   scalar build of the module, with per-kernel ratios to native and geometric means, written
//!   as JSON, Markdown and an SVG plot.
//!
//! The binary `psl-bench` is the command-line front end (`psl-bench kernels --help`).

pub mod coldstart;
pub mod kernels;
pub mod locks;
pub mod start;
pub mod ycsb;

//! The `psl-kernels` suite as a WebAssembly module with **no imports at all**.
//!
//! Exports (all `extern "C"`):
//! * one function per kernel, named exactly as in [`psl_kernels::KERNELS`] (`"gemm"`, `"2mm"`,
//!   `"jacobi-2d"`, …), with signature `(size: i32) -> f64`: the size code is
//!   [`psl_kernels::Size::code`] (0 = mini, 1 = small, 2 = medium, 3 = bench) and the result is
//!   the kernel's checksum, or NaN for an unknown size code;
//! * `psl_kernel_count() -> i32` and `psl_kernel_run(index: i32, size: i32) -> f64` for callers
//!   that prefer to iterate by index.
//!
//! The problem size is a run-time argument so that neither the native nor the wasm compiler can
//! specialise a kernel for constant loop bounds.
//!
//! The crate is `no_std` on wasm32: a bump allocator built on `memory.grow` and a panic
//! handler that executes `unreachable` replace everything `std` would import from WASI. Built
//! for the host (e.g. by `cargo clippy` on the whole guest workspace) it is an ordinary `std`
//! crate with the same exports.

#![cfg_attr(target_arch = "wasm32", no_std)]

use psl_kernels::{KERNELS, Size, run_by_code};

#[cfg(target_arch = "wasm32")]
mod wasm_rt {
    //! Allocator and panic handler for the import-free wasm32 build.

    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32;
    use core::cell::UnsafeCell;

    const PAGE: usize = 65536;

    /// Bump allocator over pages obtained with `memory.grow`. Freeing the most recent block
    /// rewinds the bump pointer, and when no block is live the whole heap is reused. The kernels
    /// allocate a few large arrays per run, so this never fragments in practice.
    struct Bump(UnsafeCell<State>);

    struct State {
        /// First heap byte (0 = not initialised yet; memory is never empty when we first run).
        base: usize,
        /// Next free byte.
        next: usize,
        /// One past the last byte of linear memory that we own.
        end: usize,
        /// Number of live allocations.
        live: usize,
    }

    // SAFETY: wasm32 without the `atomics` feature has exactly one thread.
    unsafe impl Sync for Bump {}

    #[global_allocator]
    static ALLOC: Bump = Bump(UnsafeCell::new(State {
        base: 0,
        next: 0,
        end: 0,
        live: 0,
    }));

    // SAFETY: every block handed out lies in linear memory that we grew for ourselves and that
    // no other live block overlaps; `alloc` returns null when memory cannot grow.
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: single-threaded (see `Sync` above) and not re-entrant.
            let st = unsafe { &mut *self.0.get() };
            if st.base == 0 {
                st.base = wasm32::memory_size::<0>() * PAGE;
                st.next = st.base;
                st.end = st.base;
            }
            let Some(start) = st.next.checked_next_multiple_of(layout.align()) else {
                return core::ptr::null_mut();
            };
            let Some(stop) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if stop > st.end {
                let pages = (stop - st.end).div_ceil(PAGE);
                let previous = wasm32::memory_grow::<0>(pages);
                if previous == usize::MAX || previous * PAGE != st.end {
                    // Out of memory, or someone else grew memory behind our back.
                    return core::ptr::null_mut();
                }
                st.end += pages * PAGE;
            }
            st.next = stop;
            st.live += 1;
            start as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as in `alloc`.
            let st = unsafe { &mut *self.0.get() };
            st.live -= 1;
            if st.live == 0 {
                st.next = st.base;
            } else if ptr as usize + layout.size() == st.next {
                st.next = ptr as usize;
            }
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        wasm32::unreachable()
    }
}

/// Declares one export per kernel: `export_name` is the PolyBench name.
macro_rules! exports {
    ($($rust:ident = $name:literal => $kernel:path;)*) => {
        $(
            #[doc = concat!("Kernel `", $name, "` at size code `size`; its checksum, or NaN.")]
            #[unsafe(export_name = $name)]
            pub extern "C" fn $rust(size: i32) -> f64 {
                match Size::from_code(size) {
                    Some(s) => $kernel(s),
                    None => f64::NAN,
                }
            }
        )*
        /// Every export name, in the order of `psl_kernels::KERNELS` (checked by a test).
        #[cfg(test)]
        const EXPORTED: &[&str] = &[$($name),*];
    };
}

exports! {
    k_gemm = "gemm" => psl_kernels::gemm;
    k_2mm = "2mm" => psl_kernels::mm2;
    k_3mm = "3mm" => psl_kernels::mm3;
    k_atax = "atax" => psl_kernels::atax;
    k_bicg = "bicg" => psl_kernels::bicg;
    k_mvt = "mvt" => psl_kernels::mvt;
    k_gemver = "gemver" => psl_kernels::gemver;
    k_gesummv = "gesummv" => psl_kernels::gesummv;
    k_syrk = "syrk" => psl_kernels::syrk;
    k_syr2k = "syr2k" => psl_kernels::syr2k;
    k_trmm = "trmm" => psl_kernels::trmm;
    k_symm = "symm" => psl_kernels::symm;
    k_doitgen = "doitgen" => psl_kernels::doitgen;
    k_lu = "lu" => psl_kernels::lu;
    k_cholesky = "cholesky" => psl_kernels::cholesky;
    k_gramschmidt = "gramschmidt" => psl_kernels::gramschmidt;
    k_jacobi_1d = "jacobi-1d" => psl_kernels::jacobi_1d;
    k_jacobi_2d = "jacobi-2d" => psl_kernels::jacobi_2d;
    k_seidel_2d = "seidel-2d" => psl_kernels::seidel_2d;
    k_fdtd_2d = "fdtd-2d" => psl_kernels::fdtd_2d;
    k_heat_3d = "heat-3d" => psl_kernels::heat_3d;
    k_floyd_warshall = "floyd-warshall" => psl_kernels::floyd_warshall;
    k_nussinov = "nussinov" => psl_kernels::nussinov;
    k_covariance = "covariance" => psl_kernels::covariance;
    k_correlation = "correlation" => psl_kernels::correlation;
}

/// Number of kernels (`psl_kernels::KERNELS.len()`).
#[unsafe(no_mangle)]
pub extern "C" fn psl_kernel_count() -> i32 {
    KERNELS.len() as i32
}

/// Kernel number `index` at size code `size`; NaN for an unknown index or size.
#[unsafe(no_mangle)]
pub extern "C" fn psl_kernel_run(index: i32, size: i32) -> f64 {
    run_by_code(index, size)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kernel_is_exported_in_order() {
        let names: Vec<&str> = psl_kernels::KERNELS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, super::EXPORTED);
    }
}

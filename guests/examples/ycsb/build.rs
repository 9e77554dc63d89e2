//! Links the guest with a 32 KiB stack instead of Rust's default 1 MiB.
//!
//! Rust places the stack first in linear memory, so with the default the stack top, the data
//! and the heap all lie above 1 MiB: every invocation touches fresh pages there, which the
//! pooling allocator then has to madvise away again (page faults plus TLB shootdowns). With a
//! 32 KiB stack they fall inside the first 64 KiB, which the runtime keeps resident and resets
//! with a memset (`linear_memory_keep_resident`). Measured in `docs/benchmarks-ycsb.md`: a
//! one-read invocation drops from about 17 us to 7 us. The guest's deepest call chain uses a
//! few KiB of stack.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size=32768");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

//! Helpers shared by the integration tests: the built example guests and a one-line invoke.

use std::path::PathBuf;

use psl_node::Platform;

/// The path of example module `name` (see [`module`]).
#[allow(dead_code, reason = "not every test crate uses it")]
pub fn module_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../guests/out")
        .join(format!("{name}.wasm"))
}

#[allow(dead_code, reason = "not every test crate uses it")]
/// The example module `name`, built by `cargo xtask guests` into `guests/out/`.
pub fn module(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../guests/out")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the guests first: `cargo xtask guests` (or run tests with `cargo xtask test`)",
            path.display()
        )
    })
}

#[allow(dead_code, reason = "not every test crate uses it")]
/// Invokes `name` on `input` and returns its output as text; panics on any failure.
pub fn call(platform: &Platform, name: &str, input: &str) -> String {
    let outcome = platform.invoke(name, input.as_bytes().to_vec()).unwrap();
    String::from_utf8(outcome.result.unwrap()).unwrap()
}

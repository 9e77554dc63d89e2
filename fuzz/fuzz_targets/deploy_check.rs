//! The function-deploy path before compilation: arbitrary bytes through the deploy-time checks
//! (`module::inspect`) and, when they pass, through the deadline rewrite. Properties: nothing
//! panics, and every module the checks accept rewrites into a module that still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psl_runtime::{ModuleLimits, deadline, module};

fuzz_target!(|data: &[u8]| {
    let limits = ModuleLimits::default();
    if module::inspect(data, &limits, 1 << 30).is_ok() {
        let rewritten = deadline::instrument(data).expect("an accepted module must rewrite");
        let mut features = module::guest_features();
        features.insert(wasmparser::WasmFeatures::THREADS | wasmparser::WasmFeatures::MULTI_MEMORY);
        wasmparser::Validator::new_with_features(features)
            .validate_all(&rewritten)
            .expect("the rewritten module must validate");
    }
});

//! Function start-up benchmark: cold compile, cached-artifact load, warm pooled
//! instantiate+invoke of `hello`, and the cost of one host call, all on the production runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use psl_runtime::{NoState, Runtime, RuntimeConfig, State};

/// Results of one run.
#[derive(Debug, serde::Serialize)]
pub struct StartReport {
    /// Median cold compile (validate, rewrite, Cranelift) of `hello`, milliseconds.
    pub cold_compile_ms: f64,
    /// Median load of the authenticated cached artifact, milliseconds.
    pub cached_load_ms: f64,
    /// Warm pooled instantiate + invoke of `hello`: median, p99, p999 in microseconds.
    pub warm_invoke_us: [f64; 3],
    /// Invocations measured for `warm_invoke_us`.
    pub warm_invocations: u64,
    /// One host call (`input_len`) round trip from guest code, nanoseconds.
    pub host_call_ns: f64,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Loops `n` times calling `input_len` (or not, for the baseline).
fn host_call_module(with_call: bool) -> String {
    let call = if with_call {
        "(drop (call $f))"
    } else {
        "(nop)"
    };
    format!(
        r#"(module (import "psl" "input_len" (func $f (result i32)))
          (memory (export "memory") 1)
          (func (export "psl_run") (result i32) (local $i i32)
            (local.set $i (i32.const 1000000))
            (loop {call} (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if 0 (local.get $i)))
            (i32.const 0)))"#
    )
}

/// Runs the start-up benchmark on `hello.wasm`.
pub fn run(hello: &Path, invocations: u64) -> anyhow::Result<StartReport> {
    let wasm = std::fs::read(hello)
        .with_context(|| format!("reading {}; run `cargo xtask guests`", hello.display()))?;
    let mut cold = Vec::new();
    for _ in 0..10 {
        let runtime = Runtime::new(RuntimeConfig::default())?;
        let start = Instant::now();
        runtime.deploy(&wasm).map_err(|e| anyhow!("{e}"))?;
        cold.push(start.elapsed());
    }
    let cache = tempfile::tempdir()?;
    let cached_config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        cache_key: [9; 32],
        ..Default::default()
    };
    Runtime::new(cached_config.clone())?
        .deploy(&wasm)
        .map_err(|e| anyhow!("{e}"))?;
    let mut cached = Vec::new();
    for _ in 0..10 {
        let runtime = Runtime::new(cached_config.clone())?;
        let start = Instant::now();
        runtime.deploy(&wasm).map_err(|e| anyhow!("{e}"))?;
        cached.push(start.elapsed());
    }

    let runtime = Runtime::new(RuntimeConfig::default())?;
    let function = runtime.deploy(&wasm).map_err(|e| anyhow!("{e}"))?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    for i in 0..invocations + 1000 {
        let start = Instant::now();
        let outcome = runtime.invoke(&function, b"bench".to_vec(), NoState.session());
        let took = start.elapsed();
        outcome.result.map_err(|e| anyhow!("hello failed: {e}"))?;
        if i >= 1000 {
            histogram.record(took.as_nanos() as u64)?;
        }
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;

    let mut config = RuntimeConfig::default();
    config.limits.invocation.host_calls_max = 2_000_000;
    let runtime = Runtime::new(config)?;
    let mut per_variant = Vec::new();
    for with_call in [true, false] {
        let module = wat::parse_str(host_call_module(with_call))?;
        let function = runtime.deploy(&module).map_err(|e| anyhow!("{e}"))?;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let outcome = runtime.invoke(&function, Vec::new(), NoState.session());
            outcome
                .result
                .map_err(|e| anyhow!("host-call loop failed: {e}"))?;
            samples.push(outcome.elapsed);
        }
        per_variant.push(median(samples));
    }
    let host_call_ns = per_variant[0].saturating_sub(per_variant[1]).as_nanos() as f64 / 1e6;

    Ok(StartReport {
        cold_compile_ms: ms(median(cold)),
        cached_load_ms: ms(median(cached)),
        warm_invoke_us: [us(0.5), us(0.99), us(0.999)],
        warm_invocations: invocations,
        host_call_ns,
    })
}

/// The report as a Markdown table.
pub fn markdown(report: &StartReport) -> String {
    format!(
        "| measurement | value |\n|---|---:|\n\
         | cold compile of `hello` (validate, rewrite, Cranelift), median | {:.2} ms |\n\
         | cached-artifact load (MAC check + deserialize), median | {:.2} ms |\n\
         | warm pooled instantiate + invoke of `hello`, median | {:.1} us |\n\
         | warm pooled instantiate + invoke of `hello`, p99 | {:.1} us |\n\
         | warm pooled instantiate + invoke of `hello`, p99.9 | {:.1} us |\n\
         | one host call (`input_len`) from guest code | {:.0} ns |\n",
        report.cold_compile_ms,
        report.cached_load_ms,
        report.warm_invoke_us[0],
        report.warm_invoke_us[1],
        report.warm_invoke_us[2],
        report.host_call_ns
    )
}

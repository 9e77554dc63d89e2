//! Named limits for everything a guest function can ask of the runtime.
//!
//! Every limit has a unit in its name and a default chosen for a multi-tenant worker.
//! Exceeding one is a typed error for that invocation ([`crate::InvokeError::Limit`] or
//! [`crate::DeployError`]); the worker itself stays healthy.
//! This module owns no behaviour: it is configuration, read by the runtime and the host API.

use std::time::Duration;

/// Limits applied when a module is deployed (validated and compiled).
#[derive(Clone, Debug)]
pub struct ModuleLimits {
    /// Largest accepted module, in bytes.
    pub module_bytes_max: usize,
    /// Longest a compilation may take before the deploy fails.
    pub compile_time_max: Duration,
    /// Most functions (imported and defined) a module may declare.
    pub functions_max: u32,
    /// Largest single function body, in bytes.
    pub function_body_bytes_max: u32,
    /// Most locals a single function may declare.
    pub function_locals_max: u32,
    /// Most imports a module may declare.
    pub imports_max: u32,
    /// Most exports a module may declare.
    pub exports_max: u32,
    /// Total bytes of all data segments.
    pub data_bytes_max: u64,
    /// Most elements a table may declare as its initial size.
    pub table_elements_max: u64,
    /// Compiles that may still be running after their deploy was abandoned for taking too long.
    /// Past this, new deploys are refused until those finish (a compile cannot be cancelled).
    pub abandoned_compiles_max: usize,
}

impl Default for ModuleLimits {
    fn default() -> Self {
        Self {
            module_bytes_max: 32 << 20,
            compile_time_max: Duration::from_secs(30),
            functions_max: 100_000,
            function_body_bytes_max: 4 << 20,
            function_locals_max: 50_000,
            imports_max: 1_000,
            exports_max: 10_000,
            data_bytes_max: 64 << 20,
            table_elements_max: 100_000,
            abandoned_compiles_max: 2,
        }
    }
}

/// Limits applied to each invocation.
#[derive(Clone, Debug)]
pub struct InvocationLimits {
    /// Wall-clock budget of one invocation, enforced inside guest code by the deadline flag.
    pub execution_time_max: Duration,
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes_max: usize,
    /// Largest table an instance may grow to, in elements.
    pub table_elements_max: usize,
    /// Deepest WebAssembly stack, in bytes.
    pub wasm_stack_bytes_max: usize,
    /// Host calls (state API, log, input/output) one invocation may make.
    pub host_calls_max: u64,
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Largest input, in bytes.
    pub input_bytes_max: usize,
    /// Largest output (all `output` calls together), in bytes.
    pub output_bytes_max: usize,
    /// Largest captured stdout and, separately, stderr, in bytes.
    pub stdio_bytes_max: usize,
    /// Largest total of log messages, in bytes.
    pub log_bytes_max: usize,
    /// Most entries one prefix scan may return.
    pub scan_entries_max: usize,
    /// Longest a `lock` call may wait for a grant.
    pub lock_wait_max: Duration,
}

impl Default for InvocationLimits {
    fn default() -> Self {
        Self {
            execution_time_max: Duration::from_secs(10),
            memory_bytes_max: 256 << 20,
            table_elements_max: 100_000,
            wasm_stack_bytes_max: 512 << 10,
            host_calls_max: 10_000_000,
            key_bytes_max: 4 << 10,
            value_bytes_max: 1 << 20,
            input_bytes_max: 8 << 20,
            output_bytes_max: 8 << 20,
            stdio_bytes_max: 1 << 20,
            log_bytes_max: 64 << 10,
            scan_entries_max: 10_000,
            lock_wait_max: Duration::from_secs(10),
        }
    }
}

/// Limits on the worker as a whole.
#[derive(Clone, Debug)]
pub struct WorkerLimits {
    /// Instances that may run at the same time; further invocations wait up to
    /// `instance_wait_max` for a slot, then fail with [`crate::InvokeError::Busy`].
    pub concurrent_instances_max: u32,
    /// Longest an invocation waits for a free instance slot.
    pub instance_wait_max: Duration,
    /// Compiled modules kept in memory.
    pub modules_cached_max: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            concurrent_instances_max: 64,
            instance_wait_max: Duration::from_secs(5),
            modules_cached_max: 256,
        }
    }
}

/// All limits, grouped.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Deploy-time limits.
    pub module: ModuleLimits,
    /// Per-invocation limits.
    pub invocation: InvocationLimits,
    /// Per-worker limits.
    pub worker: WorkerLimits,
}

//! Typed errors of the runtime. Every failure a guest or a deployer can cause maps to one of
//! these; none of them is a panic.

use crate::state::StateError;

/// Why a module was refused at deploy time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The module is larger than `module_bytes_max`.
    #[error("module is {bytes} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Size of the module.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid WebAssembly module.
    #[error("malformed module: {0}")]
    Malformed(String),
    /// The module is valid but exceeds a shape limit (functions, locals, data, ...).
    #[error("module exceeds the {what} limit: {value} > {max}")]
    Shape {
        /// Which limit.
        what: &'static str,
        /// The module's value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The module imports something the runtime does not provide.
    #[error("module imports {module}::{name}, which PSL does not provide ({why})")]
    ForbiddenImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The module has no entry point (`psl_run` or `_start`).
    #[error("module exports neither `psl_run` nor `_start`")]
    NoEntryPoint,
    /// Compilation took longer than `compile_time_max`.
    #[error("compilation took longer than {0:?}")]
    CompileTimeout(std::time::Duration),
    /// Too many abandoned compilations are still running.
    #[error("too many compilations still running; try again later")]
    CompilerBusy,
    /// The compiler rejected the module.
    #[error("compilation failed: {0}")]
    Compile(String),
    /// A cached artifact failed its integrity check (it was recompiled; this is reported
    /// only if recompiling also failed).
    #[error("compiled-module cache: {0}")]
    Cache(String),
}

/// Which invocation limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `host_calls_max`.
    HostCalls,
    /// `key_bytes_max`.
    KeyBytes,
    /// `value_bytes_max`.
    ValueBytes,
    /// `input_bytes_max`.
    InputBytes,
    /// `output_bytes_max`.
    OutputBytes,
    /// `log_bytes_max`.
    LogBytes,
    /// `memory_bytes_max`.
    MemoryBytes,
    /// `table_elements_max`.
    TableElements,
    /// `scan_entries_max`.
    ScanEntries,
}

impl Limit {
    /// The configuration name of this limit.
    pub fn name(self) -> &'static str {
        match self {
            Limit::HostCalls => "host_calls_max",
            Limit::KeyBytes => "key_bytes_max",
            Limit::ValueBytes => "value_bytes_max",
            Limit::InputBytes => "input_bytes_max",
            Limit::OutputBytes => "output_bytes_max",
            Limit::LogBytes => "log_bytes_max",
            Limit::MemoryBytes => "memory_bytes_max",
            Limit::TableElements => "table_elements_max",
            Limit::ScanEntries => "scan_entries_max",
        }
    }
}

/// Why an invocation failed. The worker stays healthy after every one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The execution deadline passed; the guest was stopped.
    #[error("execution deadline of {0:?} exceeded")]
    DeadlineExceeded(std::time::Duration),
    /// An invocation limit was exceeded.
    #[error("limit {} exceeded: asked for {requested}, limit {max}", .limit.name())]
    Limit {
        /// Which limit.
        limit: Limit,
        /// What the guest asked for.
        requested: u64,
        /// The limit.
        max: u64,
    },
    /// The guest passed a pointer/length outside its linear memory to a host call.
    #[error("host call {call}: guest range {ptr:#x}+{len} is outside linear memory")]
    BadPointer {
        /// Host function name.
        call: &'static str,
        /// Guest pointer.
        ptr: u64,
        /// Guest length.
        len: u64,
    },
    /// The guest passed an invalid argument that cannot be a code (e.g. unknown lock mode).
    #[error("host call {call}: invalid argument: {why}")]
    BadArgument {
        /// Host function name.
        call: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// The guest overflowed its stack.
    #[error("guest stack overflow (limit {0} bytes)")]
    StackOverflow(usize),
    /// The guest trapped (e.g. `unreachable`, out-of-bounds access, division by zero).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest reported an error through the SDK.
    #[error("function failed: {0}")]
    Guest(String),
    /// The guest exited (WASI `proc_exit`) with a non-zero status.
    #[error("function exited with status {0}")]
    Exit(i32),
    /// No instance slot became free in time.
    #[error("worker busy: no instance slot free within {0:?}")]
    Busy(std::time::Duration),
    /// Ending the invocation's state session failed (its writes may not be durable).
    #[error("state: {0}")]
    State(#[from] StateError),
    /// The module has no entry point (`psl_run` or `_start`); it is a library of exports.
    #[error("module exports neither `psl_run` nor `_start`")]
    NoEntryPoint,
    /// An internal error of the runtime (a bug); the invocation failed, the worker continues.
    #[error("internal runtime error: {0}")]
    Internal(String),
}

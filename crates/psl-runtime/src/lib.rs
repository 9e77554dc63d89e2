//! The PSL function runtime: runs WebAssembly (wasmtime, Cranelift JIT) and native functions
//! against the state API, with a limit on everything a guest can ask for.
//!
//! Owns: the engine and instance pool, deploy-time checks and the deadline rewrite, the
//! compiled-module cache, the `psl` host import module (the guest ABI) and the checks of every
//! guest pointer, the classification of every failure into a typed error.
//! Must never: panic on anything a guest or a module author supplies; know about replication,
//! capsules, locks servers or networks (it sees only the [`State`]/[`Session`] traits);
//! do IO other than the compiled-module cache directory.

#![deny(unsafe_code)]

pub mod abi;
mod cache;
pub mod deadline;
mod error;
mod host;
mod limits;
pub mod module;
mod native;
mod runtime;
mod state;

pub use error::{DeployError, InvokeError, Limit};
pub use host::{Host, HostCtx, LogLevel, LogLine};
pub use limits::{InvocationLimits, Limits, ModuleLimits, WorkerLimits};
pub use module::{Entry, FunctionId, ModuleInfo};
pub use native::{NativeFunction, NoState};
pub use runtime::{DeadlineMode, Function, Outcome, Runtime, RuntimeConfig, RuntimeError};
pub use state::{Entries, LockMode, Session, State, StateError};

//! The embedded platform: one runtime, one state backend and a registry of named functions.
//!
//! This is what `psl dev` and `psl run` drive. It names functions (a name points at a module
//! hash or a native function), deploys modules through the runtime and invokes them with a
//! fresh state session each. It does no network IO itself (see `gateway.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use psl_runtime::{
    DeployError, Function, FunctionId, NativeFunction, Outcome, Runtime, RuntimeConfig,
    RuntimeError, State,
};

/// Longest function name.
pub const NAME_BYTES_MAX: usize = 64;

/// Errors of the platform (beyond those of a deploy or an invocation).
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// No function has this name or hash.
    #[error("no function named {0:?} is deployed")]
    UnknownFunction(String),
    /// The name is not acceptable.
    #[error("invalid function name {0:?}: use 1-64 of a-z, 0-9, '-', '_'")]
    BadName(String),
    /// The deploy failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The policy does not allow this module (functions are pinned by hash).
    #[error("function not allowed: {0}")]
    NotAllowed(String),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

#[derive(Clone)]
enum Target {
    Wasm(Arc<Function>),
    Native(Arc<dyn NativeFunction>),
}

/// A deployed function as listed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listing {
    /// Its name.
    pub name: String,
    /// `wasm:<module hash>` or `native`.
    pub kind: String,
}

/// Runtime + state + names.
pub struct Platform {
    runtime: Runtime,
    state: Arc<dyn State>,
    names: RwLock<BTreeMap<String, Target>>,
    gate: Option<FunctionGate>,
}

/// Decides, from a module's bytes, whether it may be compiled here (the trust policy's pinning
/// of function hashes); the error says why not.
pub type FunctionGate = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

fn check_name(name: &str) -> Result<(), PlatformError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PlatformError::BadName(name.to_string()))
    }
}

impl Platform {
    /// Starts a platform over `state`.
    pub fn new(config: RuntimeConfig, state: Arc<dyn State>) -> Result<Self, PlatformError> {
        Ok(Self {
            runtime: Runtime::new(config)?,
            state,
            names: RwLock::new(BTreeMap::new()),
            gate: None,
        })
    }

    /// Checks every module with `gate` before it is compiled.
    pub fn with_gate(mut self, gate: FunctionGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Deploys a module under `name` (replacing what the name pointed at).
    pub fn deploy(&self, name: &str, wasm: &[u8]) -> Result<FunctionId, PlatformError> {
        check_name(name)?;
        if let Some(gate) = &self.gate {
            gate(wasm).map_err(PlatformError::NotAllowed)?;
        }
        let function = self.runtime.deploy(wasm)?;
        if function.info().entry == psl_runtime::Entry::None {
            return Err(DeployError::NoEntryPoint.into());
        }
        let id = function.id();
        self.names
            .write()
            .insert(name.to_string(), Target::Wasm(function));
        tracing::info!(function = name, module = %id.short(), "deployed");
        Ok(id)
    }

    /// Registers a native function under its own name.
    pub fn register_native(&self, function: Arc<dyn NativeFunction>) -> Result<(), PlatformError> {
        check_name(function.name())?;
        self.names
            .write()
            .insert(function.name().to_string(), Target::Native(function));
        Ok(())
    }

    /// Every deployed function.
    pub fn list(&self) -> Vec<Listing> {
        self.names
            .read()
            .iter()
            .map(|(name, target)| Listing {
                name: name.clone(),
                kind: match target {
                    Target::Wasm(f) => format!("wasm:{}", f.id()),
                    Target::Native(_) => "native".into(),
                },
            })
            .collect()
    }

    fn target(&self, name: &str) -> Result<Target, PlatformError> {
        if let Some(target) = self.names.read().get(name) {
            return Ok(target.clone());
        }
        FunctionId::parse(name)
            .and_then(|id| self.runtime.function(&id))
            .map(Target::Wasm)
            .ok_or_else(|| PlatformError::UnknownFunction(name.to_string()))
    }

    /// Invokes a function by name (or module hash) on `input`. Blocks the calling thread.
    pub fn invoke(&self, name: &str, input: Vec<u8>) -> Result<Outcome, PlatformError> {
        let target = self.target(name)?;
        let session = self.state.session();
        Ok(match target {
            Target::Wasm(function) => self.runtime.invoke(&function, input, session),
            Target::Native(function) => {
                self.runtime
                    .invoke_native(function.as_ref(), input, session)
            }
        })
    }
}

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
    metrics: InvocationMetrics,
}

/// Upper bounds (seconds) of the invocation latency histogram's buckets.
pub const LATENCY_BUCKETS_S: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0, 10.0];

/// Outcome classes counted by [`InvocationMetrics`].
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "function_failed",
    "deadline_exceeded",
    "limit_exceeded",
    "busy",
    "state_unavailable",
    "unknown_function",
];

/// Counters of invocations by outcome, and a latency histogram (lock-free).
#[derive(Default)]
pub struct InvocationMetrics {
    outcomes: [std::sync::atomic::AtomicU64; 7],
    buckets: [std::sync::atomic::AtomicU64; 8],
    count: std::sync::atomic::AtomicU64,
    sum_us: std::sync::atomic::AtomicU64,
}

impl InvocationMetrics {
    fn record_unknown(&self) {
        self.outcomes[6].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn record(&self, outcome: &Outcome) {
        use psl_runtime::InvokeError;
        use std::sync::atomic::Ordering::Relaxed;
        let class = match &outcome.result {
            Ok(_) => 0,
            Err(InvokeError::DeadlineExceeded(_)) => 2,
            Err(InvokeError::Limit { .. }) => 3,
            Err(InvokeError::Busy(_)) => 4,
            Err(InvokeError::State(_)) => 5,
            Err(_) => 1,
        };
        self.outcomes[class].fetch_add(1, Relaxed);
        // One counter per invocation: the first bucket that holds it (the rest of the
        // cumulative histogram is summed when rendering; slower than the last bound: +Inf only).
        let seconds = outcome.elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.buckets)
            .find_map(|(bound, bucket)| (seconds <= *bound).then_some(bucket))
        {
            bucket.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(outcome.elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Prometheus text exposition of the counters and the histogram.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP psl_invocations_total Function invocations by outcome."
        );
        let _ = writeln!(out, "# TYPE psl_invocations_total counter");
        for (name, count) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "psl_invocations_total{{outcome=\"{name}\"}} {}",
                count.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP psl_invocation_seconds Invocation latency (instantiate, run, end the session)."
        );
        let _ = writeln!(out, "# TYPE psl_invocation_seconds histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "psl_invocation_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "psl_invocation_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "psl_invocation_seconds_sum {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "psl_invocation_seconds_count {count}");
        out
    }
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
            metrics: InvocationMetrics::default(),
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
        let target = match self.target(name) {
            Ok(target) => target,
            Err(e) => {
                self.metrics.record_unknown();
                return Err(e);
            }
        };
        let session = self.state.session();
        let outcome = match target {
            Target::Wasm(function) => self.runtime.invoke(&function, input, session),
            Target::Native(function) => {
                self.runtime
                    .invoke_native(function.as_ref(), input, session)
            }
        };
        self.metrics.record(&outcome);
        Ok(outcome)
    }

    /// Invocation counters and latency histogram.
    pub fn metrics(&self) -> &InvocationMetrics {
        &self.metrics
    }
}

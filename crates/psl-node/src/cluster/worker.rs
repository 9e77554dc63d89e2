//! The worker node: enrolls with the manager over the bus, opens the capsule's JetStream
//! stream, catches up to the heads the manager reported (so a restart cannot serve a state
//! older than the one it had), and serves invocations from the workers' queue group.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use psl_capsule::WriterId;
use psl_nats::{Bus, BusMessage, Subscription};
use psl_runtime::{InvokeError, RuntimeConfig};
use psl_store::RecordStore;

use super::channel::{Direction, ReplayWindow};
use super::link::BusLink;
use super::wire::{self, Invocation, InvokeStatus, encode_answer};
use crate::platform::{Platform, PlatformError};
use crate::scl::ClusterError;
use crate::scl::link::ManagerLink;
use crate::scl::shell::{Inner, WorkerState};
use crate::trust::SimTrust;

/// Invocations older (or newer) than this by the gateway's clock are refused: a replay by
/// the bus is bounded to this window.
pub const INVOCATION_FRESHNESS: Duration = Duration::from_secs(60);
/// How long a new worker waits, by default, to catch up to the manager's heads before it
/// gives up.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// How to start a worker node.
pub struct WorkerOptions {
    /// Application name (bus subjects).
    pub app: String,
    /// Functions to deploy: name and module file (checked against the policy's hashes).
    pub functions: Vec<(String, PathBuf)>,
    /// Threads serving invocations (each its own queue subscription).
    pub threads: usize,
    /// Runtime configuration.
    pub runtime: RuntimeConfig,
    /// How long to wait for the store to reach the manager's heads ([`CATCH_UP_MAX`]).
    pub catch_up_max: Duration,
}

/// A running worker node.
pub struct WorkerNode {
    inner: Arc<Inner>,
    platform: Arc<Platform>,
    _server: Arc<Server>,
}

/// Opens the record store of the capsule a worker enrolled for.
pub type OpenCapsuleStore<'a> =
    dyn Fn(&psl_capsule::CapsuleMetadata) -> Result<Arc<dyn RecordStore>, ClusterError> + 'a;

impl WorkerNode {
    /// Enrolls, opens the store, catches up, deploys the functions and starts serving.
    pub fn start(
        options: WorkerOptions,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
        open_store: &OpenCapsuleStore<'_>,
    ) -> Result<Self, ClusterError> {
        let link = Arc::new(BusLink::new(Arc::clone(&bus), &options.app, trust));
        let (core, genesis) = link.enroll()?;
        let hello = link
            .hello()
            .ok_or_else(|| ClusterError::Setup("no hello from the manager".into()))?;
        let metadata = link
            .metadata()
            .ok_or_else(|| ClusterError::Setup("enrolled without a capsule".into()))?;
        let store = open_store(&metadata)?;
        let inner = Inner::start_with(
            store,
            Arc::clone(&bus),
            &options.app,
            Arc::clone(&link) as Arc<dyn ManagerLink>,
            vec![(core, genesis)],
        )?;
        // Recovery and rollback protection: replay the store, then wait until everything the
        // manager reported (authenticated, fresh) is applied. A store that serves less (a
        // stale or truncated copy) makes the start fail instead of serving an older state.
        let deadline = Instant::now() + options.catch_up_max;
        loop {
            inner.catch_up(0)?;
            if inner.caught_up_to(0, &hello.heads) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Setup(
                    "the record store is behind the heads the manager reported; refusing to serve \
                     an older state"
                        .into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let allowed = hello.functions.clone();
        let gate: crate::platform::FunctionGate = Arc::new(move |module: &[u8]| {
            let hash = psl_trust::FunctionHash::of_module(module).to_string();
            if allowed.is_empty() || allowed.contains(&hash) {
                Ok(())
            } else {
                Err(format!("function {hash} is not in the policy"))
            }
        });
        let state = Arc::new(WorkerState {
            inner: Arc::clone(&inner),
            index: 0,
        });
        let platform = Arc::new(
            Platform::new(options.runtime, state)
                .map_err(|e| ClusterError::Setup(e.to_string()))?
                .with_gate(gate),
        );
        let server = Arc::new(Server {
            platform: Arc::clone(&platform),
            bus: Arc::clone(&bus),
            link: Arc::clone(&link),
            windows: Mutex::new(HashMap::new()),
            app: options.app.clone(),
            threads: options.threads.max(1),
            served: Mutex::new(std::collections::HashSet::new()),
            manager: hello.manager,
        });
        for (name, path) in &options.functions {
            let module = std::fs::read(path)
                .map_err(|e| ClusterError::Setup(format!("reading {}: {e}", path.display())))?;
            server
                .deploy(name, &module)
                .map_err(|e| ClusterError::Setup(format!("deploying {name}: {e}")))?;
        }
        // Functions deployed through a gateway (they replace configured ones of the same name).
        for (name, id) in &hello.deployed {
            let module = link
                .fetch_module(name)
                .map_err(|e| ClusterError::Setup(format!("fetching {name}: {e}")))?;
            if psl_runtime::FunctionId::of(&module).to_hex() != *id {
                return Err(ClusterError::Setup(format!(
                    "the manager sent another module for {name}"
                )));
            }
            server
                .deploy(name, &module)
                .map_err(|e| ClusterError::Setup(format!("deploying {name}: {e}")))?;
        }
        // Deploy notices from the manager, for as long as this worker runs.
        let notices = bus
            .subscribe(&wire::functions_subject(&options.app), 16)
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))?;
        let weak = Arc::downgrade(&server);
        std::thread::Builder::new()
            .name("psl-deploys".into())
            .spawn(move || {
                while let Ok(message) = notices.recv() {
                    let Some(server) = weak.upgrade() else { return };
                    server.deploy_notice(&message);
                }
            })
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let node = WorkerNode {
            inner,
            platform,
            _server: server,
        };
        bus.flush()
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))?;
        Ok(node)
    }

    /// The platform (functions and invocations of this worker).
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// The capsule this worker serves.
    pub fn capsule(&self) -> psl_capsule::CapsuleId {
        self.inner.store.metadata().id()
    }

    /// This worker's current writer id.
    pub fn writer(&self) -> WriterId {
        self.inner.workers[0].slot.lock().core.replica().writer()
    }

    /// Prometheus text for this worker.
    pub fn render_metrics(&self) -> String {
        let mut out = self.platform.metrics().render();
        out.push_str(&self.inner.render_metrics());
        out
    }

    /// Seals pending writes and waits until the replica applied everything in the store.
    pub fn settle(&self, wait: Duration) -> bool {
        self.inner.settle(wait)
    }

    /// The replica's state digest.
    pub fn digest(&self) -> [u8; 32] {
        self.inner.workers[0].slot.lock().core.replica().digest()
    }
}

struct Server {
    platform: Arc<Platform>,
    bus: Arc<dyn Bus>,
    link: Arc<BusLink>,
    windows: Mutex<HashMap<WriterId, ReplayWindow>>,
    app: String,
    threads: usize,
    /// Functions this worker has queue subscriptions for.
    served: Mutex<std::collections::HashSet<String>>,
    /// The manager's writer id (deploy notices come only from it).
    manager: WriterId,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Server {
    /// Deploys `module` as `name` and serves it (`threads` queue subscriptions on the
    /// function's own subject, so invocations go only to workers that deployed it).
    fn deploy(self: &Arc<Self>, name: &str, module: &[u8]) -> Result<(), String> {
        let subject = wire::invoke_subject(&self.app, name)
            .ok_or_else(|| format!("invalid function name {name:?}"))?;
        self.platform
            .deploy(name, module)
            .map_err(|e| e.to_string())?;
        if !self.served.lock().insert(name.to_string()) {
            return Ok(());
        }
        for index in 0..self.threads {
            let subscription = self
                .bus
                .queue_subscribe(&subject, wire::INVOKE_GROUP, 64)
                .map_err(|e| format!("bus: {e}"))?;
            let server = Arc::clone(self);
            std::thread::Builder::new()
                .name(format!("psl-invoke-{name}-{index}"))
                .spawn(move || server.run(&subscription))
                .map_err(|e| e.to_string())?;
        }
        self.bus.flush().map_err(|e| format!("bus: {e}"))
    }

    /// A deploy notice: sealed by the manager, answered `ok` once this worker serves it.
    fn deploy_notice(self: &Arc<Self>, message: &BusMessage) {
        let Some(keys) = self.link.channel_keys() else {
            return;
        };
        let Ok(opened) = keys.open(Direction::Request, &message.payload) else {
            tracing::warn!("an unauthenticated deploy notice was dropped");
            return;
        };
        if opened.sender != self.manager
            || !self
                .windows
                .lock()
                .entry(opened.sender)
                .or_default()
                .accept(opened.counter)
        {
            tracing::warn!("a deploy notice not from the manager, or replayed, was dropped");
            return;
        }
        let answer = match wire::DeployFrame::decode(&opened.payload) {
            Ok(frame) => match self.deploy(&frame.name, &frame.module) {
                Ok(()) => b"ok".to_vec(),
                Err(e) => {
                    tracing::warn!(function = %frame.name, %e, "deploy refused");
                    e.into_bytes()
                }
            },
            Err(e) => e.to_string().into_bytes(),
        };
        let sealed = keys.seal(Direction::Reply, opened.sender, opened.counter, &answer);
        if let Err(e) = self.bus.respond(message, Bytes::from(sealed)) {
            tracing::debug!(%e, "deploy answer not sent");
        }
    }

    fn run(&self, subscription: &Subscription) {
        loop {
            match subscription.recv() {
                Ok(message) => self.serve(&message),
                Err(_) => return,
            }
        }
    }

    fn serve(&self, message: &BusMessage) {
        let Some(keys) = self.link.channel_keys() else {
            return;
        };
        let Ok(opened) = keys.open(Direction::Request, &message.payload) else {
            tracing::warn!("an unauthenticated invocation was dropped");
            return;
        };
        let answer = self.answer(opened.sender, opened.counter, &opened.payload);
        let sealed = keys.seal(Direction::Reply, opened.sender, opened.counter, &answer);
        if let Err(e) = self.bus.respond(message, Bytes::from(sealed)) {
            tracing::debug!(%e, "invocation answer not sent");
        }
    }

    fn answer(&self, sender: WriterId, counter: u64, plain: &[u8]) -> Vec<u8> {
        let call = match Invocation::decode(plain) {
            Ok(call) => call,
            Err(e) => return encode_answer(InvokeStatus::Refused, e.to_string().as_bytes()),
        };
        let age = now_ms().abs_diff(call.sent_ms);
        if age > INVOCATION_FRESHNESS.as_millis() as u64 {
            return encode_answer(InvokeStatus::Refused, b"stale invocation refused");
        }
        if !self
            .windows
            .lock()
            .entry(sender)
            .or_default()
            .accept(counter)
        {
            return encode_answer(InvokeStatus::Refused, b"replayed invocation refused");
        }
        match self.platform.invoke(&call.function, call.input) {
            Err(PlatformError::UnknownFunction(name)) => encode_answer(
                InvokeStatus::UnknownFunction,
                format!("no function named {name:?} is deployed").as_bytes(),
            ),
            Err(e) => encode_answer(InvokeStatus::Internal, e.to_string().as_bytes()),
            Ok(outcome) => match outcome.result {
                Ok(output) => encode_answer(InvokeStatus::Ok, &output),
                Err(e) => {
                    let status = match &e {
                        InvokeError::DeadlineExceeded(_) => InvokeStatus::DeadlineExceeded,
                        InvokeError::Limit { .. } => InvokeStatus::LimitExceeded,
                        InvokeError::Busy(_) => InvokeStatus::Busy,
                        InvokeError::State(_) => InvokeStatus::StateUnavailable,
                        InvokeError::Internal(_) => InvokeStatus::Internal,
                        _ => InvokeStatus::FunctionFailed,
                    };
                    encode_answer(status, e.to_string().as_bytes())
                }
            },
        }
    }
}

//! The embedded SCL cluster: N workers in one process, each with its own replica and writer
//! incarnation, sharing a crash-safe DataCapsule directory and an in-process lock service.
//!
//! This is the I/O shell around `psl-scl`'s state machines for the embedded mode. It is a first
//! version (issue 4 is in progress): records are sealed and appended durably at `flush`/`unlock`
//! and then multicast over in-process channels; gaps are repaired from the store; locks are
//! FIFO with watermarks (release consistency). Not built yet: fencing enforcement at replicas
//! (see `docs/design/scl.md`), sync reports, recovery of a restarted worker, lease renewal
//! (invocations are bounded by their deadline, well below the lease).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use psl_capsule::{
    CapsuleMetadata, CreationParams, SealedRecord, Validity, WriterId, WriterKeyPair,
    issue_certificate,
};
use psl_nats::{Bus, LocalBus};
use psl_runtime::{Entries, LockMode, Session, State, StateError};
use psl_scl::body::Fence;
use psl_scl::lock::{
    FencingToken, Grant, HolderId, LockConfig, LockError, LockName, Reply, Watermark,
};
use psl_scl::manager::{Effects, Manager};
use psl_scl::replica::{ColdStore, NoColdStore, ReplicaLimits};
use psl_scl::worker::{Received, WorkerCore};
use psl_store::{DirStore, Durability, RecordStore, StoreOptions};

use crate::trust::{CERTIFICATE_LIFETIME_S, ManagerTrust, SimTrust, TrustError, now_s, random};

/// Errors setting up the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Key generation, certificate or capsule setup failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The store could not be created.
    #[error("store: {0}")]
    Store(#[from] psl_store::StoreError),
    /// Attestation or key distribution refused or failed (no key was issued).
    #[error("trust: {0}")]
    Trust(#[from] TrustError),
}

/// One worker slot: its current incarnation's core and the grants its sessions hold. Sessions
/// of an older incarnation get `Unavailable`.
struct Slot {
    core: WorkerCore,
    incarnation: u64,
    /// Grants held by sessions on this worker: the fences of every record it seals, and
    /// whether a record was sealed under each (then the release needs a verdict).
    held: BTreeMap<(Vec<u8>, u64), HeldGrant>,
}

struct HeldGrant {
    holder: HolderId,
    sealed_under: bool,
}

struct Worker {
    slot: Mutex<Slot>,
    applied: Condvar,
}

struct Inner {
    store: Arc<dyn RecordStore>,
    metadata: CapsuleMetadata,
    trust: Mutex<ManagerTrust>,
    workers: Vec<Arc<Worker>>,
    manager: Mutex<Manager>,
    granted: Mutex<HashMap<(HolderId, u64), Grant>>,
    grant_changed: Condvar,
    started: Instant,
    next_session: AtomicU64,
    next_worker: AtomicUsize,
    restarts: AtomicU64,
    lock_acquires: AtomicU64,
    lock_wait_us: AtomicU64,
    lease_ms: u64,
    /// The manager's records on their way to the store and the bus, in chain order.
    appender: Mutex<mpsc::Sender<AppendJob>>,
    /// Where memtable misses go (CapsuleDB later; today nothing is evicted, so nothing is there).
    cold: Arc<dyn ColdStore>,
    /// The bus records are multicast on (in process by default; NATS in cluster mode).
    bus: Arc<dyn Bus>,
}

/// Creates the record store for a new capsule (see [`SclCluster::start_with_store`]).
pub type OpenStore<'a> =
    dyn Fn(&CapsuleMetadata) -> Result<Arc<dyn RecordStore>, ClusterError> + 'a;

/// N workers, one capsule, one manager (lock service, verdicts, sync reports), in this process.
#[derive(Clone)]
pub struct SclCluster(Arc<Inner>);

/// The application name on the bus.
const APP: &str = "dev";
/// Messages a worker's record subscription buffers before dropping (then repaired from store).
const SUBSCRIPTION_CAPACITY: usize = 1 << 16;

/// Lease of a lock grant; sessions renew it while they run (invocations are far shorter).
pub const LEASE_MS: u64 = 10_000;
/// How often the manager expires leases.
const TICK: Duration = Duration::from_millis(20);
/// How often the manager publishes a sync report of every writer's head.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Starts a new worker incarnation: it enrolls with the manager (attestation, certificate and
/// data key) and only then has keys. Fresh key pair, hence a fresh writer id and chain.
fn start_core(
    trust: &mut ManagerTrust,
    metadata: &CapsuleMetadata,
    manager: WriterId,
) -> Result<(WorkerCore, SealedRecord), ClusterError> {
    let parts = trust.enroll_worker(metadata.id())?;
    let (mut core, genesis) = WorkerCore::start(
        &parts.metadata,
        parts.data_key,
        parts.writer,
        &parts.certificate,
        ReplicaLimits::default(),
    )
    .map_err(|e| ClusterError::Setup(e.to_string()))?;
    core.set_manager(manager);
    if let Some(list) = trust.revocation_list() {
        core.apply_revocations(&list)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
    }
    Ok((core, genesis))
}

impl SclCluster {
    /// Creates a fresh capsule in `dir` (which must not hold one) and starts `n_workers`.
    pub fn start(dir: &Path, n_workers: usize) -> Result<Self, ClusterError> {
        Self::start_with_lease(dir, n_workers, LEASE_MS)
    }

    /// [`Self::start`] with another lock lease (tests of expiry use short ones).
    pub fn start_with_lease(
        dir: &Path,
        n_workers: usize,
        lease_ms: u64,
    ) -> Result<Self, ClusterError> {
        Self::start_with_trust(dir, n_workers, lease_ms, SimTrust::generate()?)
    }

    /// [`Self::start_with_bus`] on an in-process bus.
    pub fn start_with_trust(
        dir: &Path,
        n_workers: usize,
        lease_ms: u64,
        trust: SimTrust,
    ) -> Result<Self, ClusterError> {
        let bus = Arc::new(LocalBus::new(psl_nats::bus::LOCAL_MAX_PAYLOAD));
        Self::start_with_bus(dir, n_workers, lease_ms, trust, bus)
    }

    /// [`Self::start_with_lease`] with given TEEs and policy. The owner attests the manager and
    /// provisions the owner secret (prepare phase), then every worker enrolls (attestation,
    /// certificate, data key); a refusal anywhere fails the start and issues no key.
    ///
    /// Records are multicast on `bus` (subject `psl.bus.<app>.records`, app `dev`): a
    /// [`LocalBus`] in process, or a `NatsBus`, so the records cross a real, untrusted NATS
    /// server. Subscriptions are bounded; what a full one drops is repaired from the store
    /// (gaps, sync reports).
    pub fn start_with_bus(
        dir: &Path,
        n_workers: usize,
        lease_ms: u64,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
    ) -> Result<Self, ClusterError> {
        let open = |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
            Ok(Arc::new(DirStore::create(
                dir,
                metadata,
                StoreOptions::default(),
            )?))
        };
        Self::start_with_store(n_workers, lease_ms, trust, bus, &open)
    }

    /// [`Self::start_with_bus`] on a record store that `open_store` creates for the capsule
    /// (a `DirStore`, or a `JetStreamStore` on a NATS cluster). The store only ever sees sealed,
    /// signed records, and every record read back is verified.
    pub fn start_with_store(
        n_workers: usize,
        lease_ms: u64,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
        open_store: &OpenStore<'_>,
    ) -> Result<Self, ClusterError> {
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&random()?[..16]);
        let params = CreationParams {
            created_s: now_s(),
            salt,
            record_bytes_max: u32::try_from(psl_capsule::limits::RECORD_BYTES_MAX)
                .unwrap_or(u32::MAX),
        };
        let (mut trust, metadata) = ManagerTrust::prepare(trust, "psl-dev", params)?;
        let store = open_store(&metadata)?;
        let manager_keys = WriterKeyPair::from_seed(&random()?);
        let not_before = now_s().saturating_sub(60);
        let manager_cert = issue_certificate(
            &trust.owner_key(),
            &metadata,
            manager_keys.public_key(),
            *blake3::hash(trust.manager_claims().measurement.to_string().as_bytes()).as_bytes(),
            not_before,
            not_before + CERTIFICATE_LIFETIME_S,
        );
        let lock_config = LockConfig {
            lease_ms,
            ..LockConfig::default()
        };
        let (manager, manager_genesis) = Manager::start(
            &metadata,
            &trust.data_key(&metadata.id()),
            manager_keys,
            &manager_cert,
            lock_config,
        )
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
        store.append(std::slice::from_ref(&manager_genesis), Durability::Always)?;
        let mut workers = Vec::new();
        let mut receivers = Vec::new();
        let mut genesis_records = vec![manager_genesis];
        for _ in 0..n_workers.max(1) {
            let (core, genesis) = start_core(&mut trust, &metadata, manager.writer_id())?;
            store.append(std::slice::from_ref(&genesis), Durability::Always)?;
            genesis_records.push(genesis);
            let subject = psl_nats::subjects::app_records("psl", APP)
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
            receivers.push(
                bus.subscribe(&subject, SUBSCRIPTION_CAPACITY)
                    .map_err(|e| ClusterError::Setup(format!("bus: {e}")))?,
            );
            workers.push(Arc::new(Worker {
                slot: Mutex::new(Slot {
                    core,
                    incarnation: 1,
                    held: BTreeMap::new(),
                }),
                applied: Condvar::new(),
            }));
        }
        let (append_tx, append_rx) = mpsc::channel();
        let cluster = SclCluster(Arc::new(Inner {
            store,
            metadata,
            trust: Mutex::new(trust),
            workers,
            manager: Mutex::new(manager),
            granted: Mutex::new(HashMap::new()),
            grant_changed: Condvar::new(),
            started: Instant::now(),
            next_session: AtomicU64::new(1),
            next_worker: AtomicUsize::new(0),
            restarts: AtomicU64::new(0),
            lock_acquires: AtomicU64::new(0),
            lock_wait_us: AtomicU64::new(0),
            lease_ms: lease_ms.max(1),
            bus,
            cold: Arc::new(NoColdStore),
            appender: Mutex::new(append_tx),
        }));
        {
            let inner = Arc::downgrade(&cluster.0);
            std::thread::Builder::new()
                .name("psl-scl-appender".into())
                .spawn(move || append_loop(&inner, &append_rx))
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        for (index, rx) in receivers.into_iter().enumerate() {
            let inner = Arc::downgrade(&cluster.0);
            std::thread::Builder::new()
                .name(format!("psl-scl-rx-{index}"))
                .spawn(move || receive_loop(&inner, index, &rx))
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        let inner = Arc::downgrade(&cluster.0);
        std::thread::Builder::new()
            .name("psl-scl-manager".into())
            .spawn(move || manager_loop(&inner))
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        for genesis in genesis_records {
            cluster.0.broadcast(&genesis);
        }
        Ok(cluster)
    }

    /// Workers in the cluster.
    pub fn n_workers(&self) -> usize {
        self.0.workers.len()
    }

    /// The state of worker `index` (sessions of it run on that worker's replica).
    pub fn worker(&self, index: usize) -> WorkerState {
        WorkerState {
            cluster: self.clone(),
            index: index % self.0.workers.len(),
        }
    }

    /// The state digest of every worker's replica (equal digests: converged).
    pub fn digests(&self) -> Vec<[u8; 32]> {
        self.0
            .workers
            .iter()
            .map(|w| w.slot.lock().core.replica().digest())
            .collect()
    }

    /// Worker incarnations ended so far (kills, and workers that found their own late writes
    /// refused).
    pub fn restarts(&self) -> u64 {
        self.0.restarts.load(Ordering::Relaxed)
    }

    /// Fenced records refused by each worker's replica (late writes of expired holders).
    pub fn fenced_refused(&self) -> Vec<u64> {
        self.0
            .workers
            .iter()
            .map(|w| w.slot.lock().core.fenced_refused())
            .collect()
    }

    /// A subscription to every record multicast from now on (what an observer of the bus
    /// sees).
    pub fn tap_bus(&self) -> Result<psl_nats::Subscription, ClusterError> {
        let subject = psl_nats::subjects::app_records("psl", APP)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        self.0
            .bus
            .subscribe(&subject, psl_nats::bus::SUBSCRIPTION_CAPACITY_MAX)
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))
    }

    /// Prometheus text for the cluster: records sealed, applied and refused, late writes
    /// fenced, restarts, enrolled workers, replication lag, lock acquisitions and wait time.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let heads = self.0.store.heads().unwrap_or_default();
        let (mut sealed, mut applied, mut rejected, mut fenced, mut lag_max) = (0, 0, 0, 0, 0);
        for worker in &self.0.workers {
            let slot = worker.slot.lock();
            let replica = slot.core.replica();
            let me = replica.writer();
            sealed += replica.applied(&me);
            rejected += slot.core.rejected();
            fenced += slot.core.fenced_refused();
            let mut lag = 0;
            for head in heads.iter().filter(|h| h.writer != me) {
                let done = replica.applied(&head.writer);
                applied += done;
                lag += head.seq.saturating_sub(done);
            }
            lag_max = lag_max.max(lag);
        }
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        metric(
            "psl_records_sealed",
            "gauge",
            "Records sealed by the current worker incarnations.",
            sealed as f64,
        );
        metric(
            "psl_records_applied",
            "gauge",
            "Other writers' records verified and applied, summed over workers.",
            applied as f64,
        );
        metric(
            "psl_records_rejected_total",
            "counter",
            "Records refused by replicas (forged, tampered, revoked).",
            rejected as f64,
        );
        metric(
            "psl_records_fenced_total",
            "counter",
            "Late writes refused by lock verdicts.",
            fenced as f64,
        );
        metric(
            "psl_replication_lag_records",
            "gauge",
            "Most records any worker has yet to apply.",
            lag_max as f64,
        );
        metric(
            "psl_worker_restarts_total",
            "counter",
            "Worker incarnations ended.",
            self.restarts() as f64,
        );
        metric(
            "psl_workers_enrolled_total",
            "counter",
            "Worker incarnations attested and given keys.",
            self.enrolled() as f64,
        );
        metric(
            "psl_lock_acquires_total",
            "counter",
            "Locks acquired by sessions.",
            self.0.lock_acquires.load(Ordering::Relaxed) as f64,
        );
        metric(
            "psl_lock_wait_seconds_total",
            "counter",
            "Time sessions spent in lock (queue and catch-up).",
            self.0.lock_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out
    }

    /// The writer id of worker `index`'s current incarnation.
    pub fn writer_of(&self, index: usize) -> WriterId {
        self.0.workers[index % self.0.workers.len()]
            .slot
            .lock()
            .core
            .replica()
            .writer()
    }

    /// Records refused by each worker's replica (forged, tampered, revoked writers, ...).
    pub fn rejected(&self) -> Vec<u64> {
        self.0
            .workers
            .iter()
            .map(|w| w.slot.lock().core.rejected())
            .collect()
    }

    /// Revokes a writer incarnation: the manager issues a new owner-signed revocation list and
    /// every worker (and every later incarnation) refuses that writer's records from now on.
    pub fn revoke_writer(&self, writer: WriterId) -> Result<(), ClusterError> {
        let list = self
            .0
            .trust
            .lock()
            .revoke(writer)
            .ok_or_else(|| ClusterError::Setup("revocation table full".into()))?;
        for worker in &self.0.workers {
            worker
                .slot
                .lock()
                .core
                .apply_revocations(&list)
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        Ok(())
    }

    /// What the owner verified about the manager at start (the prepare phase).
    pub fn manager_claims(&self) -> psl_trust::Claims {
        self.0.trust.lock().manager_claims().clone()
    }

    /// Worker incarnations enrolled (attested and given keys) so far.
    pub fn enrolled(&self) -> u64 {
        self.0.trust.lock().enrolled()
    }

    /// Answers a client's prepare challenge with the manager's evidence (`psl attest`).
    pub fn attest(&self, challenge: &[u8]) -> Result<Vec<u8>, TrustError> {
        self.0.trust.lock().offer(challenge)
    }

    /// The policy's verdict on a module about to be compiled (functions by hash).
    pub fn check_function(&self, module: &[u8]) -> Result<(), TrustError> {
        self.0.trust.lock().check_function(module).map(drop)
    }

    /// Kills worker `index` and starts a new incarnation of it from the record store, as after
    /// a crash: unflushed writes of the old incarnation are lost, its sessions get
    /// `Unavailable`, the locks they held are given up (their writes after the last
    /// acknowledged flush are refused everywhere), and the new incarnation replays the store.
    pub fn restart_worker(&self, index: usize) -> Result<(), ClusterError> {
        self.0.restart_worker(index % self.0.workers.len())
    }

    /// Seals every worker's pending updates and waits until every replica applied every
    /// record (convergence barrier, for tests and orderly shutdown).
    pub fn settle(&self, wait: Duration) -> bool {
        for index in 0..self.0.workers.len() {
            let _ = self.0.flush_worker(index, None, None);
        }
        let deadline = Instant::now() + wait;
        if !self.0.drain_appender(wait) {
            return false;
        }
        let Ok(heads) = self.0.store.heads() else {
            return false;
        };
        for worker in &self.0.workers {
            let mut slot = worker.slot.lock();
            while !heads.iter().all(|h| {
                let replica = slot.core.replica();
                h.writer == replica.writer() || replica.applied(&h.writer) >= h.seq
            }) {
                if worker.applied.wait_until(&mut slot, deadline).timed_out() {
                    return false;
                }
            }
        }
        true
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn broadcast(&self, record: &SealedRecord) {
        // A lost multicast is repaired from the store (a gap, or the next sync report).
        if let Err(e) = self.bus.publish_record(APP, record) {
            tracing::warn!(%e, "multicast failed; receivers repair from the store");
        }
    }

    /// Runs `call` on the manager and carries out the shell's half of the manager contract:
    /// its records are appended (in chain order, so under the manager lock) and multicast
    /// before any grant reaches a holder.
    ///
    /// The manager's records go, in chain order (queued under the manager lock), to the
    /// appender thread, which appends each durably and then multicasts it; grants are delivered
    /// at once. That keeps the contract: a holder does not proceed before it applied the
    /// verdicts its grant depends on, which it only receives once they are durable. The caller does not wait for the fsync of a verdict nobody waits for.
    fn with_manager<T>(
        &self,
        call: impl FnOnce(&mut Manager, u64) -> Result<(T, Effects), StateError>,
    ) -> Result<T, StateError> {
        let (value, grants) = {
            let mut manager = self.manager.lock();
            let (value, effects) = call(&mut manager, self.now_ms())?;
            if !effects.records.is_empty() {
                self.appender
                    .lock()
                    .send(AppendJob::Records(effects.records))
                    .map_err(|_| StateError::Unavailable("manager appender stopped".into()))?;
            }
            (value, effects.grants)
        };
        self.publish_grants(grants);
        Ok(value)
    }

    /// Waits until every manager record queued so far is durable and multicast.
    fn drain_appender(&self, wait: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.appender.lock().send(AppendJob::Barrier(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(wait).is_ok()
    }

    fn publish_grants(&self, grants: Vec<Grant>) {
        if grants.is_empty() {
            return;
        }
        let mut granted = self.granted.lock();
        for grant in grants {
            granted.insert((grant.holder, grant.request_id), grant);
        }
        drop(granted);
        self.grant_changed.notify_all();
    }

    /// Seals pending updates of worker `index` (all of them, or one session's under that
    /// session's grants), appends the records durably (one fsync per 8 MiB), then multicasts
    /// them. If `release` names a held grant, it leaves the fence set in the same critical
    /// section (so nothing sealed later carries it). Returns the worker's head seq, its writer
    /// id, whether anything was ever sealed under the released grant, and the grants the
    /// session still holds (to acknowledge the flush under).
    fn flush_worker(
        &self,
        index: usize,
        session: Option<(u64, HolderId, u64)>,
        release: Option<(&[u8], u64)>,
    ) -> Result<Flushed, StateError> {
        let worker = &self.workers[index];
        let (records, flushed) = {
            let mut slot = worker.slot.lock();
            if session.is_some_and(|(incarnation, _, _)| incarnation != slot.incarnation) {
                return Err(restarted());
            }
            let holder = session.map(|(_, holder, _)| holder);
            let mine = |held: &HeldGrant| holder.is_none_or(|h| h == held.holder);
            let fences: Vec<Fence> = slot
                .held
                .iter()
                .filter(|(_, held)| mine(held))
                .map(|((lock, token), _)| Fence {
                    lock: lock.clone(),
                    token: *token,
                })
                .collect();
            let mut records = Vec::new();
            loop {
                let sealed = match session {
                    Some((_, _, tag)) => slot.core.seal_tag(tag, &fences),
                    None => slot.core.seal(&fences),
                };
                match sealed.map_err(|e| StateError::Unavailable(e.to_string()))? {
                    Some(record) => records.push(record),
                    None => break,
                }
            }
            if !records.is_empty() {
                for held in slot.held.values_mut().filter(|held| mine(held)) {
                    held.sealed_under = true;
                }
            }
            let writer = slot.core.replica().writer();
            let head = slot.core.replica().applied(&writer);
            // Append under the slot lock so this worker's records reach the store in order.
            // One fsync per flush, shared with concurrent flushes of other workers and the
            // manager's appender (group commit): earlier chunks are written without one (the
            // store syncs a segment when it rotates to the next), the last one makes all durable.
            let chunks = append_chunks(&records);
            let last = chunks.len().saturating_sub(1);
            for (i, chunk) in chunks.into_iter().enumerate() {
                let durability = if i == last {
                    Durability::Batch
                } else {
                    Durability::Never
                };
                self.store
                    .append(chunk, durability)
                    .map_err(|e| StateError::Unavailable(format!("record store: {e}")))?;
            }
            let mut released_fenced = false;
            if let Some((lock, token)) = release
                && let Some(held) = slot.held.remove(&(lock.to_vec(), token))
            {
                released_fenced = held.sealed_under;
                slot.core.note_release(lock, token);
            }
            let still_held = if records.is_empty() {
                Vec::new()
            } else {
                slot.held
                    .iter()
                    .filter(|(_, held)| mine(held))
                    .map(|((lock, token), held)| (lock.clone(), *token, held.holder))
                    .collect()
            };
            (
                records,
                Flushed {
                    head,
                    writer,
                    released_fenced,
                    still_held,
                },
            )
        };
        for record in &records {
            self.broadcast(record);
        }
        Ok(flushed)
    }

    /// Acknowledges a flush under the grants the session still holds: its flushed records
    /// then commit even if one of those grants later expires. A refused acknowledgement means
    /// they will be refused: the caller's write is fenced.
    fn acknowledge(&self, flushed: &Flushed) -> Result<(), StateError> {
        if flushed.still_held.is_empty() {
            return Ok(());
        }
        let mut watermark = Watermark::new();
        watermark.observe(flushed.writer, flushed.head);
        for (lock, token, holder) in &flushed.still_held {
            let name = LockName::new(lock.clone()).map_err(|e| lock_error(b"", e))?;
            self.with_manager(|manager, now| {
                let (_, effects) = manager
                    .acknowledge_flush(now, *holder, &name, FencingToken(*token), &watermark)
                    .map_err(|e| manager_error(name.as_bytes(), e))?;
                Ok(((), effects))
            })?;
        }
        Ok(())
    }

    fn restart_worker(&self, index: usize) -> Result<(), ClusterError> {
        let worker = &self.workers[index];
        let manager_id = self.manager.lock().writer_id();
        let (core, genesis) = start_core(&mut self.trust.lock(), &self.metadata, manager_id)?;
        self.store
            .append(std::slice::from_ref(&genesis), Durability::Always)?;
        let old_holders: Vec<HolderId> = {
            let mut slot = worker.slot.lock();
            let holders = slot.held.values().map(|h| h.holder).collect();
            slot.core = core;
            slot.incarnation += 1;
            slot.held.clear();
            // Recovery: the new incarnation replays every chain in the store.
            let heads = self.store.heads()?;
            for head in heads {
                let mut next = 0;
                while next <= head.seq {
                    let records = self.store.read_range(head.writer, next..head.seq + 1)?;
                    let Some(last) = records.last() else { break };
                    next = last.seq() + 1;
                    for record in records {
                        let _ = slot.core.receive(record, Validity::At(now_s()));
                    }
                }
            }
            holders
        };
        self.restarts.fetch_add(1, Ordering::Relaxed);
        worker.applied.notify_all();
        self.broadcast(&genesis);
        // The old incarnation's grants: its writes after the last acknowledged flush are
        // refused by the verdicts.
        for holder in old_holders {
            let forgotten = self.with_manager(|manager, now| {
                let effects = manager
                    .forget_holder(now, holder)
                    .map_err(|e| StateError::Unavailable(e.to_string()))?;
                Ok(((), effects))
            });
            if let Err(e) = forgotten {
                tracing::warn!(%e, "manager could not forget a dead holder");
            }
        }
        tracing::info!(worker = index, "worker restarted from the record store");
        Ok(())
    }
}

enum AppendJob {
    Records(Vec<SealedRecord>),
    Barrier(mpsc::Sender<()>),
}

fn append_loop(inner: &std::sync::Weak<Inner>, jobs: &mpsc::Receiver<AppendJob>) {
    while let Ok(job) = jobs.recv() {
        match job {
            AppendJob::Barrier(done) => {
                let _ = done.send(());
            }
            AppendJob::Records(records) => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let mut appended = true;
                for chunk in append_chunks(&records) {
                    if let Err(e) = inner.store.append(chunk, Durability::Batch) {
                        // The store poisons itself after a failed fsync; holders waiting for
                        // these records time out rather than proceed without them.
                        tracing::error!(%e, "appending the manager's records failed");
                        appended = false;
                        break;
                    }
                }
                if appended {
                    for record in &records {
                        inner.broadcast(record);
                    }
                }
            }
        }
    }
}

struct Flushed {
    head: u64,
    writer: WriterId,
    released_fenced: bool,
    still_held: Vec<(Vec<u8>, u64, HolderId)>,
}

fn restarted() -> StateError {
    StateError::Unavailable("the worker restarted; retry the invocation".into())
}

fn manager_loop(inner: &std::sync::Weak<Inner>) {
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(TICK);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ticked = inner.with_manager(|manager, now| {
            let effects = manager
                .tick(now)
                .map_err(|e| StateError::Unavailable(e.to_string()))?;
            Ok(((), effects))
        });
        if let Err(e) = ticked {
            tracing::warn!(%e, "expiring leases failed");
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            if let Ok(heads) = inner.store.heads() {
                let reported = inner.with_manager(|manager, _| {
                    let record = manager
                        .sync_report(&heads)
                        .map_err(|e| StateError::Unavailable(e.to_string()))?;
                    Ok((
                        (),
                        Effects {
                            records: vec![record],
                            ..Effects::default()
                        },
                    ))
                });
                if let Err(e) = reported {
                    tracing::warn!(%e, "publishing a sync report failed");
                }
            }
        }
    }
}

/// Bytes appended to the store in one call at most (the store refuses more than 16 MiB).
const APPEND_BYTES_MAX: usize = 8 << 20;

/// Splits records into runs of at most [`APPEND_BYTES_MAX`] bytes (a single larger record
/// goes alone).
fn append_chunks(records: &[SealedRecord]) -> Vec<&[SealedRecord]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, record) in records.iter().enumerate() {
        let size = record.as_bytes().len();
        if i > start && bytes + size > APPEND_BYTES_MAX {
            chunks.push(&records[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

fn receive_loop(
    inner: &std::sync::Weak<Inner>,
    index: usize,
    subscription: &psl_nats::Subscription,
) {
    loop {
        let message = match subscription.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(message)) => message,
            Ok(None) if inner.strong_count() > 0 => continue,
            Ok(None) | Err(_) => return,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // This worker's own records come back too: recognise them by the writer id in the
        // header (bytes 34..50) before paying for a decode.
        if message
            .payload
            .get(34..50)
            .is_some_and(|id| inner.workers[index].slot.lock().core.replica().writer().0 == id)
        {
            continue;
        }
        let record = match message.decode_record() {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(worker = index, %e, "undecodable bus message dropped");
                continue;
            }
        };
        let worker = &inner.workers[index];
        let mut queue = vec![record];
        let mut slot = worker.slot.lock();
        while let Some(record) = queue.pop() {
            let received = slot.core.receive(record, Validity::At(now_s()));
            let mut wanted = slot.core.take_wanted();
            match received {
                Received::Gap {
                    writer, missing, ..
                } => wanted.push((writer, missing)),
                Received::Rejected(reason) => {
                    tracing::warn!(worker = index, %reason, "record refused")
                }
                _ => {}
            }
            // Repair from storage: every multicast record was durable first.
            for (writer, missing) in wanted {
                if let Ok(records) = inner.store.read_range(writer, missing) {
                    queue.extend(records.into_iter().rev());
                }
            }
        }
        let poisoned = slot.core.poisoned();
        drop(slot);
        worker.applied.notify_all();
        if poisoned {
            // A verdict refused this incarnation's own writes (it wrote under a lease that had
            // ended): its replica shows writes nobody else applies, so it starts over.
            tracing::warn!(
                worker = index,
                "own late writes were fenced; restarting the worker"
            );
            if let Err(e) = inner.restart_worker(index) {
                tracing::error!(worker = index, %e, "worker restart failed");
            }
        }
    }
}

/// The `State` of one worker of an [`SclCluster`]; or, from [`SclCluster::round_robin`], of
/// whichever worker is next.
#[derive(Clone)]
pub struct WorkerState {
    cluster: SclCluster,
    index: usize,
}

/// Spreads sessions over all workers of a cluster in turn (the embedded "load balancer").
#[derive(Clone)]
pub struct RoundRobin(pub SclCluster);

impl State for RoundRobin {
    fn session(&self) -> Box<dyn Session> {
        let n = self.0.0.workers.len();
        let index = self.0.0.next_worker.fetch_add(1, Ordering::Relaxed) % n;
        self.0.worker(index).session()
    }
}

impl State for WorkerState {
    fn session(&self) -> Box<dyn Session> {
        let number = self.cluster.0.next_session.fetch_add(1, Ordering::Relaxed);
        let (writer, incarnation) = {
            let slot = self.cluster.0.workers[self.index].slot.lock();
            (slot.core.replica().writer(), slot.incarnation)
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(&writer.0);
        hasher.update(&number.to_le_bytes());
        let mut holder = [0u8; 16];
        holder.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Box::new(SclSession {
            cluster: self.cluster.clone(),
            index: self.index,
            tag: number,
            incarnation,
            holder: HolderId(holder),
            held: Vec::new(),
            next_request: 1,
        })
    }
}

struct HeldLock {
    name: LockName,
    token: FencingToken,
    lease_until_ms: u64,
}

struct SclSession {
    cluster: SclCluster,
    index: usize,
    /// Tags this session's pending updates: they are sealed only under its own grants.
    tag: u64,
    incarnation: u64,
    holder: HolderId,
    held: Vec<HeldLock>,
    next_request: u64,
}

fn lock_error(name: &[u8], e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("lock {}: {e}", String::from_utf8_lossy(name)))
}

fn fenced_or(name: &[u8], e: LockError) -> StateError {
    match e {
        LockError::Fenced { .. } | LockError::LeaseExpired { .. } | LockError::NotHeld => {
            StateError::Fenced
        }
        other => lock_error(name, other),
    }
}

fn manager_error(name: &[u8], e: psl_scl::manager::ManagerError) -> StateError {
    match e {
        psl_scl::manager::ManagerError::Lock(e) => fenced_or(name, e),
        other => lock_error(name, other),
    }
}

impl SclSession {
    /// Gives back a grant this session will not use (it wrote nothing under it).
    fn give_back(&self, grant: &Grant) -> Result<(), StateError> {
        let holder = self.holder;
        self.inner().with_manager(|manager, now| {
            let effects = manager
                .release(
                    now,
                    holder,
                    &grant.name,
                    grant.token,
                    &Watermark::new(),
                    false,
                )
                .map_err(|e| lock_error(grant.name.as_bytes(), e))?;
            Ok(((), effects))
        })
    }

    fn worker(&self) -> &Arc<Worker> {
        &self.cluster.0.workers[self.index]
    }

    fn inner(&self) -> &Inner {
        &self.cluster.0
    }

    /// The worker's slot, if it is still the incarnation this session started on.
    fn slot(&self) -> Result<parking_lot::MutexGuard<'_, Slot>, StateError> {
        let slot = self.worker().slot.lock();
        if slot.incarnation == self.incarnation {
            Ok(slot)
        } else {
            Err(restarted())
        }
    }

    fn local_error(e: psl_scl::replica::ReplicaError) -> StateError {
        StateError::Limit(e.to_string())
    }

    /// Renews the leases past half their length (a running invocation keeps its locks; a
    /// stalled one loses them).
    fn renew(&mut self) -> Result<(), StateError> {
        let now = self.inner().now_ms();
        for held in &mut self.held {
            if held.lease_until_ms.saturating_sub(now) < self.cluster.0.lease_ms / 2 {
                let renewed =
                    self.cluster
                        .0
                        .manager
                        .lock()
                        .renew(now, self.holder, &held.name, held.token);
                held.lease_until_ms = renewed.map_err(|e| fenced_or(held.name.as_bytes(), e))?;
            }
        }
        Ok(())
    }

    fn wait_grant(
        &self,
        request_id: u64,
        name: &LockName,
        deadline: Instant,
    ) -> Result<Grant, StateError> {
        let inner = self.inner();
        let mut granted = inner.granted.lock();
        loop {
            if let Some(grant) = granted.remove(&(self.holder, request_id)) {
                return Ok(grant);
            }
            if inner
                .grant_changed
                .wait_until(&mut granted, deadline)
                .timed_out()
            {
                if let Some(grant) = granted.remove(&(self.holder, request_id)) {
                    return Ok(grant);
                }
                drop(granted);
                let holder = self.holder;
                inner.with_manager(|manager, now| {
                    Ok(((), manager.cancel(now, holder, name, request_id)))
                })?;
                // A grant may have raced the cancel: then give it back at once (no writes).
                let raced = inner.granted.lock().remove(&(self.holder, request_id));
                if let Some(grant) = raced {
                    self.give_back(&grant)?;
                }
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name.as_bytes()).into_owned(),
                ));
            }
        }
    }

    fn release(&mut self, position: usize) -> Result<(), StateError> {
        let held = self.held.swap_remove(position);
        let flushed = self.inner().flush_worker(
            self.index,
            Some((self.incarnation, self.holder, self.tag)),
            Some((held.name.as_bytes(), held.token.0)),
        )?;
        // The records carry the session's other grants too: acknowledge them under those, or
        // an expiry of one of them later would refuse what this release made visible.
        self.inner().acknowledge(&flushed)?;
        let mut watermark = Watermark::new();
        watermark.observe(flushed.writer, flushed.head);
        let holder = self.holder;
        self.inner().with_manager(|manager, now| {
            let effects = manager
                .release(
                    now,
                    holder,
                    &held.name,
                    held.token,
                    &watermark,
                    flushed.released_fenced,
                )
                .map_err(|e| manager_error(held.name.as_bytes(), e))?;
            Ok(((), effects))
        })
    }
}

impl Session for SclSession {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.renew()?;
        let cold = &*self.cluster.0.cold;
        self.slot()?
            .core
            .replica_mut()
            .get_through(key, cold)
            .map_err(|e| StateError::Unavailable(e.to_string()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.renew()?;
        self.slot()?
            .core
            .replica_mut()
            .put_as(self.tag, key, value)
            .map(drop)
            .map_err(Self::local_error)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StateError> {
        self.renew()?;
        self.slot()?
            .core
            .replica_mut()
            .delete_as(self.tag, key)
            .map_err(Self::local_error)
    }

    fn scan_prefix(&mut self, prefix: &[u8], limit: usize) -> Result<Entries, StateError> {
        self.renew()?;
        Ok(self.slot()?.core.replica().scan_prefix(prefix, limit))
    }

    fn lock(&mut self, name: &[u8], mode: LockMode, wait: Duration) -> Result<(), StateError> {
        let started = Instant::now();
        let result = self.lock_inner(name, mode, wait);
        let inner = &self.cluster.0;
        if result.is_ok() {
            inner.lock_acquires.fetch_add(1, Ordering::Relaxed);
        }
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        inner.lock_wait_us.fetch_add(waited, Ordering::Relaxed);
        result
    }

    fn unlock(&mut self, name: &[u8]) -> Result<(), StateError> {
        self.unlock_inner(name)
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.flush_inner()
    }

    fn finish(&mut self) -> Result<(), StateError> {
        self.finish_inner()
    }
}

impl SclSession {
    fn lock_inner(
        &mut self,
        name: &[u8],
        mode: LockMode,
        wait: Duration,
    ) -> Result<(), StateError> {
        let deadline = Instant::now() + wait;
        let lock = LockName::new(name.to_vec()).map_err(|e| lock_error(name, e))?;
        if self.held.iter().any(|held| held.name == lock) {
            return Err(StateError::AlreadyHeld(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        self.renew()?;
        drop(self.slot()?);
        let request_id = self.next_request;
        self.next_request += 1;
        let mode = match mode {
            LockMode::Read => psl_scl::lock::LockMode::Read,
            LockMode::Write => psl_scl::lock::LockMode::Write,
        };
        let holder = self.holder;
        let reply = self
            .inner()
            .manager
            .lock()
            .acquire(
                self.inner().now_ms(),
                holder,
                request_id,
                lock.clone(),
                mode,
            )
            .map_err(|e| StateError::Limit(e.to_string()))?;
        let grant = match reply {
            Reply::Granted(grant) => grant,
            Reply::Queued { .. } => self.wait_grant(request_id, &lock, deadline)?,
        };
        // From here on, this worker seals its records under the grant's fence.
        {
            let mut slot = match self.slot() {
                Ok(slot) => slot,
                Err(e) => {
                    let _ = self.give_back(&grant);
                    return Err(e);
                }
            };
            if !slot.core.note_grant(grant.name.as_bytes(), grant.token.0) {
                // The lease ended before this session could use the grant.
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            slot.held.insert(
                (grant.name.as_bytes().to_vec(), grant.token.0),
                HeldGrant {
                    holder,
                    sealed_under: false,
                },
            );
        }
        self.held.push(HeldLock {
            name: grant.name.clone(),
            token: grant.token,
            lease_until_ms: grant.lease_until_ms,
        });
        // Release consistency: do not return before everything released under this lock
        // (and every verdict issued so far) is applied here.
        let worker = Arc::clone(self.worker());
        let mut slot = worker.slot.lock();
        loop {
            if slot.incarnation != self.incarnation {
                return Err(restarted());
            }
            if slot.core.replica().caught_up(grant.watermark.iter()) {
                return Ok(());
            }
            if worker.applied.wait_until(&mut slot, deadline).timed_out() {
                drop(slot);
                let position = self.held.len() - 1;
                let _ = self.release(position);
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
        }
    }

    fn unlock_inner(&mut self, name: &[u8]) -> Result<(), StateError> {
        let position = self
            .held
            .iter()
            .position(|held| held.name.as_bytes() == name)
            .ok_or_else(|| StateError::NotHeld(String::from_utf8_lossy(name).into_owned()))?;
        self.release(position)
    }

    fn flush_inner(&mut self) -> Result<(), StateError> {
        self.renew()?;
        let flushed = self.inner().flush_worker(
            self.index,
            Some((self.incarnation, self.holder, self.tag)),
            None,
        )?;
        self.inner().acknowledge(&flushed)
    }

    fn finish_inner(&mut self) -> Result<(), StateError> {
        let flushed = self.flush_inner();
        let mut released = Ok(());
        while !self.held.is_empty() {
            let result = self.release(self.held.len() - 1);
            if released.is_ok() {
                released = result;
            }
        }
        flushed.and(released)
    }
}

impl Drop for SclSession {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

//! The SCL's I/O shell around `psl-scl`'s state machines.
//!
//! - [`host`]: the manager side (lock service, verdicts, sync reports; an appender thread makes
//!   its records durable in chain order, then multicasts them).
//! - [`shell`](self::shell): the worker side (worker incarnations, record subscriptions, gap
//!   repair, sessions with per-session fences, restarts).
//! - [`link`]: what a worker needs from the manager ([`link::ManagerLink`]): in process here,
//!   sealed requests over NATS in cluster mode (`crate::cluster`).
//!
//! [`SclCluster`] is the embedded mode: N workers and the manager in one process, sharing a
//! crash-safe DataCapsule directory (or any `RecordStore`) and a bus. See `docs/design/scl.md`
//! for the protocol, ack points and recovery.

pub(crate) mod host;
pub(crate) mod link;
pub(crate) mod shell;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use psl_capsule::{CapsuleMetadata, CreationParams, WriterId, WriterKeyPair, issue_certificate};
use psl_nats::{Bus, LocalBus};
use psl_runtime::StateError;
use psl_scl::lock::{LockConfig, LockError};
use psl_scl::manager::Manager;
use psl_store::{DirStore, Durability, RecordStore, StoreOptions};

use crate::trust::{CERTIFICATE_LIFETIME_S, ManagerTrust, SimTrust, TrustError, now_s, random};
use link::{GrantBoard, LocalLink};
use shell::Inner;
pub use shell::{RoundRobin, WorkerState};

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

/// Creates the record store for a new capsule (see [`SclCluster::start_with_store`]).
pub type OpenStore<'a> =
    dyn Fn(&CapsuleMetadata) -> Result<Arc<dyn RecordStore>, ClusterError> + 'a;

/// N workers, one capsule, one manager (lock service, verdicts, sync reports), in this process.
#[derive(Clone)]
pub struct SclCluster {
    pub(crate) inner: Arc<Inner>,
    local: Arc<LocalLink>,
}

/// The application name on the bus in the embedded mode.
const APP: &str = "dev";

/// Lease of a lock grant; sessions renew it while they run (invocations are far shorter).
pub const LEASE_MS: u64 = 10_000;

pub(crate) fn lock_error(name: &[u8], e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("lock {}: {e}", String::from_utf8_lossy(name)))
}

/// Whether the lock service refused because the caller's grant is gone (expired, fenced,
/// not held): its writes under that grant are refused.
pub(crate) fn grant_lost(e: &LockError) -> bool {
    matches!(
        e,
        LockError::Fenced { .. } | LockError::LeaseExpired { .. } | LockError::NotHeld
    )
}

pub(crate) fn fenced_or(name: &[u8], e: LockError) -> StateError {
    if grant_lost(&e) {
        StateError::Fenced
    } else {
        lock_error(name, e)
    }
}

pub(crate) fn manager_error(name: &[u8], e: psl_scl::manager::ManagerError) -> StateError {
    match e {
        psl_scl::manager::ManagerError::Lock(e) => fenced_or(name, e),
        other => lock_error(name, other),
    }
}

/// A fresh capsule's creation parameters.
pub(crate) fn creation_params() -> Result<CreationParams, ClusterError> {
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&random()?[..16]);
    Ok(CreationParams {
        created_s: now_s(),
        salt,
        record_bytes_max: u32::try_from(psl_capsule::limits::RECORD_BYTES_MAX).unwrap_or(u32::MAX),
    })
}

/// Starts the manager's chain: keys, a certificate from the owner key, the state machine and
/// its genesis record (appended durably before anything else; returned to be multicast).
pub(crate) fn start_manager(
    trust: &ManagerTrust,
    metadata: &CapsuleMetadata,
    store: &dyn RecordStore,
    lease_ms: u64,
) -> Result<(Manager, psl_capsule::SealedRecord), ClusterError> {
    let manager_keys = WriterKeyPair::from_seed(&random()?);
    let not_before = now_s().saturating_sub(60);
    let manager_cert = issue_certificate(
        &trust.owner_key(),
        metadata,
        manager_keys.public_key(),
        *blake3::hash(trust.manager_claims().measurement.to_string().as_bytes()).as_bytes(),
        not_before,
        not_before + CERTIFICATE_LIFETIME_S,
    );
    let lock_config = LockConfig {
        lease_ms,
        ..LockConfig::default()
    };
    let (manager, genesis) = Manager::start(
        metadata,
        &trust.data_key(&metadata.id()),
        manager_keys,
        &manager_cert,
        lock_config,
    )
    .map_err(|e| ClusterError::Setup(e.to_string()))?;
    store.append(std::slice::from_ref(&genesis), Durability::Always)?;
    Ok((manager, genesis))
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
        Self::start_linked(n_workers, lease_ms, trust, bus, open_store, &|link| link)
    }

    /// [`Self::start_with_store`], with the workers' link to the manager passed through `wrap`
    /// (tests inject lost requests and replies there).
    pub(crate) fn start_linked(
        n_workers: usize,
        lease_ms: u64,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
        open_store: &OpenStore<'_>,
        wrap: &dyn Fn(Arc<dyn link::ManagerLink>) -> Arc<dyn link::ManagerLink>,
    ) -> Result<Self, ClusterError> {
        let (trust, metadata) = ManagerTrust::prepare(trust, "psl-dev", creation_params()?)?;
        let store = open_store(&metadata)?;
        let (manager, genesis) = start_manager(&trust, &metadata, store.as_ref(), lease_ms.max(1))?;
        let board = Arc::new(GrantBoard::default());
        let host = host::ManagerHost::start(
            manager,
            Arc::clone(&store),
            Arc::clone(&bus),
            APP,
            Arc::clone(&board) as Arc<dyn host::GrantSink>,
            None,
        )?;
        host.broadcast(&genesis);
        let local = Arc::new(LocalLink {
            host,
            board,
            trust: Mutex::new(trust),
            metadata,
        });
        let inner = Inner::start(
            store,
            bus,
            APP,
            wrap(Arc::clone(&local) as Arc<dyn link::ManagerLink>),
            n_workers,
        )?;
        Ok(SclCluster { inner, local })
    }

    /// Workers in the cluster.
    pub fn n_workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// The state of worker `index` (sessions of it run on that worker's replica).
    pub fn worker(&self, index: usize) -> WorkerState {
        WorkerState {
            inner: Arc::clone(&self.inner),
            index: index % self.inner.workers.len(),
        }
    }

    /// The state digest of every worker's replica (equal digests: converged).
    pub fn digests(&self) -> Vec<[u8; 32]> {
        self.inner
            .workers
            .iter()
            .map(|w| w.slot.lock().core.replica().digest())
            .collect()
    }

    /// Worker incarnations ended so far (kills, and workers that found their own late writes
    /// refused).
    pub fn restarts(&self) -> u64 {
        self.inner.counters.restarts.load(Ordering::Relaxed)
    }

    /// Fenced records refused by each worker's replica (late writes of expired holders).
    pub fn fenced_refused(&self) -> Vec<u64> {
        self.inner
            .workers
            .iter()
            .map(|w| w.slot.lock().core.fenced_refused())
            .collect()
    }

    /// A subscription to every record multicast from now on (what an observer of the bus
    /// sees).
    pub fn tap_bus(&self) -> Result<psl_nats::Subscription, ClusterError> {
        self.inner.tap_bus()
    }

    /// Prometheus text for the cluster: records sealed, applied and refused, late writes
    /// fenced, restarts, enrolled workers, replication lag, lock acquisitions and wait time.
    pub fn render_metrics(&self) -> String {
        let mut out = self.inner.render_metrics();
        crate::metrics::metric(
            &mut out,
            "psl_workers_enrolled_total",
            "counter",
            "Worker incarnations attested and given keys.",
            self.enrolled() as f64,
        );
        out
    }

    /// The writer id of worker `index`'s current incarnation.
    pub fn writer_of(&self, index: usize) -> WriterId {
        self.inner.workers[index % self.inner.workers.len()]
            .slot
            .lock()
            .core
            .replica()
            .writer()
    }

    /// Records refused by each worker's replica (forged, tampered, revoked writers, ...).
    pub fn rejected(&self) -> Vec<u64> {
        self.inner
            .workers
            .iter()
            .map(|w| w.slot.lock().core.rejected())
            .collect()
    }

    /// Revokes a writer incarnation: the manager issues a new owner-signed revocation list and
    /// every worker (and every later incarnation) refuses that writer's records from now on.
    pub fn revoke_writer(&self, writer: WriterId) -> Result<(), ClusterError> {
        let list = self
            .local
            .trust
            .lock()
            .revoke(writer)
            .ok_or_else(|| ClusterError::Setup("revocation table full".into()))?;
        for worker in &self.inner.workers {
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
        self.local.trust.lock().manager_claims().clone()
    }

    /// Worker incarnations enrolled (attested and given keys) so far.
    pub fn enrolled(&self) -> u64 {
        self.local.trust.lock().enrolled()
    }

    /// Answers a client's prepare challenge with the manager's evidence (`psl attest`).
    pub fn attest(&self, challenge: &[u8]) -> Result<Vec<u8>, TrustError> {
        self.local.trust.lock().offer(challenge)
    }

    /// The policy's verdict on a module about to be compiled (functions by hash).
    pub fn check_function(&self, module: &[u8]) -> Result<(), TrustError> {
        self.local.trust.lock().check_function(module).map(drop)
    }

    /// Kills worker `index` and starts a new incarnation of it from the record store, as after
    /// a crash: unflushed writes of the old incarnation are lost, its sessions get
    /// `Unavailable`, the locks they held are given up (their writes after the last
    /// acknowledged flush are refused everywhere), and the new incarnation replays the store.
    pub fn restart_worker(&self, index: usize) -> Result<(), ClusterError> {
        self.inner.restart_worker(index % self.inner.workers.len())
    }

    /// Seals every worker's pending updates and waits until every replica applied every
    /// record (convergence barrier, for tests and orderly shutdown).
    pub fn settle(&self, wait: Duration) -> bool {
        self.inner.settle(wait)
    }
}

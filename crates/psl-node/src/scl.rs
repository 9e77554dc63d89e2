//! The embedded SCL cluster: N workers in one process, each with its own replica and writer
//! incarnation, sharing a crash-safe DataCapsule directory and an in-process lock service.
//!
//! This is the I/O shell around `psl-scl`'s state machines for the embedded mode. It is a first
//! version (issue 4 is in progress): records are sealed and appended durably at `flush`/`unlock`
//! and then multicast over in-process channels; gaps are repaired from the store; locks are
//! FIFO with watermarks (release consistency). Not built yet: fencing enforcement at replicas
//! (see `docs/design/scl.md`), sync reports, recovery of a restarted worker, lease renewal
//! (invocations are bounded by their deadline, well below the lease).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use psl_capsule::{
    CapsuleMetadata, CreationParams, DataKey, OwnerKey, SealedRecord, Validity, WriterKeyPair,
    issue_certificate,
};
use psl_runtime::{Entries, LockMode, Session, State, StateError};
use psl_scl::lock::{
    FencingToken, Grant, HolderId, LockConfig, LockName, LockService, Reply, Watermark,
};
use psl_scl::replica::ReplicaLimits;
use psl_scl::worker::{Received, WorkerCore};
use psl_store::{DirStore, Durability, RecordStore, StoreOptions};

/// Errors setting up the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Key generation, certificate or capsule setup failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The store could not be created.
    #[error("store: {0}")]
    Store(#[from] psl_store::StoreError),
}

struct Worker {
    core: Mutex<WorkerCore>,
    applied: Condvar,
    inbox: Mutex<mpsc::Sender<SealedRecord>>,
}

struct Inner {
    store: DirStore,
    workers: Vec<Arc<Worker>>,
    locks: Mutex<LockService>,
    granted: Mutex<HashMap<(HolderId, u64), Grant>>,
    grant_changed: Condvar,
    started: Instant,
    next_session: AtomicU64,
    next_worker: AtomicUsize,
}

/// N workers, one capsule, one lock service, in this process.
#[derive(Clone)]
pub struct SclCluster(Arc<Inner>);

fn random_seed() -> Result<[u8; 32], ClusterError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| ClusterError::Setup("no system randomness".into()))?;
    Ok(seed)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SclCluster {
    /// Creates a fresh capsule in `dir` (which must not hold one) and starts `n_workers`.
    pub fn start(dir: &Path, n_workers: usize) -> Result<Self, ClusterError> {
        let owner = OwnerKey::from_seed(&random_seed()?);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&random_seed()?[..16]);
        let params = CreationParams {
            created_s: now_s(),
            salt,
            record_bytes_max: u32::try_from(psl_capsule::limits::RECORD_BYTES_MAX)
                .unwrap_or(u32::MAX),
        };
        let metadata = CapsuleMetadata::new(owner.public_key(), "psl-dev", params)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let data_secret = random_seed()?;
        let store = DirStore::create(dir, &metadata, StoreOptions::default())?;
        let mut workers = Vec::new();
        let mut receivers = Vec::new();
        let mut genesis_records = Vec::new();
        for _ in 0..n_workers.max(1) {
            let keys = WriterKeyPair::from_seed(&random_seed()?);
            let not_before = now_s().saturating_sub(60);
            let certificate = issue_certificate(
                &owner,
                &metadata,
                keys.public_key(),
                [0; 32],
                not_before,
                not_before + 365 * 86_400,
            );
            let (core, genesis) = WorkerCore::start(
                &metadata,
                DataKey::from_bytes(data_secret),
                keys,
                &certificate,
                ReplicaLimits::default(),
            )
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
            store.append(std::slice::from_ref(&genesis), Durability::Always)?;
            genesis_records.push(genesis);
            let (tx, rx) = mpsc::channel();
            receivers.push(rx);
            workers.push(Arc::new(Worker {
                core: Mutex::new(core),
                applied: Condvar::new(),
                inbox: Mutex::new(tx),
            }));
        }
        let lock_config = LockConfig {
            lease_ms: 60_000,
            ..LockConfig::default()
        };
        let cluster = SclCluster(Arc::new(Inner {
            store,
            workers,
            locks: Mutex::new(LockService::new(lock_config)),
            granted: Mutex::new(HashMap::new()),
            grant_changed: Condvar::new(),
            started: Instant::now(),
            next_session: AtomicU64::new(1),
            next_worker: AtomicUsize::new(0),
        }));
        for (index, rx) in receivers.into_iter().enumerate() {
            let inner = Arc::clone(&cluster.0);
            std::thread::Builder::new()
                .name(format!("psl-scl-rx-{index}"))
                .spawn(move || receive_loop(&inner, index, &rx))
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        for genesis in genesis_records {
            cluster.broadcast(&genesis);
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
            .map(|w| w.core.lock().replica().digest())
            .collect()
    }

    /// Seals every worker's pending updates and waits until every replica applied every
    /// record (convergence barrier, for tests and orderly shutdown).
    pub fn settle(&self, wait: Duration) -> bool {
        for index in 0..self.0.workers.len() {
            let _ = self.flush_worker(index);
        }
        let deadline = Instant::now() + wait;
        let Ok(heads) = self.0.store.heads() else {
            return false;
        };
        for worker in &self.0.workers {
            let mut core = worker.core.lock();
            while !heads.iter().all(|h| {
                h.writer == core.replica().writer() || core.replica().applied(&h.writer) >= h.seq
            }) {
                if worker.applied.wait_until(&mut core, deadline).timed_out() {
                    return false;
                }
            }
        }
        true
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn broadcast(&self, record: &SealedRecord) {
        for worker in &self.0.workers {
            let _ = worker.inbox.lock().send(record.clone());
        }
    }

    /// Seals all of the worker's pending updates, appends the records durably (one fsync),
    /// then multicasts them. Returns the worker's sealed head seq.
    fn flush_worker(&self, index: usize) -> Result<u64, StateError> {
        let worker = &self.0.workers[index];
        let (records, head) = {
            let mut core = worker.core.lock();
            let mut records = Vec::new();
            while let Some(record) = core
                .seal(&[])
                .map_err(|e| StateError::Unavailable(e.to_string()))?
            {
                records.push(record);
            }
            let head = core.replica().applied(&core.replica().writer());
            // Append under the core lock so this worker's records reach the store in order.
            for chunk in append_chunks(&records) {
                self.0
                    .store
                    .append(chunk, Durability::Always)
                    .map_err(|e| StateError::Unavailable(format!("record store: {e}")))?;
            }
            (records, head)
        };
        for record in &records {
            self.broadcast(record);
        }
        Ok(head)
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

fn receive_loop(inner: &Arc<Inner>, index: usize, rx: &mpsc::Receiver<SealedRecord>) {
    let worker = &inner.workers[index];
    while let Ok(record) = rx.recv() {
        let mut queue = vec![record];
        let mut core = worker.core.lock();
        while let Some(record) = queue.pop() {
            match core.receive(record, Validity::At(now_s())) {
                Received::Gap {
                    writer,
                    missing,
                    buffered,
                } => {
                    // Repair from storage: every multicast record was durable first.
                    if let Ok(records) = inner.store.read_range(writer, missing) {
                        queue.extend(records.into_iter().rev());
                    }
                    let _ = buffered;
                }
                Received::Rejected(reason) => {
                    tracing::warn!(worker = index, %reason, "record refused")
                }
                _ => {}
            }
        }
        drop(core);
        worker.applied.notify_all();
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
        let writer = self.cluster.0.workers[self.index]
            .core
            .lock()
            .replica()
            .writer();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&writer.0);
        hasher.update(&number.to_le_bytes());
        let mut holder = [0u8; 16];
        holder.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Box::new(SclSession {
            cluster: self.cluster.clone(),
            index: self.index,
            holder: HolderId(holder),
            held: Vec::new(),
            next_request: 1,
        })
    }
}

struct SclSession {
    cluster: SclCluster,
    index: usize,
    holder: HolderId,
    held: Vec<(LockName, FencingToken)>,
    next_request: u64,
}

fn lock_error(name: &[u8], e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("lock {}: {e}", String::from_utf8_lossy(name)))
}

impl SclSession {
    fn worker(&self) -> &Arc<Worker> {
        &self.cluster.0.workers[self.index]
    }

    fn local_error(e: psl_scl::replica::ReplicaError) -> StateError {
        StateError::Limit(e.to_string())
    }

    fn wait_grant(
        &self,
        request_id: u64,
        name: &[u8],
        deadline: Instant,
    ) -> Result<Grant, StateError> {
        let inner = &self.cluster.0;
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
                let lock = LockName::new(name.to_vec()).map_err(|e| lock_error(name, e))?;
                let promoted = inner.locks.lock().cancel(
                    self.cluster.now_ms(),
                    self.holder,
                    &lock,
                    request_id,
                );
                self.publish_grants(promoted);
                // A grant may have raced the timeout: then release it at once.
                let raced = inner.granted.lock().remove(&(self.holder, request_id));
                if let Some(grant) = raced {
                    let grants = inner.locks.lock().release(
                        self.cluster.now_ms(),
                        self.holder,
                        &grant.name,
                        grant.token,
                        &Watermark::new(),
                    );
                    self.publish_grants(grants.unwrap_or_default());
                }
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
        }
    }

    fn publish_grants(&self, grants: Vec<Grant>) {
        if grants.is_empty() {
            return;
        }
        let inner = &self.cluster.0;
        let mut granted = inner.granted.lock();
        for grant in grants {
            granted.insert((grant.holder, grant.request_id), grant);
        }
        drop(granted);
        inner.grant_changed.notify_all();
    }

    fn release(&mut self, position: usize) -> Result<(), StateError> {
        let head = self.cluster.flush_worker(self.index)?;
        let (name, token) = self.held.swap_remove(position);
        let writer = self.worker().core.lock().replica().writer();
        let mut watermark = Watermark::new();
        watermark.observe(writer, head);
        let grants = self
            .cluster
            .0
            .locks
            .lock()
            .release(self.cluster.now_ms(), self.holder, &name, token, &watermark)
            .map_err(|e| match e {
                psl_scl::lock::LockError::Fenced { .. } => StateError::Fenced,
                other => lock_error(name.as_bytes(), other),
            })?;
        self.publish_grants(grants);
        Ok(())
    }
}

impl Session for SclSession {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .worker()
            .core
            .lock()
            .replica()
            .get(key)
            .map(<[u8]>::to_vec))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.worker()
            .core
            .lock()
            .replica_mut()
            .put(key, value)
            .map(drop)
            .map_err(Self::local_error)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StateError> {
        self.worker()
            .core
            .lock()
            .replica_mut()
            .delete(key)
            .map_err(Self::local_error)
    }

    fn scan_prefix(&mut self, prefix: &[u8], limit: usize) -> Result<Entries, StateError> {
        Ok(self
            .worker()
            .core
            .lock()
            .replica()
            .scan_prefix(prefix, limit))
    }

    fn lock(&mut self, name: &[u8], mode: LockMode, wait: Duration) -> Result<(), StateError> {
        let deadline = Instant::now() + wait;
        let lock = LockName::new(name.to_vec()).map_err(|e| lock_error(name, e))?;
        if self.held.iter().any(|(held, _)| held == &lock) {
            return Err(StateError::AlreadyHeld(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let mode = match mode {
            LockMode::Read => psl_scl::lock::LockMode::Read,
            LockMode::Write => psl_scl::lock::LockMode::Write,
        };
        let reply = self
            .cluster
            .0
            .locks
            .lock()
            .acquire(self.cluster.now_ms(), self.holder, request_id, lock, mode)
            .map_err(|e| StateError::Limit(e.to_string()))?;
        let grant = match reply {
            Reply::Granted(grant) => grant,
            Reply::Queued { .. } => self.wait_grant(request_id, name, deadline)?,
        };
        self.held.push((grant.name.clone(), grant.token));
        // Release consistency: do not return before everything released under this lock is
        // applied here.
        let worker = self.worker();
        let mut core = worker.core.lock();
        while !core.replica().caught_up(grant.watermark.iter()) {
            if worker.applied.wait_until(&mut core, deadline).timed_out() {
                drop(core);
                let position = self.held.len() - 1;
                let _ = self.release(position);
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
        }
        Ok(())
    }

    fn unlock(&mut self, name: &[u8]) -> Result<(), StateError> {
        let position = self
            .held
            .iter()
            .position(|(held, _)| held.as_bytes() == name)
            .ok_or_else(|| StateError::NotHeld(String::from_utf8_lossy(name).into_owned()))?;
        self.release(position)
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.cluster.flush_worker(self.index).map(drop)
    }

    fn finish(&mut self) -> Result<(), StateError> {
        self.flush()?;
        while !self.held.is_empty() {
            self.release(self.held.len() - 1)?;
        }
        Ok(())
    }
}

impl Drop for SclSession {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

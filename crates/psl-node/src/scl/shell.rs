//! The worker side of the SCL shell: worker incarnations (core, replica, held grants), their
//! record subscriptions, and the sessions functions run in. Shared by the embedded cluster
//! ([`super::SclCluster`]) and the cluster-mode worker node; what differs is the
//! [`ManagerLink`] (in process, or sealed requests over NATS), the record store and the bus.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use psl_capsule::{SealedRecord, Validity, WriterId};
use psl_nats::Bus;
use psl_runtime::{Entries, LockMode, Session, State, StateError};
use psl_scl::body::Fence;
use psl_scl::lock::{FencingToken, HolderId, LockName, Watermark};
use psl_scl::replica::{ColdStore, NoColdStore};
use psl_scl::worker::{Received, WorkerCore};
use psl_store::{Durability, RecordStore};

use super::host::append_chunks;
use super::link::ManagerLink;
use super::{ClusterError, lock_error};
use crate::trust::now_s;

/// Messages a worker's record subscription buffers before dropping (then repaired from store).
const SUBSCRIPTION_CAPACITY: usize = 1 << 16;

/// One worker slot: its current incarnation's core and the grants its sessions hold. Sessions
/// of an older incarnation get `Unavailable`.
pub(crate) struct Slot {
    pub(crate) core: WorkerCore,
    pub(crate) incarnation: u64,
    /// Grants held by sessions on this worker: the fences of every record it seals, and
    /// whether a record was sealed under each (then the release needs a verdict).
    held: BTreeMap<(Vec<u8>, u64), HeldGrant>,
}

struct HeldGrant {
    holder: HolderId,
    sealed_under: bool,
}

pub(crate) struct Worker {
    pub(crate) slot: Mutex<Slot>,
    pub(crate) applied: Condvar,
    /// Records sealed and on their way to the store (see [`AppendQueue`]).
    appends: Mutex<AppendQueue>,
    appends_changed: Condvar,
    /// Held while an incarnation is replaced, so two threads that find the same incarnation
    /// done (receiver, appender, a test's kill) replace it once.
    restarting: Mutex<()>,
}

/// How long a new session waits for its worker's next incarnation when the current one is
/// poisoned (being replaced) before it starts anyway and fails at its first call.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// A worker's sealed records on their way to the store, in chain order. Flushes queue their
/// records under the slot lock and wait (without it) until `durable` reaches their head; the
/// worker's appender thread appends whatever is queued in one call, then multicasts it.
struct AppendQueue {
    /// The worker incarnation these records belong to.
    incarnation: u64,
    pending: Vec<SealedRecord>,
    /// This incarnation's records up to this seq are durable (its genesis, seq 0, always is).
    durable: u64,
    /// The store refused or failed an append: this incarnation is done.
    failed: Option<String>,
}

impl AppendQueue {
    fn new(incarnation: u64) -> Self {
        AppendQueue {
            incarnation,
            pending: Vec::new(),
            durable: 0,
            failed: None,
        }
    }
}

/// How long a flush waits for the store's acknowledgement.
const APPEND_WAIT_MAX: Duration = Duration::from_secs(60);

/// Counters of the worker side.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) restarts: AtomicU64,
    pub(crate) lock_acquires: AtomicU64,
    pub(crate) lock_wait_us: AtomicU64,
}

/// The workers of this process, their store, bus and manager link.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn RecordStore>,
    pub(crate) workers: Vec<Arc<Worker>>,
    pub(crate) link: Arc<dyn ManagerLink>,
    pub(crate) counters: Counters,
    next_session: AtomicU64,
    next_worker: AtomicUsize,
    /// Where memtable misses go (CapsuleDB later; today nothing is evicted, so nothing is there).
    cold: Arc<dyn ColdStore>,
    /// The bus records are multicast on (in process by default; NATS in cluster mode).
    bus: Arc<dyn Bus>,
    app: String,
}

impl Inner {
    /// Starts workers from enrolled cores: their genesis records are appended durably and
    /// multicast, and each gets a record subscription and a receiver thread.
    pub(crate) fn start(
        store: Arc<dyn RecordStore>,
        bus: Arc<dyn Bus>,
        app: &str,
        link: Arc<dyn ManagerLink>,
        n_workers: usize,
    ) -> Result<Arc<Self>, ClusterError> {
        let cores = (0..n_workers.max(1))
            .map(|_| link.enroll())
            .collect::<Result<Vec<_>, _>>()?;
        Self::start_with(store, bus, app, link, cores)
    }

    /// [`Self::start`] with cores already enrolled.
    pub(crate) fn start_with(
        store: Arc<dyn RecordStore>,
        bus: Arc<dyn Bus>,
        app: &str,
        link: Arc<dyn ManagerLink>,
        cores: Vec<(WorkerCore, SealedRecord)>,
    ) -> Result<Arc<Self>, ClusterError> {
        let subject = psl_nats::subjects::app_records("psl", app)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let mut workers = Vec::new();
        let mut receivers = Vec::new();
        let mut genesis_records = Vec::new();
        for (core, genesis) in cores {
            store.append(std::slice::from_ref(&genesis), Durability::Always)?;
            genesis_records.push(genesis);
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
                appends: Mutex::new(AppendQueue::new(1)),
                appends_changed: Condvar::new(),
                restarting: Mutex::new(()),
            }));
        }
        let inner = Arc::new(Inner {
            store,
            workers,
            link,
            counters: Counters::default(),
            next_session: AtomicU64::new(1),
            next_worker: AtomicUsize::new(0),
            cold: Arc::new(NoColdStore),
            bus,
            app: app.to_string(),
        });
        for (index, rx) in receivers.into_iter().enumerate() {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("psl-scl-rx-{index}"))
                .spawn(move || receive_loop(&weak, index, &rx))
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("psl-scl-append-{index}"))
                .spawn(move || append_loop(&weak, index))
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        for genesis in genesis_records {
            inner.broadcast(&genesis);
        }
        Ok(inner)
    }

    pub(crate) fn tap_bus(&self) -> Result<psl_nats::Subscription, ClusterError> {
        let subject = psl_nats::subjects::app_records("psl", &self.app)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        self.bus
            .subscribe(&subject, psl_nats::bus::SUBSCRIPTION_CAPACITY_MAX)
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))
    }

    fn broadcast(&self, record: &SealedRecord) {
        // A lost multicast is repaired from the store (a gap, or the next sync report).
        if let Err(e) = self.bus.publish_record(&self.app, record) {
            tracing::warn!(%e, "multicast failed; receivers repair from the store");
        }
    }

    /// Replays every chain in the store into worker `index` (recovery, and a fresh node's
    /// start), and fetches whatever it finds missing.
    pub(crate) fn catch_up(&self, index: usize) -> Result<(), ClusterError> {
        let worker = &self.workers[index];
        let mut slot = worker.slot.lock();
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
        drop(slot);
        worker.applied.notify_all();
        Ok(())
    }

    /// Whether worker `index` applied every record up to `heads` (others' chains).
    pub(crate) fn caught_up_to(&self, index: usize, heads: &[(WriterId, u64)]) -> bool {
        let slot = self.workers[index].slot.lock();
        let replica = slot.core.replica();
        heads
            .iter()
            .all(|(writer, seq)| *writer == replica.writer() || replica.applied(writer) >= *seq)
    }

    /// Seals every worker's pending updates and waits until every replica applied every
    /// record in the store (convergence barrier, for tests and orderly shutdown).
    pub(crate) fn settle(&self, wait: Duration) -> bool {
        for index in 0..self.workers.len() {
            let _ = self.flush_worker(index, None, None);
        }
        let deadline = Instant::now() + wait;
        if !self.link.drain(wait) {
            return false;
        }
        let Ok(heads) = self.store.heads() else {
            return false;
        };
        for worker in &self.workers {
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

    /// A session on worker `index`.
    pub(crate) fn session(self: &Arc<Self>, index: usize) -> Box<dyn Session> {
        let number = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (writer, incarnation) = {
            let worker = &self.workers[index];
            let mut slot = worker.slot.lock();
            let deadline = Instant::now() + RESTART_WAIT;
            while slot.core.poisoned() {
                if worker.applied.wait_until(&mut slot, deadline).timed_out() {
                    break;
                }
            }
            (slot.core.replica().writer(), slot.incarnation)
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(&writer.0);
        hasher.update(&number.to_le_bytes());
        let mut holder = [0u8; 16];
        holder.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Box::new(SclSession {
            inner: Arc::clone(self),
            index,
            tag: number,
            incarnation,
            holder: HolderId(holder),
            held: Vec::new(),
            next_request: 1,
        })
    }

    /// Prometheus text for these workers: records sealed, applied and refused, late writes
    /// fenced, restarts, replication lag, lock acquisitions and wait time.
    pub(crate) fn render_metrics(&self) -> String {
        use crate::metrics::metric;
        let heads = self.store.heads().unwrap_or_default();
        let (mut sealed, mut applied, mut rejected, mut fenced, mut lag_max) = (0, 0, 0, 0, 0);
        for worker in &self.workers {
            let slot = worker.slot.lock();
            let replica = slot.core.replica();
            let me = replica.writer();
            sealed += replica.applied(&me);
            rejected += slot.core.rejected();
            fenced += slot.core.fenced_refused();
            // A poisoned incarnation is about to be replaced: it is not up to date.
            let mut lag = u64::from(slot.core.poisoned());
            for head in heads.iter().filter(|h| h.writer != me) {
                let done = replica.applied(&head.writer);
                applied += done;
                lag += head.seq.saturating_sub(done);
            }
            lag_max = lag_max.max(lag);
        }
        let counters = &self.counters;
        let mut out = String::new();
        let rows: [(&str, &str, &str, f64); 8] = [
            (
                "psl_records_sealed",
                "gauge",
                "Records sealed by the current worker incarnations.",
                sealed as f64,
            ),
            (
                "psl_records_applied",
                "gauge",
                "Other writers' records verified and applied, summed over workers.",
                applied as f64,
            ),
            (
                "psl_records_rejected_total",
                "counter",
                "Records refused by replicas (forged, tampered, revoked).",
                rejected as f64,
            ),
            (
                "psl_records_fenced_total",
                "counter",
                "Late writes refused by lock verdicts.",
                fenced as f64,
            ),
            (
                "psl_replication_lag_records",
                "gauge",
                "Most records any worker has yet to apply.",
                lag_max as f64,
            ),
            (
                "psl_worker_restarts_total",
                "counter",
                "Worker incarnations ended.",
                counters.restarts.load(Ordering::Relaxed) as f64,
            ),
            (
                "psl_lock_acquires_total",
                "counter",
                "Locks acquired by sessions.",
                counters.lock_acquires.load(Ordering::Relaxed) as f64,
            ),
            (
                "psl_lock_wait_seconds_total",
                "counter",
                "Time sessions spent in lock (queue and catch-up).",
                counters.lock_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
            ),
        ];
        for (name, kind, help, value) in rows {
            metric(&mut out, name, kind, help, value);
        }
        out
    }

    /// The next worker in turn.
    pub(crate) fn next_worker(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len()
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
        let (incarnation, flushed) = {
            let mut slot = worker.slot.lock();
            if session.is_some_and(|(incarnation, _, _)| incarnation != slot.incarnation)
                || slot.core.poisoned()
            {
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
            let sealed_any = !records.is_empty();
            if sealed_any {
                for held in slot.held.values_mut().filter(|held| mine(held)) {
                    held.sealed_under = true;
                }
            }
            let writer = slot.core.replica().writer();
            let head = slot.core.replica().applied(&writer);
            let incarnation = slot.incarnation;
            // Queued in chain order (under the slot lock); the worker's appender thread makes
            // them durable, then multicasts them. No lock is held during the store's I/O, and
            // concurrent flushes share one append (group commit: one fsync, or one pipelined
            // JetStream batch).
            if !records.is_empty() {
                let mut queue = worker.appends.lock();
                queue.pending.extend(records);
                drop(queue);
                worker.appends_changed.notify_all();
            }
            let mut released_fenced = false;
            if let Some((lock, token)) = release
                && let Some(held) = slot.held.remove(&(lock.to_vec(), token))
            {
                released_fenced = held.sealed_under;
                slot.core.note_release(lock, token);
            }
            let still_held = if sealed_any {
                slot.held
                    .iter()
                    .filter(|(_, held)| mine(held))
                    .map(|((lock, token), held)| (lock.clone(), *token, held.holder))
                    .collect()
            } else {
                Vec::new()
            };
            (
                incarnation,
                Flushed {
                    head,
                    writer,
                    released_fenced,
                    still_held,
                },
            )
        };
        // Ack point: everything this worker sealed up to `head` is durable (records sealed by
        // a concurrent flush included: they may hold this session's writes).
        let mut queue = worker.appends.lock();
        let deadline = Instant::now() + APPEND_WAIT_MAX;
        loop {
            if queue.incarnation != incarnation {
                return Err(restarted());
            }
            if let Some(e) = &queue.failed {
                return Err(StateError::Unavailable(format!("record store: {e}")));
            }
            if queue.durable >= flushed.head {
                return Ok(flushed);
            }
            if worker
                .appends_changed
                .wait_until(&mut queue, deadline)
                .timed_out()
            {
                return Err(StateError::Unavailable(
                    "record store: no acknowledgement in time".into(),
                ));
            }
        }
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
            self.link
                .acknowledge(*holder, &name, FencingToken(*token), &watermark)?;
        }
        Ok(())
    }

    /// Kills worker `index` and starts a new incarnation of it from the record store, as after
    /// a crash: unflushed writes of the old incarnation are lost, its sessions get
    /// `Unavailable`, the locks they held are given up (their writes after the last
    /// acknowledged flush are refused everywhere), and the new incarnation replays the store.
    pub(crate) fn restart_worker(&self, index: usize) -> Result<(), ClusterError> {
        self.restart(index, None)
    }

    /// [`Self::restart_worker`] if worker `index` still runs `incarnation` (another thread
    /// may have replaced it already).
    pub(crate) fn restart_from(&self, index: usize, incarnation: u64) -> Result<(), ClusterError> {
        self.restart(index, Some(incarnation))
    }

    fn restart(&self, index: usize, from: Option<u64>) -> Result<(), ClusterError> {
        let worker = &self.workers[index];
        let _one = worker.restarting.lock();
        // The old incarnation serves nothing from here on, and the manager forgets its
        // holders first, so other workers wait for nothing while this one re-enrolls and
        // replays: their writes after the last acknowledged flush are refused by the verdicts.
        let holders: Vec<HolderId> = {
            let mut slot = worker.slot.lock();
            if from.is_some_and(|incarnation| slot.incarnation != incarnation) {
                return Ok(());
            }
            slot.core.poison();
            slot.held.values().map(|h| h.holder).collect()
        };
        worker.applied.notify_all();
        for holder in holders {
            if let Err(e) = self.link.forget(holder) {
                tracing::warn!(%e, "manager could not forget a dead holder");
            }
        }
        let (core, genesis) = self.link.enroll()?;
        self.store
            .append(std::slice::from_ref(&genesis), Durability::Always)?;
        {
            let mut slot = worker.slot.lock();
            slot.core = core;
            slot.incarnation += 1;
            slot.held.clear();
            *worker.appends.lock() = AppendQueue::new(slot.incarnation);
            worker.appends_changed.notify_all();
        }
        // Recovery: the new incarnation replays every chain in the store.
        self.catch_up(index)?;
        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        self.broadcast(&genesis);
        tracing::info!(worker = index, "worker restarted from the record store");
        Ok(())
    }
}

impl Inner {
    /// Poisons worker `index`'s `incarnation` because the outcome of records sealed there is
    /// unknown (a lost release or acknowledgement, a flush that failed or timed out): those
    /// records may yet be refused, and its replica already shows their writes. From now on no
    /// session reads them (a session on another lock those records were sealed under could
    /// otherwise build on writes that are later refused). The worker's receiver replaces the
    /// incarnation. Whether this call poisoned it (false if it was poisoned or replaced
    /// already).
    fn poison(&self, index: usize, incarnation: u64) -> bool {
        let worker = &self.workers[index];
        let mut slot = worker.slot.lock();
        if slot.incarnation != incarnation || slot.core.poisoned() {
            return false;
        }
        slot.core.poison();
        drop(slot);
        worker.applied.notify_all();
        true
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

/// Appends worker `index`'s queued records: everything queued so far in one call (group
/// commit), then multicasts them and wakes the flushes waiting for them. A failed append ends
/// the incarnation: its chain has a gap the store will never fill, so the worker restarts.
fn append_loop(inner: &std::sync::Weak<Inner>, index: usize) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let worker = Arc::clone(&strong.workers[index]);
        drop(strong);
        let (incarnation, records) = {
            let mut queue = worker.appends.lock();
            if queue.pending.is_empty() || queue.failed.is_some() {
                worker
                    .appends_changed
                    .wait_for(&mut queue, Duration::from_millis(200));
                continue;
            }
            (queue.incarnation, std::mem::take(&mut queue.pending))
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let chunks = append_chunks(&records);
        let last = chunks.len().saturating_sub(1);
        let mut result = Ok(());
        for (i, chunk) in chunks.into_iter().enumerate() {
            // One fsync per batch: earlier chunks are written without one (the store syncs a
            // segment when it rotates to the next), the last one makes all durable.
            let durability = if i == last {
                Durability::Batch
            } else {
                Durability::Never
            };
            if let Err(e) = inner.store.append(chunk, durability) {
                result = Err(e.to_string());
                break;
            }
        }
        if result.is_ok() {
            for record in &records {
                inner.broadcast(record);
            }
        }
        let failed = {
            let mut queue = worker.appends.lock();
            let current = queue.incarnation == incarnation;
            match &result {
                Ok(()) if current => {
                    if let Some(last) = records.last() {
                        queue.durable = queue.durable.max(last.seq());
                    }
                }
                Err(e) if current => queue.failed = Some(e.clone()),
                _ => {}
            }
            current && result.is_err()
        };
        worker.appends_changed.notify_all();
        if failed {
            tracing::error!(
                worker = index,
                ?result,
                "append failed; restarting the worker"
            );
            if let Err(e) = inner.restart_from(index, incarnation) {
                tracing::error!(worker = index, %e, "worker restart failed");
            }
        }
    }
}

fn receive_loop(
    inner: &std::sync::Weak<Inner>,
    index: usize,
    subscription: &psl_nats::Subscription,
) {
    loop {
        let message = match subscription.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(message)) => message,
            Ok(None) => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                // A session poisoned the incarnation (records in doubt), or a restart failed
                // (enrollment needs the manager): replace it now.
                restart_if_poisoned(&inner, index);
                continue;
            }
            Err(_) => return,
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
        let poisoned = slot.core.poisoned().then_some(slot.incarnation);
        drop(slot);
        worker.applied.notify_all();
        if let Some(incarnation) = poisoned {
            restart_poisoned(&inner, index, incarnation);
        }
    }
}

/// Replaces worker `index`'s incarnation if it is poisoned: a verdict refused its own writes
/// (it wrote under a lease that had ended), or a session lost track of a verdict on its
/// records. Its replica shows writes nobody else may apply, so it starts over.
fn restart_if_poisoned(inner: &Inner, index: usize) {
    let poisoned = {
        let slot = inner.workers[index].slot.lock();
        slot.core.poisoned().then_some(slot.incarnation)
    };
    if let Some(incarnation) = poisoned {
        restart_poisoned(inner, index, incarnation);
    }
}

fn restart_poisoned(inner: &Inner, index: usize, incarnation: u64) {
    tracing::warn!(
        worker = index,
        "own writes fenced or in doubt; restarting the worker"
    );
    if let Err(e) = inner.restart_from(index, incarnation) {
        // Tried again on the receiver's next turn.
        tracing::error!(worker = index, %e, "worker restart failed");
    }
}

/// The `State` of one worker of a [`super::SclCluster`] or a worker node; or, from
/// [`RoundRobin`], of whichever worker is next.
#[derive(Clone)]
pub struct WorkerState {
    pub(crate) inner: Arc<Inner>,
    pub(crate) index: usize,
}

/// Spreads sessions over all workers in turn (the embedded "load balancer").
#[derive(Clone)]
pub struct RoundRobin(pub super::SclCluster);

impl State for RoundRobin {
    fn session(&self) -> Box<dyn Session> {
        let inner = &self.0.inner;
        inner.session(inner.next_worker())
    }
}

impl State for WorkerState {
    fn session(&self) -> Box<dyn Session> {
        self.inner.session(self.index)
    }
}

struct HeldLock {
    name: LockName,
    token: FencingToken,
    /// Renew once this passes (half the lease).
    renew_at: Instant,
}

struct SclSession {
    inner: Arc<Inner>,
    index: usize,
    /// Tags this session's pending updates: they are sealed only under its own grants.
    tag: u64,
    incarnation: u64,
    holder: HolderId,
    held: Vec<HeldLock>,
    next_request: u64,
}

impl SclSession {
    fn worker(&self) -> &Arc<Worker> {
        &self.inner.workers[self.index]
    }

    fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The worker's slot, if it is still the incarnation this session started on.
    /// A poisoned incarnation (a verdict refused writes its replica holds) is treated as
    /// restarted at once: no session may read those writes or build on them, even in the
    /// moment before the receiver replaces it.
    fn slot(&self) -> Result<parking_lot::MutexGuard<'_, Slot>, StateError> {
        let slot = self.worker().slot.lock();
        if slot.incarnation == self.incarnation && !slot.core.poisoned() {
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
        let now = Instant::now();
        for held in &mut self.held {
            if now >= held.renew_at {
                let left = self.inner.link.renew(self.holder, &held.name, held.token)?;
                held.renew_at = Instant::now() + left / 2;
            }
        }
        Ok(())
    }

    /// The outcome of records this session sealed is unknown: a flush that did not become
    /// durable in time, or a lost (or refused) acknowledgement or release of a grant they
    /// were sealed under. Whether they commit now depends on verdicts this worker cannot
    /// predict, and its replica already shows them, so its incarnation ends (see
    /// [`Inner::poison`]); this holder is forgotten, which is the crash verdict: only what it
    /// acknowledged commits.
    fn give_up(&self, why: StateError) -> StateError {
        if self.inner.poison(self.index, self.incarnation) {
            tracing::warn!(worker = self.index, %why, "records in doubt; the worker restarts");
        }
        // After the poisoning: nothing on this worker reads the records any more when the
        // manager frees their locks. (The restart forgets the holders of grants still in the
        // fence set; a released one has left it.)
        if let Err(forgot) = self.inner.link.forget(self.holder) {
            tracing::warn!(%forgot, "could not give up the grants of a session in doubt");
        }
        why
    }

    fn release(&mut self, position: usize) -> Result<(), StateError> {
        let held = self.held.swap_remove(position);
        // The grant leaves the worker's fence set in the flush: if anything below fails,
        // nobody else will release it.
        let flushed = self
            .inner()
            .flush_worker(
                self.index,
                Some((self.incarnation, self.holder, self.tag)),
                Some((held.name.as_bytes(), held.token.0)),
            )
            .map_err(|e| self.give_up(e))?;
        // The records carry the session's other grants too: acknowledge them under those, or
        // an expiry of one of them later would refuse what this release made visible.
        self.inner()
            .acknowledge(&flushed)
            .map_err(|e| self.give_up(e))?;
        let mut watermark = Watermark::new();
        watermark.observe(flushed.writer, flushed.head);
        let released = self.inner.link.release(
            self.holder,
            &held.name,
            held.token,
            &watermark,
            flushed.released_fenced,
        );
        match released {
            // Nothing was ever sealed under it: its verdict decides no record, and the lease
            // ends it.
            Err(e) if flushed.released_fenced => Err(self.give_up(e)),
            other => other,
        }
    }
}

impl Session for SclSession {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.renew()?;
        let cold = &*self.inner.cold;
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
        let counters = &self.inner.counters;
        if result.is_ok() {
            counters.lock_acquires.fetch_add(1, Ordering::Relaxed);
        }
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.lock_wait_us.fetch_add(waited, Ordering::Relaxed);
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
        let granted = self
            .inner
            .link
            .acquire(holder, request_id, &lock, mode, deadline)?;
        let grant = granted.grant;
        // From here on, this worker seals its records under the grant's fence.
        {
            let mut slot = match self.slot() {
                Ok(slot) => slot,
                Err(e) => {
                    // Nothing was written under it: give it back.
                    let _ = self.inner.link.release(
                        holder,
                        &grant.name,
                        grant.token,
                        &Watermark::new(),
                        false,
                    );
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
            renew_at: Instant::now() + granted.lease / 2,
        });
        // Release consistency: do not return before everything released under this lock
        // (and every verdict issued so far) is applied here.
        let worker = Arc::clone(self.worker());
        let mut slot = worker.slot.lock();
        loop {
            if slot.incarnation != self.incarnation || slot.core.poisoned() {
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
        let flushed = self
            .inner()
            .flush_worker(
                self.index,
                Some((self.incarnation, self.holder, self.tag)),
                None,
            )
            .map_err(|e| self.give_up(e))?;
        self.inner()
            .acknowledge(&flushed)
            .map_err(|e| self.give_up(e))
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

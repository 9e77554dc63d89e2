//! The manager's side of the SCL shell: the [`Manager`] state machine behind a mutex, an
//! appender thread that makes its records durable (in chain order) and then multicasts them,
//! and a ticker that expires leases and publishes sync reports. Grants go to a [`GrantSink`]:
//! waiting sessions in this process (embedded mode), or NATS replies (the manager node).

use std::sync::{Arc, Weak, mpsc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use psl_capsule::{Head, SealedRecord, WriterId};
use psl_nats::Bus;
use psl_runtime::StateError;
use psl_scl::lock::Grant;
use psl_scl::manager::{Effects, Manager};
use psl_store::{Durability, RecordStore};

use super::ClusterError;

/// How often the manager expires leases.
const TICK: Duration = Duration::from_millis(20);
/// How often the manager publishes a sync report of every writer's head.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Bytes appended to the store in one call at most (the store refuses more than 16 MiB).
const APPEND_BYTES_MAX: usize = 8 << 20;

/// Where the manager's sync reports get the heads of every writer from (default: the record
/// store's `heads`).
pub(crate) type HeadSource = Arc<dyn Fn() -> Option<Vec<Head>> + Send + Sync>;

/// Where the manager's grants go once its records they depend on are on their way.
pub(crate) trait GrantSink: Send + Sync {
    /// Delivers grants to their holders (`now_ms`: the lock service's clock).
    fn deliver(&self, grants: Vec<Grant>, now_ms: u64);
    /// Called on every tick (drop what waited too long).
    fn tick(&self, _now_ms: u64) {}
}

enum AppendJob {
    Records(Vec<SealedRecord>),
    Barrier(mpsc::Sender<()>),
}

/// The manager state machine and its I/O.
pub(crate) struct ManagerHost {
    manager: Mutex<Manager>,
    writer: WriterId,
    /// The manager's records on their way to the store and the bus, in chain order.
    appender: Mutex<mpsc::Sender<AppendJob>>,
    store: Arc<dyn RecordStore>,
    bus: Arc<dyn Bus>,
    app: String,
    started: Instant,
    sink: Arc<dyn GrantSink>,
    heads: Option<HeadSource>,
}

impl ManagerHost {
    /// Starts the host's appender and ticker threads (they stop when the host is dropped). The
    /// manager's genesis record must already be in the store.
    pub(crate) fn start(
        manager: Manager,
        store: Arc<dyn RecordStore>,
        bus: Arc<dyn Bus>,
        app: &str,
        sink: Arc<dyn GrantSink>,
        heads: Option<HeadSource>,
    ) -> Result<Arc<Self>, ClusterError> {
        let (append_tx, append_rx) = mpsc::channel();
        let host = Arc::new(ManagerHost {
            writer: manager.writer_id(),
            manager: Mutex::new(manager),
            appender: Mutex::new(append_tx),
            store,
            bus,
            app: app.to_string(),
            started: Instant::now(),
            sink,
            heads,
        });
        let weak = Arc::downgrade(&host);
        std::thread::Builder::new()
            .name("psl-mgr-appender".into())
            .spawn(move || append_loop(&weak, &append_rx))
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let weak = Arc::downgrade(&host);
        std::thread::Builder::new()
            .name("psl-mgr-ticker".into())
            .spawn(move || tick_loop(&weak))
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(host)
    }

    /// The manager's writer id.
    pub(crate) fn writer_id(&self) -> WriterId {
        self.writer
    }

    /// Milliseconds since the host started (the lock service's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The lease left of a grant ending at `lease_until_ms`.
    pub(crate) fn lease_left(&self, lease_until_ms: u64) -> Duration {
        Duration::from_millis(lease_until_ms.saturating_sub(self.now_ms()))
    }

    /// Runs `call` on the manager and carries out the shell's half of the manager contract:
    /// its records go, in chain order (queued under the manager lock), to the appender thread,
    /// which appends each durably and then multicasts it; grants are delivered at once. That
    /// keeps the contract: a holder does not proceed before it applied the verdicts its grant
    /// depends on, which it only receives once they are durable. The caller does not wait for
    /// the fsync of a verdict nobody waits for.
    pub(crate) fn with_manager<T>(
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
        if !grants.is_empty() {
            self.sink.deliver(grants, self.now_ms());
        }
        Ok(value)
    }

    /// Runs `call` on the manager when it has no effects (acquire, renew).
    pub(crate) fn call<T>(&self, call: impl FnOnce(&mut Manager, u64) -> T) -> T {
        let mut manager = self.manager.lock();
        let now = self.now_ms();
        call(&mut manager, now)
    }

    /// Waits until every manager record queued so far is durable and multicast.
    pub(crate) fn drain(&self, wait: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.appender.lock().send(AppendJob::Barrier(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(wait).is_ok()
    }

    /// The record store the manager appends to.
    pub(crate) fn store(&self) -> &Arc<dyn RecordStore> {
        &self.store
    }

    /// Multicasts one of the manager's records (already durable).
    pub(crate) fn broadcast(&self, record: &SealedRecord) {
        // A lost multicast is repaired from the store (a gap, or the next sync report).
        if let Err(e) = self.bus.publish_record(&self.app, record) {
            tracing::warn!(%e, "multicast failed; receivers repair from the store");
        }
    }
}

/// Longest pause between two tries of a manager append the store failed.
const APPEND_RETRY_MAX: Duration = Duration::from_secs(2);

fn append_loop(host: &Weak<ManagerHost>, jobs: &mpsc::Receiver<AppendJob>) {
    while let Ok(job) = jobs.recv() {
        match job {
            AppendJob::Barrier(done) => {
                let _ = done.send(());
            }
            AppendJob::Records(records) => {
                for chunk in append_chunks(&records) {
                    if !append_until_durable(host, chunk) {
                        return;
                    }
                }
                let Some(host) = host.upgrade() else {
                    return;
                };
                for record in &records {
                    host.broadcast(record);
                }
            }
        }
    }
}

/// Appends one chunk of the manager's records, trying again until the store takes it: they
/// are sealed into the manager's chain already, so skipping them would leave a gap no later
/// record could be appended after (every verdict after it would be lost). A retry is
/// idempotent (records already stored count as duplicates). Holders waiting for these records
/// time out meanwhile. False when the host is gone.
fn append_until_durable(host: &Weak<ManagerHost>, chunk: &[SealedRecord]) -> bool {
    let mut pause = Duration::from_millis(50);
    for attempt in 0u64.. {
        let Some(strong) = host.upgrade() else {
            return false;
        };
        match strong.store.append(chunk, Durability::Batch) {
            Ok(_) => {
                if attempt > 0 {
                    tracing::info!(attempt, "the manager's records are durable again");
                }
                return true;
            }
            Err(e) => {
                if attempt.is_power_of_two() || attempt == 0 {
                    tracing::error!(%e, attempt, "appending the manager's records failed; retrying");
                }
            }
        }
        drop(strong);
        std::thread::sleep(pause);
        pause = pause.saturating_mul(2).min(APPEND_RETRY_MAX);
    }
    false
}

fn tick_loop(host: &Weak<ManagerHost>) {
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(TICK);
        let Some(host) = host.upgrade() else {
            return;
        };
        let ticked = host.with_manager(|manager, now| {
            let effects = manager
                .tick(now)
                .map_err(|e| StateError::Unavailable(e.to_string()))?;
            Ok(((), effects))
        });
        if let Err(e) = ticked {
            tracing::warn!(%e, "expiring leases failed");
        }
        host.sink.tick(host.now_ms());
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            let heads = match &host.heads {
                Some(source) => source(),
                None => host.store.heads().ok(),
            };
            if let Some(heads) = heads {
                let reported = host.with_manager(|manager, _| {
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

/// Splits records into runs of at most [`APPEND_BYTES_MAX`] bytes (a single larger record
/// goes alone).
pub(crate) fn append_chunks(records: &[SealedRecord]) -> Vec<&[SealedRecord]> {
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

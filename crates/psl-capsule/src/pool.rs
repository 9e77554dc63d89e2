//! The crypto worker pool: std threads behind a bounded job queue that sign (and encode) records
//! in parallel while each writer's records keep their chain order.
//!
//! Why this split: a record's header carries the previous record's hash, and the header is the
//! AEAD associated data, so encrypting and hashing one writer's records is inherently serial.
//! Signing depends only on the record's own hash, so it is what runs in parallel. A call to
//! [`CryptoPool::seal_batch`] prepares the batch on the calling thread, then splits the
//! signatures into one chunk per pool thread plus one the caller signs itself, and returns the
//! sealed records in order. Several writers may share one pool from several threads; their
//! chunks interleave on the pool.
//!
//! The queue is bounded ([`CryptoPool::new`]'s `queue_depth`), so a fast producer blocks instead
//! of growing memory. The pool never touches the data key; jobs hold only the writer key pair.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::body::Update;
use crate::error::SealError;
use crate::keys::WriterKeyPair;
use crate::limits::{POOL_BATCH_RECORDS_MAX, POOL_THREADS_MAX};
use crate::record::{Link, RecordKind, SealedRecord};
use crate::writer::{CapsuleWriter, PreparedRecord};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// What to seal: a batch of updates or an opaque body of another kind.
#[derive(Clone, Debug)]
pub struct SealRequest {
    /// The record kind (not `Genesis`).
    pub kind: RecordKind,
    /// Lamport time (must increase along the batch).
    pub lamport: u64,
    /// Links to other writers' heads.
    pub links: Vec<Link>,
    /// The body.
    pub body: SealBody,
}

/// The plaintext of a [`SealRequest`].
#[derive(Clone, Debug)]
pub enum SealBody {
    /// Key-value updates, encoded with [`crate::body`].
    Updates(Vec<Update>),
    /// Opaque plaintext bytes.
    Opaque(Vec<u8>),
}

impl SealRequest {
    /// An `Updates` record.
    pub fn updates(lamport: u64, updates: Vec<Update>) -> Self {
        SealRequest {
            kind: RecordKind::Updates,
            lamport,
            links: Vec::new(),
            body: SealBody::Updates(updates),
        }
    }

    /// A record of another kind with an opaque body.
    pub fn opaque(kind: RecordKind, lamport: u64, body: Vec<u8>) -> Self {
        SealRequest {
            kind,
            lamport,
            links: Vec::new(),
            body: SealBody::Opaque(body),
        }
    }
}

/// A pool of crypto worker threads.
pub struct CryptoPool {
    sender: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CryptoPool({} threads)", self.threads.len())
    }
}

impl CryptoPool {
    /// Starts `threads` workers (0 = sign on the calling thread; capped at
    /// [`POOL_THREADS_MAX`]) sharing a queue of at most `queue_depth` jobs.
    pub fn new(threads: usize, queue_depth: usize) -> std::io::Result<Self> {
        let threads = threads.min(POOL_THREADS_MAX);
        if threads == 0 {
            return Ok(CryptoPool {
                sender: None,
                threads: Vec::new(),
            });
        }
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue_depth.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let handle = std::thread::Builder::new()
                .name(format!("psl-crypto-{index}"))
                .spawn(move || worker_loop(&receiver))?;
            handles.push(handle);
        }
        Ok(CryptoPool {
            sender: Some(sender),
            threads: handles,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Seals `requests` as consecutive records of `writer`, in order. Encryption and hashing run
    /// on the calling thread (they are chained); then the signatures are split into one chunk
    /// per pool thread plus one that the calling thread signs itself. On error, records already
    /// prepared have advanced the writer; nothing is returned and the error names the failure.
    pub fn seal_batch(
        &self,
        writer: &mut CapsuleWriter,
        requests: &[SealRequest],
    ) -> Result<Vec<SealedRecord>, SealError> {
        if requests.len() > POOL_BATCH_RECORDS_MAX {
            return Err(SealError::BodyTooLarge {
                len: requests.len(),
                max: POOL_BATCH_RECORDS_MAX,
            });
        }
        let keys = writer.signer();
        let mut prepared = requests
            .iter()
            .map(|request| prepare(writer, request))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(sender) = &self.sender else {
            return Ok(prepared
                .into_iter()
                .map(|record| record.sign(&keys))
                .collect());
        };
        // One chunk per pool thread and one for the caller; tiny batches are signed inline.
        let parts = self.threads.len().saturating_add(1);
        let chunk_len = prepared.len().div_ceil(parts).max(SIGN_CHUNK_RECORDS_MIN);
        let (reply_tx, reply_rx) = mpsc::channel::<(usize, Vec<SealedRecord>)>();
        let mut chunks: Vec<Vec<PreparedRecord>> = Vec::new();
        while prepared.len() > chunk_len {
            let tail = prepared.split_off(chunk_len);
            chunks.push(std::mem::replace(&mut prepared, tail));
        }
        let own = prepared;
        let submitted = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let job = sign_job(index, chunk, Arc::clone(&keys), reply_tx.clone());
            if sender.send(job).is_err() {
                return Err(SealError::PoolUnavailable);
            }
        }
        drop(reply_tx);
        let own: Vec<SealedRecord> = own.into_iter().map(|record| record.sign(&keys)).collect();
        let mut slots: Vec<Vec<SealedRecord>> = vec![Vec::new(); submitted];
        for _ in 0..submitted {
            let (index, records) = reply_rx.recv().map_err(|_| SealError::PoolUnavailable)?;
            if let Some(slot) = slots.get_mut(index) {
                *slot = records;
            }
        }
        let mut out: Vec<SealedRecord> = slots.into_iter().flatten().collect();
        out.extend(own);
        if out.len() != requests.len() {
            return Err(SealError::PoolUnavailable);
        }
        Ok(out)
    }
}

/// Below this many records per chunk, handing work to another thread costs more than it saves.
const SIGN_CHUNK_RECORDS_MIN: usize = 4;

fn prepare(writer: &mut CapsuleWriter, request: &SealRequest) -> Result<PreparedRecord, SealError> {
    match &request.body {
        SealBody::Updates(updates) if request.kind == RecordKind::Updates => {
            writer.prepare_updates(request.lamport, &request.links, updates)
        }
        SealBody::Updates(updates) => {
            let body = crate::body::encode_updates(updates)?;
            writer.prepare(request.kind, request.lamport, &request.links, &body)
        }
        SealBody::Opaque(body) => {
            writer.prepare(request.kind, request.lamport, &request.links, body)
        }
    }
}

fn sign_job(
    index: usize,
    prepared: Vec<PreparedRecord>,
    keys: Arc<WriterKeyPair>,
    reply: mpsc::Sender<(usize, Vec<SealedRecord>)>,
) -> Job {
    Box::new(move || {
        let record: Vec<SealedRecord> = prepared.into_iter().map(|p| p.sign(&keys)).collect();
        // The caller may have gone away after an error; dropping the result is then correct.
        let _ = reply.send((index, record));
    })
}

fn worker_loop(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = match receiver.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

impl Drop for CryptoPool {
    fn drop(&mut self) {
        self.sender = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

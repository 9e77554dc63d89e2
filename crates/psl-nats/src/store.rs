//! [`JetStreamStore`]: a [`RecordStore`] over a NATS JetStream stream, for cluster mode.
//!
//! # Layout
//!
//! One stream per capsule, `PSL_<capsule-hex>`, file storage, `replicas` copies (3 on a
//! three-server cluster: an acknowledged message is on a quorum), with `deny_delete` and
//! `deny_purge` set, no limits (nothing ages out), `allow_direct` (reads served by any replica).
//! Its subjects are `psl.<capsule-hex>.meta`, holding the encoded capsule metadata (the first
//! message; its BLAKE3 hash *is* the capsule id, so a server cannot substitute another), and
//! `psl.<capsule-hex>.rec.<writer-hex>`, one subject per writer incarnation, each message one
//! sealed record.
//!
//! # Appends
//!
//! An append is durable when JetStream acknowledges the publish (stored on a quorum of the
//! stream's replicas; per-message fsync is the server's `sync_interval` setting, see
//! `docs/deploy.md`). The [`Durability`] argument therefore does not change anything here.
//!
//! Every publish carries two headers:
//!
//! * `Nats-Msg-Id: <capsule>/<writer>/<seq>/<hash>`: JetStream drops a second message with the
//!   same id inside the stream's duplicate window and acknowledges it with the first one's
//!   stream sequence, so a retry after a lost acknowledgement never stores a record twice.
//! * `Nats-Expected-Last-Subject-Sequence: <n>`: the server stores the message only if the last
//!   message on the writer's subject is stream sequence `n` (0: none). This is what keeps each
//!   writer's records in chain order on the stream even with several appenders (nodes relaying
//!   records, retries after a failover): a record can only land right after the message this
//!   store believes is the writer's last. Because the sequence of record `n` is known only once
//!   it is acknowledged, records of one writer are published one at a time; records of
//!   different writers in one append call are published concurrently ("rounds").
//!
//! When the server answers "wrong last sequence", something else landed on the subject: the
//! store catches up (below), looks again (the record may now be present: a duplicate, or a
//! different record with the same seq: a fork), and otherwise retries with the subject's real
//! last sequence. Transient failures (timeouts, no stream leader during an election, a broken
//! connection) are retried with backoff until `append_timeout`; both headers make that safe.
//!
//! # Verification and the index
//!
//! The store verifies like [`psl_store::DirStore`]: records are checked with public keys only
//! (capsule id, hash, writer certificate, signature, chain linkage, Lamport order) by a
//! [`CapsuleVerifier`] before they are published, and every message read from the server is
//! treated as untrusted: it is decoded under the size limit and verified before it is indexed.
//! The store keeps an in-memory index `writer -> [(stream sequence, length, hash)]` (about 48
//! bytes per record) of the messages that verified, in chain order. Messages that do not verify
//! (garbage, forgeries, records on another writer's subject, out-of-order copies) are skipped and
//! counted ([`JetStreamStore::skipped_messages`]); they can't block a genuine record, because the
//! next append of that writer simply retries after the junk's stream sequence. Anyone who may
//! publish on the subjects can slow appends down this way (each junk message costs one retry):
//! restrict publishing with NATS accounts (`docs/deploy.md`).
//!
//! The index is brought up to date ("catch-up") by reading every stream sequence after the last
//! one seen, in parallel direct gets (any replica; a replica that lacks a message is asked again
//! through the leader), verifying in batches. Catch-up runs on open (a full replay, like
//! `DirStore::open`), before `heads` and `writers`, before a `read_range` that reaches past the
//! indexed head of its writer, and in `append` when a record is not the next of its writer.
//! Reads fetch the indexed stream sequences and check that each message is still the record that
//! was verified (subject, decoding, stored and recomputed hash), else
//! [`StoreError::Corruption`] (path `nats:<stream>`, offset = stream sequence).
//!
//! # Errors
//!
//! [`StoreError`] has no NATS variant: a failure of the server or the connection is
//! [`StoreError::Io`] with path `nats:<stream>` and an `io::Error` of kind `TimedOut`
//! (timeouts) or `Other`; a message that changed since it was verified is
//! [`StoreError::Corruption`]; a record larger than the server accepts is
//! [`StoreError::BatchTooLarge`]. Refusals are [`StoreError::Rejected`] and [`StoreError::Fork`],
//! exactly as in `DirStore`.
//!
//! # Threading
//!
//! [`RecordStore`] is synchronous. Every network operation runs on the runtime of the store's
//! [`NatsConnection`] and the calling thread waits for it (see [`crate::conn`]). One mutex guards
//! the verifier and the index of a store handle; it is held while records are classified and
//! verified, during catch-up and while acknowledgements are indexed, but not while publishes are
//! in flight, so concurrent append calls for different writers overlap their round trips. A
//! writer with a publish in flight is marked busy and a concurrent call's next record of that
//! writer waits for it (one record in flight per writer, as above). Reads copy index locations
//! under the mutex and fetch without it. Several handles (processes) may append to the same
//! stream concurrently: the server's expected-sequence check orders them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::{Condvar, Mutex, MutexGuard};
use psl_capsule::limits::RECORD_BYTES_MAX;
use psl_capsule::{
    CapsuleId, CapsuleMetadata, CapsuleVerifier, ForkEvidence, Head, RecordHash, SealedRecord,
    Validity, Verdict, VerifierLimits, VerifyError, WriterId,
};
use psl_store::{
    APPEND_BYTES_MAX, AppendReport, Durability, READ_BYTES_MAX, READ_RECORDS_MAX, RecordStore,
    STORE_WRITERS_MAX, StoreError,
};

use crate::conn::NatsConnection;
use crate::error::NatsError;
use crate::subjects::StoreSubjects;

/// Bytes reserved for the headers of a record publish (message id, expected sequence).
pub const PUBLISH_HEADER_BYTES: usize = 512;
/// Stream sequences fetched and verified per catch-up step.
const CATCH_UP_CHUNK: u64 = 256;
/// "Wrong last sequence" answers tolerated for one record of one append call.
const CONFLICTS_MAX: u32 = 16;
/// How long a new stream may take to accept its first message (leader election on a cluster).
const STREAM_READY_WAIT: Duration = Duration::from_secs(20);
/// Most bytes of capsule metadata read from a stream.
const METADATA_BYTES_MAX: usize = 64 * 1024;

/// Options of a [`JetStreamStore`].
#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    /// First token of every subject (and, upper-cased, of the stream name).
    pub subject_prefix: String,
    /// Copies of the stream: 3 on a three-server cluster, 1 on a single server. Used when the
    /// stream is created; an existing stream keeps its own.
    pub replicas: usize,
    /// JetStream's deduplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// How long one append call keeps retrying transient failures (no leader, timeouts).
    pub append_timeout: Duration,
    /// Message fetches in flight during reads and catch-up.
    pub read_concurrency: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            subject_prefix: "psl".to_string(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            append_timeout: Duration::from_secs(15),
            read_concurrency: 64,
        }
    }
}

/// What opening a store found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records indexed (verified).
    pub records: u64,
    /// Messages skipped because they did not verify.
    pub skipped: u64,
    /// The stream's last sequence at open.
    pub last_sequence: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    stream_seq: u64,
    len: u32,
    hash: RecordHash,
}

#[derive(Default)]
struct WriterIndex {
    /// Entry `i` is the writer's record with seq `i`.
    entries: Vec<Entry>,
    /// Highest stream sequence seen on the writer's subject (junk included): the expected last
    /// subject sequence of the next publish.
    last_subject_seq: u64,
}

struct Inner {
    verifier: CapsuleVerifier,
    writers: HashMap<WriterId, WriterIndex>,
    /// Every stream sequence up to here was read (or is one of our acknowledged publishes).
    cursor: u64,
    /// Our acknowledged publishes above `cursor` (not fetched again by catch-up).
    acked_ahead: BTreeSet<u64>,
    skipped: u64,
    /// Publishes retried after a transient failure.
    retries: u64,
    /// "Wrong last sequence" answers.
    conflicts: u64,
    /// Writers with a publish in flight (their next record waits: one at a time per writer).
    in_flight: HashSet<WriterId>,
}

/// Everything the async side needs, cheap to clone into a task.
#[derive(Clone)]
struct Remote {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    names: std::sync::Arc<StoreSubjects>,
}

/// A record store over one JetStream stream. See the module docs.
pub struct JetStreamStore {
    conn: NatsConnection,
    remote: Remote,
    metadata: CapsuleMetadata,
    options: JetStreamOptions,
    /// Largest record this store stores (capsule limit, server payload limit).
    record_bytes_max: usize,
    inner: Mutex<Inner>,
    /// Signalled when a writer leaves `in_flight`.
    released: Condvar,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("stream", &self.remote.names.stream)
            .finish_non_exhaustive()
    }
}

fn io_error(stream: &str, op: &'static str, kind: ErrorKind, detail: String) -> StoreError {
    StoreError::Io {
        op,
        path: PathBuf::from(format!("nats:{stream}")),
        source: std::io::Error::new(kind, detail),
    }
}

fn corruption(stream: &str, stream_seq: u64, detail: String) -> StoreError {
    StoreError::Corruption {
        path: PathBuf::from(format!("nats:{stream}")),
        offset: stream_seq,
        detail,
    }
}

fn runtime_gone(stream: &str) -> impl FnOnce(NatsError) -> StoreError + '_ {
    move |error| io_error(stream, "run", ErrorKind::Other, error.to_string())
}

/// The outcome of one publish.
enum Published {
    Acked {
        stream_seq: u64,
        duplicate: bool,
    },
    /// The last message on the subject is not the one expected.
    Conflict,
    TooLarge(String),
    Transient(String),
}

impl Remote {
    fn stream_name(&self) -> &str {
        &self.names.stream
    }

    async fn last_sequence(&self) -> Result<u64, StoreError> {
        let info = self.stream.get_info().await.map_err(|error| {
            io_error(
                self.stream_name(),
                "stream info",
                ErrorKind::Other,
                error.to_string(),
            )
        })?;
        Ok(info.state.last_sequence)
    }

    /// The message at `stream_seq`, `None` if the stream has none there.
    async fn get(
        &self,
        stream_seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        use jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
        match self.stream.direct_get(stream_seq).await {
            Ok(message) => return Ok(Some(message)),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => {}
            Err(error) => {
                tracing::debug!(%error, stream_seq, "direct get failed; asking the leader");
            }
        }
        // A replica may lag behind the leader: ask the leader before concluding.
        match self.stream.get_raw_message(stream_seq).await {
            Ok(message) => Ok(Some(message)),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(io_error(
                self.stream_name(),
                "get message",
                ErrorKind::Other,
                error.to_string(),
            )),
        }
    }

    /// The stream sequence of the last message on `subject` (0 if none), from the leader.
    async fn last_on_subject(&self, subject: &str) -> Result<u64, StoreError> {
        use jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(message.sequence),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(error) => Err(io_error(
                self.stream_name(),
                "get last message",
                ErrorKind::Other,
                error.to_string(),
            )),
        }
    }

    async fn publish(
        &self,
        record: Bytes,
        subject: String,
        msg_id: String,
        expected: u64,
    ) -> Published {
        let message = PublishMessage::build()
            .payload(record)
            .message_id(msg_id)
            .expected_last_subject_sequence(expected);
        let classify = |kind: PublishErrorKind, detail: String| match kind {
            PublishErrorKind::WrongLastSequence => Published::Conflict,
            PublishErrorKind::MaxPayloadExceeded => Published::TooLarge(detail),
            _ => Published::Transient(detail),
        };
        let ack = match self.js.send_publish(subject, message).await {
            Ok(ack) => ack,
            Err(error) => return classify(error.kind(), error.to_string()),
        };
        match ack.await {
            Ok(ack) => Published::Acked {
                stream_seq: ack.sequence,
                duplicate: ack.duplicate,
            },
            Err(error) => classify(error.kind(), error.to_string()),
        }
    }
}

/// A record waiting in an append call.
struct Pending {
    index: usize,
    record: SealedRecord,
    /// Publishes tried for it in this call (a duplicate acknowledgement after a retry is ours).
    attempts: u32,
    conflicts: u32,
}

enum Class {
    /// Already indexed with the same hash.
    Present,
    /// The next record of its writer: verify and publish.
    Next,
    /// Beyond the writer's indexed head (or of an unknown writer): catch up first.
    Ahead,
}

impl JetStreamStore {
    /// Opens the store of `metadata`'s capsule, creating its stream (with `options.replicas`)
    /// and publishing the metadata if they do not exist yet, then replays and verifies every
    /// record in the stream.
    pub fn open_or_create(
        conn: &NatsConnection,
        metadata: &CapsuleMetadata,
        options: JetStreamOptions,
    ) -> Result<(Self, OpenReport), NatsError> {
        let names = StoreSubjects::new(&options.subject_prefix, &metadata.id())
            .map_err(|error| NatsError::InvalidOption(error.to_string()))?;
        if options.replicas == 0 || options.replicas > 5 {
            return Err(NatsError::InvalidOption("replicas must be in 1..=5".into()));
        }
        let record_bytes_max = record_bytes_max(conn, metadata);
        let js = context(conn);
        let config = jetstream::stream::Config {
            name: names.stream.clone(),
            description: Some(format!("PSL capsule {}", metadata.id())),
            subjects: vec![names.records_wildcard.clone(), names.meta.clone()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: options.duplicate_window,
            max_message_size: i32::try_from(record_bytes_max.saturating_add(PUBLISH_HEADER_BYTES))
                .unwrap_or(i32::MAX),
            max_messages_per_subject: -1,
            max_messages: -1,
            max_bytes: -1,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        };
        let stream_name = names.stream.clone();
        let meta_subject = names.meta.clone();
        let meta_bytes = Bytes::from(metadata.encode());
        let capsule = metadata.id();
        let js_task = js.clone();
        let stream = conn.run(async move {
            // Creating a replicated stream forms its Raft group; on a loaded cluster the API
            // call can time out before that is done. Creating is idempotent: retry for a while.
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(100);
            let stream = loop {
                match js_task.get_or_create_stream(config.clone()).await {
                    Ok(stream) => break stream,
                    Err(error)
                        if started.elapsed() < STREAM_READY_WAIT
                            && error.to_string().contains("timed out") =>
                    {
                        tracing::debug!(%error, "creating the stream; retrying");
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2).min(Duration::from_millis(1000));
                    }
                    Err(error) => {
                        return Err(NatsError::JetStream {
                            op: "create stream",
                            stream: stream_name.clone(),
                            detail: error.to_string(),
                        });
                    }
                }
            };
            // A stream just created on a cluster may not have a leader yet ("no stream found",
            // no responders, timeouts): retry for a while, with the same message id.
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(50);
            loop {
                let message = PublishMessage::build()
                    .payload(meta_bytes.clone())
                    .message_id(format!("{capsule}/meta"))
                    .expected_last_subject_sequence(0);
                let published = async {
                    js_task
                        .send_publish(meta_subject.clone(), message)
                        .await
                        .map_err(|error| error.kind())?
                        .await
                        .map_err(|error| error.kind())
                };
                match published.await {
                    Ok(_) | Err(PublishErrorKind::WrongLastSequence) => break Ok(stream),
                    Err(kind) if started.elapsed() < STREAM_READY_WAIT => {
                        tracing::debug!(%kind, "stream not ready for its metadata yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2).min(Duration::from_millis(500));
                    }
                    Err(kind) => {
                        break Err(NatsError::JetStream {
                            op: "publish metadata",
                            stream: stream_name,
                            detail: kind.to_string(),
                        });
                    }
                }
            }
        })??;
        // Whoever published the metadata first, it must be ours.
        Self::finish_open(conn, js, stream, names, capsule, options)
    }

    /// Opens the existing store of `capsule`: reads and checks its metadata, then replays and
    /// verifies every record.
    pub fn open(
        conn: &NatsConnection,
        capsule: CapsuleId,
        options: JetStreamOptions,
    ) -> Result<(Self, OpenReport), NatsError> {
        let names = StoreSubjects::new(&options.subject_prefix, &capsule)
            .map_err(|error| NatsError::InvalidOption(error.to_string()))?;
        let js = context(conn);
        let stream_name = names.stream.clone();
        let js_task = js.clone();
        let stream = conn.run(async move {
            js_task
                .get_stream(&stream_name)
                .await
                .map_err(|error| match error.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(inner)
                        if inner.code() == 404 =>
                    {
                        NatsError::NotAStore(stream_name.clone())
                    }
                    _ => NatsError::JetStream {
                        op: "get stream",
                        stream: stream_name.clone(),
                        detail: error.to_string(),
                    },
                })
        })??;
        Self::finish_open(conn, js, stream, names, capsule, options)
    }

    fn finish_open(
        conn: &NatsConnection,
        js: jetstream::Context,
        stream: jetstream::stream::Stream,
        names: StoreSubjects,
        capsule: CapsuleId,
        options: JetStreamOptions,
    ) -> Result<(Self, OpenReport), NatsError> {
        let stream_name = names.stream.clone();
        let meta_subject = names.meta.clone();
        let stream_task = stream.clone();
        let fetched = conn.run(async move {
            stream_task
                .get_last_raw_message_by_subject(&meta_subject)
                .await
                .map(|message| message.payload)
                .map_err(|error| error.kind())
        })?;
        let payload = match fetched {
            Ok(payload) => payload,
            Err(jetstream::stream::LastRawMessageErrorKind::NoMessageFound) => {
                return Err(NatsError::NotAStore(stream_name));
            }
            Err(kind) => {
                return Err(NatsError::JetStream {
                    op: "read metadata",
                    stream: stream_name,
                    detail: kind.to_string(),
                });
            }
        };
        let wrong = |detail: String| NatsError::WrongMetadata {
            stream: stream_name.clone(),
            expected: capsule,
            detail,
        };
        if payload.len() > METADATA_BYTES_MAX {
            return Err(wrong(format!("{} bytes", payload.len())));
        }
        let metadata =
            CapsuleMetadata::decode(&payload).map_err(|error| wrong(error.to_string()))?;
        if metadata.id() != capsule {
            return Err(wrong(format!("found capsule {}", metadata.id())));
        }
        let record_bytes_max = record_bytes_max(conn, &metadata);
        let limits = VerifierLimits {
            hash_window: 2,
            writers_max: STORE_WRITERS_MAX,
        };
        let store = JetStreamStore {
            conn: conn.clone(),
            remote: Remote {
                js,
                stream,
                names: std::sync::Arc::new(names),
            },
            metadata: metadata.clone(),
            options: JetStreamOptions {
                read_concurrency: options.read_concurrency.clamp(1, 1024),
                ..options
            },
            record_bytes_max,
            inner: Mutex::new(Inner {
                verifier: CapsuleVerifier::with_limits(metadata, limits),
                writers: HashMap::new(),
                cursor: 0,
                acked_ahead: BTreeSet::new(),
                skipped: 0,
                retries: 0,
                conflicts: 0,
                in_flight: HashSet::new(),
            }),
            released: Condvar::new(),
        };
        let report = {
            let mut inner = store.inner.lock();
            let last_sequence =
                store
                    .catch_up(&mut inner)
                    .map_err(|error| NatsError::JetStream {
                        op: "replay",
                        stream: store.remote.names.stream.clone(),
                        detail: error.to_string(),
                    })?;
            OpenReport {
                records: inner
                    .writers
                    .values()
                    .map(|writer| writer.entries.len() as u64)
                    .sum(),
                skipped: inner.skipped,
                last_sequence,
            }
        };
        Ok((store, report))
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.remote.names.stream
    }

    /// The largest record this store accepts (the capsule's limit and the server's payload
    /// limit less [`PUBLISH_HEADER_BYTES`]).
    pub fn record_bytes_max(&self) -> usize {
        self.record_bytes_max
    }

    /// Records indexed (verified) by this handle.
    pub fn record_count(&self) -> u64 {
        self.inner
            .lock()
            .writers
            .values()
            .map(|writer| writer.entries.len() as u64)
            .sum()
    }

    /// Messages of the stream skipped because they did not verify.
    pub fn skipped_messages(&self) -> u64 {
        self.inner.lock().skipped
    }

    /// Publishes retried after a transient failure (timeout, no leader, connection loss) and
    /// "wrong last sequence" answers, since open.
    pub fn retry_counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.retries, inner.conflicts)
    }

    /// Brings the index up to date with the stream now.
    pub fn refresh(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        self.catch_up(&mut inner).map(|_| ())
    }

    fn run<F>(&self, future: F) -> Result<F::Output, StoreError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.conn
            .run(future)
            .map_err(runtime_gone(self.stream_name()))
    }

    /// Runs a read, retrying server and connection failures (a stream leader election, a
    /// reconnect) with backoff for up to `append_timeout`. Reads are idempotent.
    fn retrying<T>(
        &self,
        mut read: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(25);
        loop {
            match read() {
                Err(StoreError::Io { op, path, source })
                    if started.elapsed() < self.options.append_timeout =>
                {
                    tracing::debug!(op, path = %path.display(), %source, "read failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Fetches `seqs` concurrently, in order.
    fn fetch(
        &self,
        seqs: Vec<u64>,
    ) -> Result<Vec<(u64, Option<jetstream::message::StreamMessage>)>, StoreError> {
        let remote = self.remote.clone();
        let concurrency = self.options.read_concurrency;
        self.run(async move {
            futures_util::stream::iter(seqs)
                .map(|seq| {
                    let remote = remote.clone();
                    async move { remote.get(seq).await.map(|message| (seq, message)) }
                })
                .buffered(concurrency)
                .collect::<Vec<_>>()
                .await
        })?
        .into_iter()
        .collect()
    }

    /// Reads every stream sequence after the cursor and indexes what verifies. Returns the
    /// stream's last sequence.
    fn catch_up(&self, inner: &mut Inner) -> Result<u64, StoreError> {
        let remote = self.remote.clone();
        let last = self.retrying(|| {
            let remote = remote.clone();
            self.run(async move { remote.last_sequence().await })?
        })?;
        while inner.cursor < last {
            let start = inner.cursor.saturating_add(1);
            let end = start.saturating_add(CATCH_UP_CHUNK - 1).min(last);
            let seqs: Vec<u64> = (start..=end)
                .filter(|seq| !inner.acked_ahead.contains(seq))
                .collect();
            let messages = self.retrying(|| self.fetch(seqs.clone()))?;
            self.replay(inner, messages);
            inner.cursor = end;
            inner.acked_ahead = inner.acked_ahead.split_off(&end.saturating_add(1));
        }
        Ok(last)
    }

    /// Verifies and indexes fetched messages, in stream order; skips what does not verify.
    fn replay(
        &self,
        inner: &mut Inner,
        messages: Vec<(u64, Option<jetstream::message::StreamMessage>)>,
    ) {
        let names = &self.remote.names;
        let mut candidates: Vec<(u64, SealedRecord)> = Vec::new();
        for (stream_seq, message) in messages {
            let Some(message) = message else { continue };
            if message.sequence != stream_seq {
                tracing::warn!(
                    stream_seq,
                    got = message.sequence,
                    "server returned another sequence"
                );
                inner.skipped = inner.skipped.saturating_add(1);
                continue;
            }
            if message.subject.as_str() == names.meta {
                continue;
            }
            let Some(writer) = names.parse_writer(message.subject.as_str()) else {
                inner.skipped = inner.skipped.saturating_add(1);
                continue;
            };
            if let Some(index) = inner.writers.get_mut(&writer) {
                index.last_subject_seq = index.last_subject_seq.max(stream_seq);
            }
            if message.payload.len() > self.record_bytes_max {
                inner.skipped = inner.skipped.saturating_add(1);
                continue;
            }
            match SealedRecord::decode(&message.payload) {
                Ok(record) if record.writer() == writer => candidates.push((stream_seq, record)),
                Ok(_) | Err(_) => {
                    tracing::debug!(
                        stream_seq,
                        "skipping a message that is not a record of its subject's writer"
                    );
                    inner.skipped = inner.skipped.saturating_add(1);
                }
            }
        }
        let records: Vec<SealedRecord> = candidates
            .iter()
            .map(|(_, record)| record.clone())
            .collect();
        let verdicts = inner.verifier.verify_batch(&records, Validity::Ignore);
        for ((stream_seq, record), verdict) in candidates.into_iter().zip(verdicts) {
            match verdict {
                Ok(Verdict::Accepted(_) | Verdict::Duplicate { .. }) => {
                    let index = inner.writers.entry(record.writer()).or_default();
                    index.last_subject_seq = index.last_subject_seq.max(stream_seq);
                    if usize::try_from(record.seq()).ok() == Some(index.entries.len()) {
                        index.entries.push(Entry {
                            stream_seq,
                            len: u32::try_from(record.len()).unwrap_or(u32::MAX),
                            hash: record.stored_hash(),
                        });
                    } else {
                        // A second copy of an indexed record (stored again after the
                        // duplicate window): harmless, skipped.
                        inner.skipped = inner.skipped.saturating_add(1);
                    }
                }
                Err(error) => {
                    tracing::debug!(stream_seq, %error, "skipping a record that does not verify");
                    inner.skipped = inner.skipped.saturating_add(1);
                }
            }
        }
    }

    fn classify(inner: &Inner, record: &SealedRecord) -> Result<Class, Entry> {
        let next = inner
            .writers
            .get(&record.writer())
            .map(|index| index.entries.len() as u64)
            .unwrap_or(0);
        let seq = record.seq();
        if seq > next {
            return Ok(Class::Ahead);
        }
        if seq == next {
            return Ok(Class::Next);
        }
        let entry = inner
            .writers
            .get(&record.writer())
            .and_then(|index| index.entries.get(usize::try_from(seq).ok()?))
            .copied();
        match entry {
            Some(entry) if entry.hash == record.stored_hash() => Ok(Class::Present),
            Some(entry) => Err(entry),
            None => Ok(Class::Ahead),
        }
    }

    /// The error for a record that differs from the indexed one at its seq: a fork if it is
    /// validly signed, else the reason it does not verify.
    fn fork_or_invalid(
        &self,
        inner: &Inner,
        index: usize,
        entry: Entry,
        record: &SealedRecord,
    ) -> StoreError {
        let (writer, seq) = (record.writer(), record.seq());
        let rejected = |source| StoreError::Rejected {
            index,
            appended: 0,
            source,
        };
        let Some(certificate) = inner.verifier.certificate(&writer) else {
            return rejected(VerifyError::UnknownWriter { writer, seq });
        };
        let conflicting = record.signed_header();
        if !conflicting.check(&certificate.writer_public_key) {
            return rejected(if record.compute_hash() == record.stored_hash() {
                VerifyError::BadSignature { writer, seq }
            } else {
                VerifyError::BadHash { writer, seq }
            });
        }
        match self.read_entries(writer, vec![entry]) {
            Ok(mut existing) => match existing.pop() {
                Some(existing) => StoreError::Fork {
                    index,
                    evidence: Box::new(ForkEvidence {
                        first: existing.signed_header(),
                        second: conflicting,
                    }),
                },
                None => corruption(
                    self.stream_name(),
                    entry.stream_seq,
                    "record vanished".into(),
                ),
            },
            Err(error) => error,
        }
    }

    /// Fetches indexed records and checks each is still the record that was verified.
    fn read_entries(
        &self,
        writer: WriterId,
        entries: Vec<Entry>,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        let seqs: Vec<u64> = entries.iter().map(|entry| entry.stream_seq).collect();
        let messages = self.retrying(|| self.fetch(seqs.clone()))?;
        let subject = self.remote.names.writer(&writer);
        let stream = self.stream_name();
        entries
            .iter()
            .zip(messages)
            .map(|(entry, (stream_seq, message))| {
                let bad = |detail: &str| corruption(stream, stream_seq, detail.to_string());
                let message =
                    message.ok_or_else(|| bad("indexed record missing from the stream"))?;
                if message.sequence != stream_seq || message.subject.as_str() != subject {
                    return Err(bad("server returned another message"));
                }
                if message.payload.len() > self.record_bytes_max {
                    return Err(bad("message larger than any record"));
                }
                let record = SealedRecord::decode(&message.payload)
                    .map_err(|error| bad(&format!("undecodable record: {error}")))?;
                if record.stored_hash() != entry.hash || record.compute_hash() != entry.hash {
                    return Err(bad("record changed since it was verified"));
                }
                Ok(record)
            })
            .collect()
    }

    fn msg_id(&self, record: &SealedRecord) -> String {
        format!(
            "{}/{}/{}/{}",
            self.metadata.id(),
            record.writer(),
            record.seq(),
            record.stored_hash()
        )
    }

    fn append_inner(&self, records: &[SealedRecord]) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let mut first_error: Option<StoreError> = None;
        fn note(first: &mut Option<StoreError>, error: StoreError) {
            if first.is_none() {
                *first = Some(error);
            }
        }
        // One queue per writer, in order of first appearance.
        let mut queues: Vec<VecDeque<Pending>> = Vec::new();
        let mut queue_of: HashMap<WriterId, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            if record.capsule() != self.metadata.id() {
                let source = VerifyError::WrongCapsule {
                    writer: record.writer(),
                    seq: record.seq(),
                    found: record.capsule(),
                };
                note(
                    &mut first_error,
                    StoreError::Rejected {
                        index,
                        appended: 0,
                        source,
                    },
                );
                continue;
            }
            let position = *queue_of.entry(record.writer()).or_insert_with(|| {
                queues.push(VecDeque::new());
                queues.len().saturating_sub(1)
            });
            if let Some(queue) = queues.get_mut(position) {
                queue.push_back(Pending {
                    index,
                    record: record.clone(),
                    attempts: 0,
                    conflicts: 0,
                });
            }
        }
        let started = Instant::now();
        let deadline = started
            .checked_add(self.options.append_timeout)
            .unwrap_or(started);
        let mut backoff = Duration::from_millis(25);
        let mut inner = self.inner.lock();
        let mut fresh = false;
        let mut want_catch_up = false;
        loop {
            if want_catch_up {
                match self.catch_up(&mut inner) {
                    Ok(_) => fresh = true,
                    Err(error) => {
                        if Instant::now() >= deadline {
                            note(&mut first_error, error);
                            break;
                        }
                        MutexGuard::unlocked(&mut inner, || std::thread::sleep(backoff));
                        backoff = backoff.saturating_mul(2).min(Duration::from_millis(500));
                        continue;
                    }
                }
                want_catch_up = false;
            }
            // Pick the next record of every writer, verified; settle what needs no publish.
            let mut round: Vec<usize> = Vec::new();
            let mut blocked = false;
            for (position, queue) in queues.iter_mut().enumerate() {
                while let Some(pending) = queue.front() {
                    if inner.in_flight.contains(&pending.record.writer()) {
                        // Another call is publishing this writer's previous record.
                        blocked = true;
                        break;
                    }
                    let class = Self::classify(&inner, &pending.record);
                    match class {
                        Ok(Class::Present) => {
                            if pending.attempts > 0 {
                                report.appended = report.appended.saturating_add(1);
                            } else {
                                report.duplicates = report.duplicates.saturating_add(1);
                            }
                            queue.pop_front();
                        }
                        Err(entry) => {
                            let error =
                                self.fork_or_invalid(&inner, pending.index, entry, &pending.record);
                            note(&mut first_error, error);
                            queue.clear();
                        }
                        Ok(Class::Ahead) if !fresh => {
                            want_catch_up = true;
                            break;
                        }
                        Ok(Class::Ahead) => {
                            // The index is fresh and still lacks the predecessor.
                            let writer = pending.record.writer();
                            let seq = pending.record.seq();
                            let source = match inner.writers.get(&writer) {
                                Some(index) if !index.entries.is_empty() => VerifyError::Gap {
                                    writer,
                                    missing: index.entries.len() as u64..seq,
                                },
                                _ => VerifyError::UnknownWriter { writer, seq },
                            };
                            note(
                                &mut first_error,
                                StoreError::Rejected {
                                    index: pending.index,
                                    appended: 0,
                                    source,
                                },
                            );
                            queue.clear();
                        }
                        Ok(Class::Next) => {
                            match inner.verifier.verify(&pending.record, Validity::Ignore) {
                                // `Duplicate`: verified by an earlier attempt whose publish
                                // failed, so the verifier is one record ahead of the index.
                                Ok(Verdict::Accepted(_) | Verdict::Duplicate { .. }) => {
                                    round.push(position);
                                }
                                Err(source) => {
                                    note(
                                        &mut first_error,
                                        StoreError::Rejected {
                                            index: pending.index,
                                            appended: 0,
                                            source,
                                        },
                                    );
                                    queue.clear();
                                }
                            }
                            break;
                        }
                    }
                }
            }
            if round.is_empty() {
                if want_catch_up {
                    continue;
                }
                if blocked {
                    self.released.wait(&mut inner);
                    continue;
                }
                break;
            }
            // Publish the round: one record per writer, concurrently.
            let mut jobs = Vec::with_capacity(round.len());
            for &position in &round {
                let Some(pending) = queues.get_mut(position).and_then(|queue| queue.front_mut())
                else {
                    continue;
                };
                pending.attempts = pending.attempts.saturating_add(1);
                let writer = pending.record.writer();
                let expected = inner
                    .writers
                    .get(&writer)
                    .map(|index| index.last_subject_seq)
                    .unwrap_or(0);
                jobs.push((
                    position,
                    Bytes::copy_from_slice(pending.record.as_bytes()),
                    self.remote.names.writer(&writer),
                    self.msg_id(&pending.record),
                    expected,
                ));
            }
            let round_writers: Vec<WriterId> = queues
                .iter()
                .enumerate()
                .filter(|(position, _)| round.contains(position))
                .filter_map(|(_, queue)| queue.front().map(|pending| pending.record.writer()))
                .collect();
            inner.in_flight.extend(round_writers.iter().copied());
            let remote = self.remote.clone();
            // Publish without the lock: other calls (other writers) proceed meanwhile.
            let outcomes = MutexGuard::unlocked(&mut inner, || {
                self.run(async move {
                    let publishes =
                        jobs.into_iter()
                            .map(|(position, bytes, subject, id, expected)| {
                                let remote = remote.clone();
                                async move {
                                    let outcome =
                                        remote.publish(bytes, subject.clone(), id, expected).await;
                                    // On a conflict, learn the subject's real last sequence.
                                    let last = match outcome {
                                        Published::Conflict => {
                                            Some(remote.last_on_subject(&subject).await)
                                        }
                                        _ => None,
                                    };
                                    (position, outcome, last)
                                }
                            });
                    futures_util::future::join_all(publishes).await
                })
            });
            for writer in &round_writers {
                inner.in_flight.remove(writer);
            }
            self.released.notify_all();
            let outcomes = outcomes?;
            fresh = false;
            let mut transient = false;
            for (position, outcome, last) in outcomes {
                let Some(queue) = queues.get_mut(position) else {
                    continue;
                };
                let Some(pending) = queue.front_mut() else {
                    continue;
                };
                let writer = pending.record.writer();
                match outcome {
                    Published::Acked {
                        stream_seq,
                        duplicate,
                    } => {
                        let index = inner.writers.entry(writer).or_default();
                        if usize::try_from(pending.record.seq()).ok() == Some(index.entries.len()) {
                            index.entries.push(Entry {
                                stream_seq,
                                len: u32::try_from(pending.record.len()).unwrap_or(u32::MAX),
                                hash: pending.record.stored_hash(),
                            });
                        }
                        index.last_subject_seq = index.last_subject_seq.max(stream_seq);
                        if stream_seq > inner.cursor {
                            inner.acked_ahead.insert(stream_seq);
                        }
                        if duplicate && pending.attempts <= 1 {
                            report.duplicates = report.duplicates.saturating_add(1);
                        } else {
                            report.appended = report.appended.saturating_add(1);
                        }
                        queue.pop_front();
                    }
                    Published::Conflict => {
                        inner.conflicts = inner.conflicts.saturating_add(1);
                        pending.conflicts = pending.conflicts.saturating_add(1);
                        if let Some(Ok(last)) = last {
                            let index = inner.writers.entry(writer).or_default();
                            index.last_subject_seq = index.last_subject_seq.max(last);
                        }
                        if pending.conflicts > CONFLICTS_MAX {
                            let error = io_error(
                                self.stream_name(),
                                "append (subject keeps changing)",
                                ErrorKind::Other,
                                format!("writer {writer} seq {}", pending.record.seq()),
                            );
                            note(&mut first_error, error);
                            queue.clear();
                        } else {
                            want_catch_up = true;
                        }
                    }
                    Published::TooLarge(detail) => {
                        tracing::warn!(%detail, "server refused a record as too large");
                        note(
                            &mut first_error,
                            StoreError::BatchTooLarge {
                                len: pending.record.len(),
                                max: self.record_bytes_max,
                            },
                        );
                        queue.clear();
                    }
                    Published::Transient(detail) => {
                        if Instant::now() >= deadline {
                            let error = io_error(
                                self.stream_name(),
                                "publish",
                                ErrorKind::TimedOut,
                                format!(
                                    "writer {writer} seq {}: {detail} (gave up after {:?})",
                                    pending.record.seq(),
                                    self.options.append_timeout
                                ),
                            );
                            note(&mut first_error, error);
                            queue.clear();
                        } else {
                            tracing::debug!(%detail, "publish failed; retrying");
                            inner.retries = inner.retries.saturating_add(1);
                            transient = true;
                        }
                    }
                }
            }
            if transient {
                MutexGuard::unlocked(&mut inner, || std::thread::sleep(backoff));
                backoff = backoff.saturating_mul(2).min(Duration::from_millis(500));
            }
        }
        drop(inner);
        if let Some(StoreError::Rejected { appended, .. }) = &mut first_error {
            *appended = report.appended;
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

fn context(conn: &NatsConnection) -> jetstream::Context {
    // Building a context spawns its acknowledgement task: do it on the connection's runtime.
    let _runtime = conn.handle().enter();
    jetstream::context::ContextBuilder::new()
        .timeout(conn.options().request_timeout)
        .build(conn.client().clone())
}

fn record_bytes_max(conn: &NatsConnection, metadata: &CapsuleMetadata) -> usize {
    let capsule = usize::try_from(metadata.params().record_bytes_max)
        .unwrap_or(usize::MAX)
        .min(RECORD_BYTES_MAX);
    capsule.min(conn.max_payload().saturating_sub(PUBLISH_HEADER_BYTES))
}

impl RecordStore for JetStreamStore {
    fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    /// Appends and returns once JetStream acknowledged every record (see the module docs;
    /// `durability` is the stream's: quorum-replicated).
    fn append(
        &self,
        records: &[SealedRecord],
        _durability: Durability,
    ) -> Result<AppendReport, StoreError> {
        let len = records
            .iter()
            .fold(0usize, |sum, record| sum.saturating_add(record.len()));
        if len > APPEND_BYTES_MAX {
            return Err(StoreError::BatchTooLarge {
                len,
                max: APPEND_BYTES_MAX,
            });
        }
        if let Some(record) = records
            .iter()
            .find(|record| record.len() > self.record_bytes_max)
        {
            return Err(StoreError::BatchTooLarge {
                len: record.len(),
                max: self.record_bytes_max,
            });
        }
        self.append_inner(records)
    }

    fn read_range(
        &self,
        writer: WriterId,
        seqs: Range<u64>,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        let entries: Vec<Entry> = {
            let mut inner = self.inner.lock();
            let indexed = inner
                .writers
                .get(&writer)
                .map(|index| index.entries.len() as u64)
                .unwrap_or(0);
            if seqs.end > indexed && seqs.start < seqs.end {
                self.catch_up(&mut inner)?;
            }
            let Some(index) = inner.writers.get(&writer) else {
                return Ok(Vec::new());
            };
            let start = usize::try_from(seqs.start)
                .unwrap_or(usize::MAX)
                .min(index.entries.len());
            let end = usize::try_from(seqs.end)
                .unwrap_or(usize::MAX)
                .min(index.entries.len())
                .max(start);
            let mut bytes = 0usize;
            let mut out = Vec::new();
            for entry in index.entries.get(start..end).unwrap_or(&[]) {
                let len = usize::try_from(entry.len).unwrap_or(usize::MAX);
                if out.len() >= READ_RECORDS_MAX
                    || (!out.is_empty() && bytes.saturating_add(len) > READ_BYTES_MAX)
                {
                    break;
                }
                bytes = bytes.saturating_add(len);
                out.push(*entry);
            }
            out
        };
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.read_entries(writer, entries)
    }

    fn heads(&self) -> Result<Vec<Head>, StoreError> {
        let mut inner = self.inner.lock();
        self.catch_up(&mut inner)?;
        let mut heads: Vec<Head> = inner
            .writers
            .iter()
            .filter_map(|(writer, index)| {
                let last = index.entries.last()?;
                let seq = (index.entries.len() as u64).checked_sub(1)?;
                Some(Head {
                    writer: *writer,
                    seq,
                    hash: last.hash,
                })
            })
            .collect();
        heads.sort_by_key(|head| head.writer);
        Ok(heads)
    }

    fn writers(&self) -> Result<Vec<WriterId>, StoreError> {
        let mut inner = self.inner.lock();
        self.catch_up(&mut inner)?;
        let mut writers: Vec<WriterId> = inner
            .writers
            .iter()
            .filter(|(_, index)| !index.entries.is_empty())
            .map(|(writer, _)| *writer)
            .collect();
        writers.sort();
        Ok(writers)
    }
}

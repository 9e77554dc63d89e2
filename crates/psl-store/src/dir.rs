//! [`DirStore`]: the embedded, crash-safe record store in a local directory.
//!
//! Owns: the directory lock, segment files and their rotation, the in-memory index
//! `(writer, seq) -> (segment, offset, length, hash)`, durability (fdatasync policies and group
//! commit), and recovery on open (torn tail truncated, damage reported, everything re-verified).
//! It must not hold the data key or decrypt, and never drops bytes it cannot prove were an
//! interrupted append.
//!
//! Concurrency: one mutex guards the index and the active segment; appends write under it and,
//! for [`Durability::Batch`], wait for durability outside it, so concurrent appenders share one
//! `fdatasync` (group commit). Reads copy locations under the mutex and read without it.
//! Memory: the index keeps about 56 bytes per record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};
use psl_capsule::{
    CapsuleMetadata, CapsuleVerifier, ForkEvidence, Head, RecordHash, SealedRecord, Validity,
    Verdict, VerifierLimits, VerifyError, WriterId,
};

use crate::error::{StoreError, io};
use crate::frame::{self, ScanEnd};
use crate::segment::{self, SEGMENT_BYTES_TARGET, SEGMENT_HEADER_BYTES};
use crate::{
    APPEND_BYTES_MAX, AppendReport, Durability, READ_BYTES_MAX, READ_RECORDS_MAX, RecordStore,
};

/// Records verified per signature batch when a store is opened.
const OPEN_VERIFY_BATCH_RECORDS: usize = 1024;
/// Most writers one store tracks.
pub const STORE_WRITERS_MAX: usize = 1 << 20;

/// Options of a [`DirStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Rotate the active segment once it reaches this many bytes (at most
    /// [`SEGMENT_BYTES_TARGET`]).
    pub segment_bytes_target: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes_target: SEGMENT_BYTES_TARGET,
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    segment: u32,
    offset: u64,
    frame_len: u32,
    hash: RecordHash,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

struct Inner {
    verifier: CapsuleVerifier,
    writers: HashMap<WriterId, Vec<Entry>>,
    segments: Vec<Segment>,
    /// Total bytes appended since open (a logical sequence number for group commit).
    written_lsn: u64,
}

struct SyncState {
    synced_lsn: u64,
    in_progress: bool,
}

/// The embedded crash-safe record store. See the module docs.
pub struct DirStore {
    dir: PathBuf,
    metadata: CapsuleMetadata,
    options: StoreOptions,
    _lock: File,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    poisoned: AtomicBool,
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore")
            .field("dir", &self.dir)
            .field("capsule", &self.metadata.id())
            .finish_non_exhaustive()
    }
}

/// What opening a store found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records indexed.
    pub records: u64,
    /// Bytes of an interrupted append cut from the end of the last segment.
    pub torn_tail_bytes: u64,
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(segment::LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(TryLockError::Error(error)) => Err(io("lock", &path)(error)),
    }
}

impl DirStore {
    /// Creates a new store for `metadata` in `dir` (created if missing; must not hold a store).
    pub fn create(
        dir: impl AsRef<Path>,
        metadata: &CapsuleMetadata,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let lock = lock_dir(dir)?;
        if dir.join(segment::METADATA_FILE).exists() {
            return Err(StoreError::AlreadyExists(dir.to_path_buf()));
        }
        segment::write_metadata(dir, metadata)?;
        Self::load(dir, lock, options).map(|(store, _)| store)
    }

    /// Opens an existing store: checks and indexes every segment, re-verifies every record
    /// (hash, certificate, signature, chain), cuts a torn tail, and reports damage.
    pub fn open(
        dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<(Self, OpenReport), StoreError> {
        let dir = dir.as_ref();
        let lock = lock_dir(dir)?;
        Self::load(dir, lock, options)
    }

    fn load(
        dir: &Path,
        lock: File,
        options: StoreOptions,
    ) -> Result<(Self, OpenReport), StoreError> {
        let metadata = segment::read_metadata(dir)?;
        let capsule = metadata.id();
        let limits = VerifierLimits {
            hash_window: 1,
            writers_max: STORE_WRITERS_MAX,
        };
        let mut inner = Inner {
            verifier: CapsuleVerifier::with_limits(metadata.clone(), limits),
            writers: HashMap::new(),
            segments: Vec::new(),
            written_lsn: 0,
        };
        let mut report = OpenReport::default();
        segment::remove_interrupted_creations(dir)?;
        let listed = segment::list_segments(dir)?;
        let last = listed.len();
        for (position, (index, path)) in listed.into_iter().enumerate() {
            let body = segment::read_segment(&path, &capsule, index)?;
            let scan = frame::scan(&body, SEGMENT_HEADER_BYTES);
            let segment_id = u32::try_from(position).unwrap_or(u32::MAX);
            index_scanned(&mut inner, &path, segment_id, &scan.frames)?;
            report.records = report.records.saturating_add(scan.frames.len() as u64);
            let body_len = u64::try_from(body.len()).unwrap_or(u64::MAX);
            let mut len = SEGMENT_HEADER_BYTES.saturating_add(body_len);
            match scan.end {
                ScanEnd::Clean => {}
                ScanEnd::TornTail { offset, .. } if position.saturating_add(1) == last => {
                    report.torn_tail_bytes = len.saturating_sub(offset);
                    truncate(&path, offset)?;
                    len = offset;
                }
                ScanEnd::TornTail { offset, problem } => {
                    return Err(StoreError::Corruption {
                        path,
                        offset,
                        detail: format!("{problem} at the end of a segment that is not the last"),
                    });
                }
                ScanEnd::Corrupt { offset, detail } => {
                    return Err(StoreError::Corruption {
                        path,
                        offset,
                        detail,
                    });
                }
            }
            let file = OpenOptions::new()
                .append(true)
                .read(true)
                .open(&path)
                .map_err(io("open", &path))?;
            inner.segments.push(Segment {
                path,
                file: Arc::new(file),
                len,
            });
        }
        if inner.segments.is_empty() {
            let file = segment::create_segment(dir, &capsule, 1)?;
            inner.segments.push(Segment {
                path: segment::segment_path(dir, 1),
                file: Arc::new(file),
                len: SEGMENT_HEADER_BYTES,
            });
        }
        let options = StoreOptions {
            segment_bytes_target: options
                .segment_bytes_target
                .clamp(4096, SEGMENT_BYTES_TARGET),
        };
        let store = DirStore {
            dir: dir.to_path_buf(),
            metadata,
            options,
            _lock: lock,
            inner: Mutex::new(inner),
            sync: Mutex::new(SyncState {
                synced_lsn: 0,
                in_progress: false,
            }),
            synced: Condvar::new(),
            poisoned: AtomicBool::new(false),
        };
        Ok((store, report))
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of records stored.
    pub fn record_count(&self) -> u64 {
        let inner = self.inner.lock();
        inner
            .writers
            .values()
            .map(|entries| entries.len() as u64)
            .sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.lock().segments.len()
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    fn poison<T>(&self, error: StoreError) -> Result<T, StoreError> {
        self.poisoned.store(true, Ordering::Release);
        self.synced.notify_all();
        Err(error)
    }

    /// Classifies, verifies and writes; returns what to wait for.
    fn append_locked(
        &self,
        inner: &mut Inner,
        records: &[SealedRecord],
        durability: Durability,
    ) -> Result<(AppendReport, u64, Arc<File>, Option<StoreError>), StoreError> {
        let mut report = AppendReport::default();
        let mut first_error: Option<StoreError> = None;
        let note = |error: StoreError, first: &mut Option<StoreError>| {
            if first.is_none() {
                *first = Some(error);
            }
        };
        let mut candidates: Vec<(usize, SealedRecord)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let (writer, seq) = (record.writer(), record.seq());
            if record.capsule() != self.metadata.id() {
                let source = VerifyError::WrongCapsule {
                    writer,
                    seq,
                    found: record.capsule(),
                };
                note(
                    StoreError::Rejected {
                        index,
                        appended: 0,
                        source,
                    },
                    &mut first_error,
                );
                continue;
            }
            let stored = inner
                .writers
                .get(&writer)
                .and_then(|entries| entries.get(usize::try_from(seq).ok()?))
                .copied();
            match stored {
                Some(entry) if entry.hash == record.stored_hash() => {
                    report.duplicates = report.duplicates.saturating_add(1);
                }
                Some(entry) => {
                    let error = self.fork_or_invalid(inner, index, entry, record);
                    note(error, &mut first_error);
                }
                None => candidates.push((index, record.clone())),
            }
        }
        let batch: Vec<SealedRecord> = candidates
            .iter()
            .map(|(_, record)| record.clone())
            .collect();
        let results = inner.verifier.verify_batch(&batch, Validity::Ignore);
        let mut buffer = Vec::new();
        let mut accepted: Vec<(SealedRecord, u64, u32)> = Vec::new();
        for ((index, record), result) in candidates.into_iter().zip(results) {
            match result {
                Ok(Verdict::Accepted(_)) => {
                    let offset = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
                    frame::encode_frame(record.as_bytes(), &mut buffer);
                    let frame_len = u64::try_from(buffer.len())
                        .unwrap_or(u64::MAX)
                        .saturating_sub(offset);
                    accepted.push((record, offset, u32::try_from(frame_len).unwrap_or(u32::MAX)));
                }
                Ok(Verdict::Duplicate { .. }) => {
                    report.duplicates = report.duplicates.saturating_add(1);
                }
                Err(source) => {
                    note(
                        StoreError::Rejected {
                            index,
                            appended: 0,
                            source,
                        },
                        &mut first_error,
                    );
                }
            }
        }
        report.appended = accepted.len();
        if let Some(StoreError::Rejected { appended, .. }) = &mut first_error {
            *appended = report.appended;
        }
        let active_file = self.write_frames(inner, &buffer, &accepted, durability)?;
        Ok((report, inner.written_lsn, active_file, first_error))
    }

    fn fork_or_invalid(
        &self,
        inner: &Inner,
        index: usize,
        entry: Entry,
        record: &SealedRecord,
    ) -> StoreError {
        let (writer, seq) = (record.writer(), record.seq());
        let Some(certificate) = inner.verifier.certificate(&writer) else {
            let source = VerifyError::UnknownWriter { writer, seq };
            return StoreError::Rejected {
                index,
                appended: 0,
                source,
            };
        };
        let conflicting = record.signed_header();
        if !conflicting.check(&certificate.writer_public_key) {
            let source = if record.compute_hash() == record.stored_hash() {
                VerifyError::BadSignature { writer, seq }
            } else {
                VerifyError::BadHash { writer, seq }
            };
            return StoreError::Rejected {
                index,
                appended: 0,
                source,
            };
        }
        match read_entry(&inner.segments, entry) {
            Ok(existing) => StoreError::Fork {
                index,
                evidence: Box::new(ForkEvidence {
                    first: existing.signed_header(),
                    second: conflicting,
                }),
            },
            Err(error) => error,
        }
    }

    /// Writes the frames (rotating first if needed) and indexes them.
    fn write_frames(
        &self,
        inner: &mut Inner,
        buffer: &[u8],
        accepted: &[(SealedRecord, u64, u32)],
        durability: Durability,
    ) -> Result<Arc<File>, StoreError> {
        if buffer.is_empty() {
            return active(inner).map(|segment| Arc::clone(&segment.file));
        }
        let buffer_len = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
        let needs_rotation = active(inner).map(|segment| {
            segment.len > SEGMENT_HEADER_BYTES
                && segment.len.saturating_add(buffer_len) > self.options.segment_bytes_target
        })?;
        if needs_rotation {
            self.rotate(inner)?;
        }
        let segment_id = u32::try_from(inner.segments.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let segment = active_mut(inner)?;
        let base = segment.len;
        if let Err(error) = (&*segment.file).write_all(buffer) {
            let path = segment.path.clone();
            return self.poison(StoreError::Io {
                op: "append",
                path,
                source: error,
            });
        }
        if durability == Durability::Always
            && let Err(error) = segment.file.sync_data()
        {
            let path = segment.path.clone();
            return self.poison(StoreError::Io {
                op: "fdatasync",
                path,
                source: error,
            });
        }
        segment.len = base.saturating_add(buffer_len);
        let file = Arc::clone(&segment.file);
        for (record, offset, frame_len) in accepted {
            let entry = Entry {
                segment: segment_id,
                offset: base.saturating_add(*offset),
                frame_len: *frame_len,
                hash: record.stored_hash(),
            };
            inner
                .writers
                .entry(record.writer())
                .or_default()
                .push(entry);
        }
        inner.written_lsn = inner.written_lsn.saturating_add(buffer_len);
        Ok(file)
    }

    /// Syncs the active segment and starts the next one.
    fn rotate(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let current = active(inner)?;
        if let Err(error) = current.file.sync_data() {
            let path = current.path.clone();
            return self.poison(StoreError::Io {
                op: "fdatasync",
                path,
                source: error,
            });
        }
        let index = u64::try_from(inner.segments.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let file = match segment::create_segment(&self.dir, &self.metadata.id(), index) {
            Ok(file) => file,
            Err(error) => return self.poison(error),
        };
        inner.segments.push(Segment {
            path: segment::segment_path(&self.dir, index),
            file: Arc::new(file),
            len: SEGMENT_HEADER_BYTES,
        });
        Ok(())
    }

    /// Group commit: returns once `lsn` is durable; one waiter syncs for all.
    fn wait_durable(&self, lsn: u64) -> Result<(), StoreError> {
        let mut state = self.sync.lock();
        loop {
            self.check_poisoned()?;
            if state.synced_lsn >= lsn {
                return Ok(());
            }
            if state.in_progress {
                self.synced.wait(&mut state);
                continue;
            }
            state.in_progress = true;
            drop(state);
            let (target, file, path) = {
                let inner = self.inner.lock();
                let segment = active(&inner)?;
                (
                    inner.written_lsn,
                    Arc::clone(&segment.file),
                    segment.path.clone(),
                )
            };
            let result = file.sync_data();
            state = self.sync.lock();
            state.in_progress = false;
            if let Err(source) = result {
                drop(state);
                return self.poison(StoreError::Io {
                    op: "fdatasync",
                    path,
                    source,
                });
            }
            state.synced_lsn = state.synced_lsn.max(target);
            self.synced.notify_all();
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.check_poisoned()?;
        let lsn = self.inner.lock().written_lsn;
        self.wait_durable(lsn)
    }
}

fn active(inner: &Inner) -> Result<&Segment, StoreError> {
    inner.segments.last().ok_or(StoreError::Poisoned)
}

fn active_mut(inner: &mut Inner) -> Result<&mut Segment, StoreError> {
    inner.segments.last_mut().ok_or(StoreError::Poisoned)
}

fn truncate(path: &Path, offset: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    file.set_len(offset).map_err(io("truncate", path))?;
    file.sync_all().map_err(io("fsync", path))
}

/// Indexes records found in one segment at open, enforcing per-writer order, and verifies them
/// (signatures in batches). Any violation is corruption at the record's offset.
fn index_scanned(
    inner: &mut Inner,
    path: &Path,
    segment_id: u32,
    frames: &[frame::ScannedFrame],
) -> Result<(), StoreError> {
    for chunk in frames.chunks(OPEN_VERIFY_BATCH_RECORDS) {
        let records: Vec<SealedRecord> =
            chunk.iter().map(|scanned| scanned.record.clone()).collect();
        let results = inner.verifier.verify_batch(&records, Validity::Ignore);
        for (scanned, result) in chunk.iter().zip(results) {
            let corruption = |detail: String| StoreError::Corruption {
                path: path.to_path_buf(),
                offset: scanned.offset,
                detail,
            };
            let record = &scanned.record;
            match result {
                Ok(Verdict::Accepted(_)) => {}
                Ok(Verdict::Duplicate { writer, seq }) => {
                    return Err(corruption(format!(
                        "duplicate record writer {writer} seq {seq}"
                    )));
                }
                Err(error) => return Err(corruption(format!("record does not verify: {error}"))),
            }
            inner
                .writers
                .entry(record.writer())
                .or_default()
                .push(Entry {
                    segment: segment_id,
                    offset: scanned.offset,
                    frame_len: scanned.frame_len,
                    hash: record.stored_hash(),
                });
        }
    }
    Ok(())
}

/// Reads and re-checks one indexed record.
fn read_entry(segments: &[Segment], entry: Entry) -> Result<SealedRecord, StoreError> {
    let index = usize::try_from(entry.segment).unwrap_or(usize::MAX);
    let segment = segments.get(index).ok_or(StoreError::Poisoned)?;
    read_at(&segment.file, &segment.path, entry)
}

fn read_at(file: &File, path: &Path, entry: Entry) -> Result<SealedRecord, StoreError> {
    let mut buffer = vec![0u8; usize::try_from(entry.frame_len).unwrap_or(0)];
    file.read_exact_at(&mut buffer, entry.offset)
        .map_err(io("read", path))?;
    let corruption = |detail: String| StoreError::Corruption {
        path: path.to_path_buf(),
        offset: entry.offset,
        detail,
    };
    let raw = frame::parse_frame(&buffer).map_err(|problem| corruption(problem.to_string()))?;
    let record = SealedRecord::decode(raw.record).map_err(|error| corruption(error.to_string()))?;
    // Pair assertion: what we read back is what we indexed and verified.
    if record.stored_hash() != entry.hash || record.compute_hash() != entry.hash {
        return Err(corruption(
            "record changed on disk since it was verified".into(),
        ));
    }
    Ok(record)
}

impl RecordStore for DirStore {
    fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    fn append(
        &self,
        records: &[SealedRecord],
        durability: Durability,
    ) -> Result<AppendReport, StoreError> {
        self.check_poisoned()?;
        let len = records
            .iter()
            .fold(0usize, |sum, record| sum.saturating_add(record.len()));
        if len > APPEND_BYTES_MAX {
            return Err(StoreError::BatchTooLarge {
                len,
                max: APPEND_BYTES_MAX,
            });
        }
        let (report, lsn, _file, first_error) = {
            let mut inner = self.inner.lock();
            self.append_locked(&mut inner, records, durability)?
        };
        if durability == Durability::Batch && report.appended > 0 {
            self.wait_durable(lsn)?;
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    fn read_range(
        &self,
        writer: WriterId,
        seqs: Range<u64>,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        self.check_poisoned()?;
        let locations: Vec<(Arc<File>, PathBuf, Entry)> = {
            let inner = self.inner.lock();
            let Some(entries) = inner.writers.get(&writer) else {
                return Ok(Vec::new());
            };
            let start = usize::try_from(seqs.start)
                .unwrap_or(usize::MAX)
                .min(entries.len());
            let end = usize::try_from(seqs.end)
                .unwrap_or(usize::MAX)
                .min(entries.len())
                .max(start);
            let mut bytes = 0usize;
            let mut out = Vec::new();
            for entry in entries.get(start..end).unwrap_or(&[]) {
                let frame_len = usize::try_from(entry.frame_len).unwrap_or(usize::MAX);
                if out.len() >= READ_RECORDS_MAX
                    || (!out.is_empty() && bytes.saturating_add(frame_len) > READ_BYTES_MAX)
                {
                    break;
                }
                bytes = bytes.saturating_add(frame_len);
                let index = usize::try_from(entry.segment).unwrap_or(usize::MAX);
                let segment = inner.segments.get(index).ok_or(StoreError::Poisoned)?;
                out.push((Arc::clone(&segment.file), segment.path.clone(), *entry));
            }
            out
        };
        locations
            .iter()
            .map(|(file, path, entry)| read_at(file, path, *entry))
            .collect()
    }

    fn heads(&self) -> Result<Vec<Head>, StoreError> {
        let inner = self.inner.lock();
        let mut heads: Vec<Head> = inner
            .writers
            .iter()
            .filter_map(|(writer, entries)| {
                let last = entries.last()?;
                let seq = u64::try_from(entries.len()).ok()?.checked_sub(1)?;
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
        let inner = self.inner.lock();
        let mut writers: Vec<WriterId> = inner.writers.keys().copied().collect();
        writers.sort();
        Ok(writers)
    }
}

//! Read-only audits of a store directory: [`inspect`] (what is there) and [`verify`] (does all of
//! it verify, and if not, what is the first failure and where).
//!
//! Both only read: they take no lock and change nothing, so they can run on a copy, on a live
//! store, or on evidence. `verify` re-checks everything a reader would (framing, metadata,
//! capsule id, certificates at a given time, revocations, hashes, signatures, chains, expected
//! heads) and tells apart damage, duplicates, replays, gaps, reordering, forks and truncation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use psl_capsule::{
    CapsuleId, CapsuleVerifier, ForkEvidence, Head, RecordHash, RecordKind, SealedRecord, Validity,
    Verdict, VerifyError, WriterId,
};

use crate::error::StoreError;
use crate::frame::{self, ScanEnd};
use crate::segment::{self, SEGMENT_HEADER_BYTES};

/// A place in a store directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the frame in the file.
    pub offset: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} offset {}", self.file.display(), self.offset)
    }
}

/// One writer in an [`InspectReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterSummary {
    /// The writer.
    pub writer: WriterId,
    /// Highest sequence number found.
    pub head_seq: u64,
    /// Its hash.
    pub head_hash: RecordHash,
    /// Records found.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Records per kind.
    pub kinds: BTreeMap<RecordKind, u64>,
    /// Whether a `WriterClose` record was found.
    pub closed: bool,
}

/// What [`inspect`] found in a store directory (framing only; signatures are not checked).
#[derive(Clone, Debug)]
pub struct InspectReport {
    /// The directory.
    pub dir: PathBuf,
    /// The capsule id.
    pub capsule: CapsuleId,
    /// The capsule name.
    pub name: String,
    /// The cipher suite name.
    pub suite: String,
    /// The owner's public key (hex).
    pub owner_public_key: String,
    /// Segment files: path, bytes, records.
    pub segments: Vec<(PathBuf, u64, u64)>,
    /// Writers, sorted by id.
    pub writers: Vec<WriterSummary>,
    /// Records in total.
    pub records: u64,
    /// Record bytes in total.
    pub bytes: u64,
    /// Records per kind in total.
    pub kinds: BTreeMap<RecordKind, u64>,
    /// Framing problems (torn tail, damage); `psl capsule verify` explains them fully.
    pub problems: Vec<String>,
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "capsule   {}", self.capsule)?;
        writeln!(f, "name      {}", self.name)?;
        writeln!(f, "suite     {}", self.suite)?;
        writeln!(f, "owner     {}", self.owner_public_key)?;
        writeln!(f, "directory {}", self.dir.display())?;
        writeln!(
            f,
            "{} records, {} bytes, {} writers, {} segments",
            self.records,
            self.bytes,
            self.writers.len(),
            self.segments.len()
        )?;
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        writeln!(
            f,
            "kinds     {}",
            if kinds.is_empty() {
                "-".into()
            } else {
                kinds.join(", ")
            }
        )?;
        if !self.writers.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "{:<34} {:>10} {:>10} {:>12}  {:<18} kinds",
                "writer", "head seq", "records", "bytes", "head hash"
            )?;
            for writer in &self.writers {
                let kinds: Vec<String> = writer
                    .kinds
                    .iter()
                    .map(|(kind, n)| format!("{kind}:{n}"))
                    .collect();
                writeln!(
                    f,
                    "{:<34} {:>10} {:>10} {:>12}  {:<18} {}{}",
                    writer.writer.to_hex(),
                    writer.head_seq,
                    writer.records,
                    writer.bytes,
                    writer.head_hash.short(),
                    kinds.join(" "),
                    if writer.closed { " (closed)" } else { "" }
                )?;
            }
        }
        for problem in &self.problems {
            writeln!(f, "problem: {problem}")?;
        }
        Ok(())
    }
}

/// Describes the store in `dir` without verifying signatures.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport, StoreError> {
    let dir = dir.as_ref();
    let metadata = segment::read_metadata(dir)?;
    let mut report = InspectReport {
        dir: dir.to_path_buf(),
        capsule: metadata.id(),
        name: metadata.name().to_string(),
        suite: metadata.suite().to_string(),
        owner_public_key: hex::encode(metadata.owner_public_key()),
        segments: Vec::new(),
        writers: Vec::new(),
        records: 0,
        bytes: 0,
        kinds: BTreeMap::new(),
        problems: Vec::new(),
    };
    let mut writers: BTreeMap<WriterId, WriterSummary> = BTreeMap::new();
    for (index, path) in segment::list_segments(dir)? {
        let body = match segment::read_segment(&path, &metadata.id(), index) {
            Ok(body) => body,
            Err(error) => {
                report.problems.push(error.to_string());
                continue;
            }
        };
        let scan = frame::scan(&body, SEGMENT_HEADER_BYTES);
        let file_bytes = SEGMENT_HEADER_BYTES.saturating_add(body.len() as u64);
        report
            .segments
            .push((path.clone(), file_bytes, scan.frames.len() as u64));
        for scanned in &scan.frames {
            let record = &scanned.record;
            let len = record.len() as u64;
            report.records = report.records.saturating_add(1);
            report.bytes = report.bytes.saturating_add(len);
            let kind_count = report.kinds.entry(record.kind()).or_insert(0);
            *kind_count = kind_count.saturating_add(1);
            let summary = writers
                .entry(record.writer())
                .or_insert_with(|| WriterSummary {
                    writer: record.writer(),
                    head_seq: 0,
                    head_hash: record.stored_hash(),
                    records: 0,
                    bytes: 0,
                    kinds: BTreeMap::new(),
                    closed: false,
                });
            summary.records = summary.records.saturating_add(1);
            summary.bytes = summary.bytes.saturating_add(len);
            let count = summary.kinds.entry(record.kind()).or_insert(0);
            *count = count.saturating_add(1);
            if record.seq() >= summary.head_seq {
                summary.head_seq = record.seq();
                summary.head_hash = record.stored_hash();
            }
            summary.closed |= record.kind() == RecordKind::WriterClose;
        }
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::TornTail { offset, problem } => report.problems.push(format!(
                "{}: {problem} at offset {offset} to the end (an interrupted append; cut on next open)",
                path.display()
            )),
            ScanEnd::Corrupt { offset, detail } => {
                report.problems.push(format!("{}: corruption at offset {offset}: {detail}", path.display()));
            }
        }
    }
    report.writers = writers.into_values().collect();
    Ok(report)
}

/// Options of [`verify_with`].
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Certificate validity time.
    pub validity: Validity,
    /// Heads known from an authenticated source (e.g. a sync report): fewer records is
    /// truncation, a different hash is a fork.
    pub expected_heads: Vec<Head>,
    /// Revoked writers.
    pub revoked: Vec<WriterId>,
}

/// What [`verify`] checked.
#[derive(Clone, Debug)]
pub struct VerifySummary {
    /// The capsule id.
    pub capsule: CapsuleId,
    /// The capsule name.
    pub name: String,
    /// Records verified.
    pub records: u64,
    /// Record bytes verified.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Heads of every writer.
    pub heads: Vec<Head>,
    /// Writers that closed their chain.
    pub closed_writers: usize,
    /// Start of an interrupted append at the end of the last segment (not a failure: such bytes
    /// were never acknowledged; the store cuts them on open).
    pub torn_tail: Option<Location>,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "OK: capsule {} ({})", self.capsule, self.name)?;
        writeln!(
            f,
            "verified {} records ({} bytes) from {} writers in {} segments; {} writers closed",
            self.records,
            self.bytes,
            self.heads.len(),
            self.segments,
            self.closed_writers
        )?;
        for head in &self.heads {
            writeln!(
                f,
                "  writer {} head seq {} hash {}",
                head.writer,
                head.seq,
                head.hash.short()
            )?;
        }
        if let Some(torn) = &self.torn_tail {
            writeln!(
                f,
                "note: interrupted append at {torn} (never acknowledged; cut on next open)"
            )?;
        }
        Ok(())
    }
}

/// What failed in a [`verify`].
#[derive(Debug)]
pub enum VerifyFailureKind {
    /// The directory, metadata or a segment could not be read or is damaged.
    Store(StoreError),
    /// A record refused by the verifier.
    Record(VerifyError),
    /// The same record stored twice (the store never writes duplicates).
    Duplicate,
    /// Two validly signed records for one writer and sequence number.
    Fork(Box<ForkEvidence>),
}

/// The first failure found by [`verify`], with its location.
#[derive(Debug)]
pub struct VerifyFailure {
    /// Where (`None` for whole-store failures such as truncation against expected heads).
    pub location: Option<Location>,
    /// The writer involved.
    pub writer: Option<WriterId>,
    /// The sequence number involved.
    pub seq: Option<u64>,
    /// What failed (boxed: failures are rare and the variants are large).
    pub kind: Box<VerifyFailureKind>,
}

impl VerifyFailure {
    /// A short stable name of the failure class (`bad-signature`, `gap`, `fork`, ...).
    pub fn class(&self) -> &'static str {
        match &*self.kind {
            VerifyFailureKind::Store(StoreError::Corruption { .. }) => "corruption",
            VerifyFailureKind::Store(_) => "store",
            VerifyFailureKind::Record(error) => error.class(),
            VerifyFailureKind::Duplicate => "duplicate",
            VerifyFailureKind::Fork(_) => "fork",
        }
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FAILED ({})", self.class())?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        if let (Some(writer), Some(seq)) = (self.writer, self.seq) {
            write!(f, ", writer {writer} seq {seq}")?;
        }
        match &*self.kind {
            VerifyFailureKind::Store(error) => write!(f, ": {error}"),
            VerifyFailureKind::Record(error) => write!(f, ": {error}"),
            VerifyFailureKind::Duplicate => write!(f, ": the same record is stored twice"),
            VerifyFailureKind::Fork(evidence) => write!(
                f,
                ": fork, two signed records with hashes {} and {}",
                evidence.first.hash, evidence.second.hash
            ),
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// Verifies the whole store in `dir` with certificate validity at `now_s`.
pub fn verify(dir: impl AsRef<Path>, now_s: u64) -> Result<VerifySummary, VerifyFailure> {
    let options = VerifyOptions {
        validity: Validity::At(now_s),
        expected_heads: Vec::new(),
        revoked: Vec::new(),
    };
    verify_with(dir, &options)
}

fn store_failure(error: StoreError) -> VerifyFailure {
    let location = match &error {
        StoreError::Corruption { path, offset, .. } => Some(Location {
            file: path.clone(),
            offset: *offset,
        }),
        _ => None,
    };
    VerifyFailure {
        location,
        writer: None,
        seq: None,
        kind: Box::new(VerifyFailureKind::Store(error)),
    }
}

/// Where a record was first seen, for reordering and fork evidence.
#[derive(Clone)]
struct Seen {
    ordinal: u64,
    file: PathBuf,
    offset: u64,
    frame_len: u32,
}

/// [`verify`] with options.
pub fn verify_with(
    dir: impl AsRef<Path>,
    options: &VerifyOptions,
) -> Result<VerifySummary, VerifyFailure> {
    let dir = dir.as_ref();
    let metadata = segment::read_metadata(dir).map_err(store_failure)?;
    let segments = segment::list_segments(dir).map_err(store_failure)?;
    let last = segments.len();
    // Pass 1: framing, and where each (writer, seq) first appears.
    let mut seen: HashMap<(WriterId, u64), Seen> = HashMap::new();
    let mut ordinal = 0u64;
    let mut torn_tail = None;
    for (position, (index, path)) in segments.iter().enumerate() {
        let body = segment::read_segment(path, &metadata.id(), *index).map_err(store_failure)?;
        let scan = frame::scan(&body, SEGMENT_HEADER_BYTES);
        for scanned in &scan.frames {
            seen.entry((scanned.record.writer(), scanned.record.seq()))
                .or_insert(Seen {
                    ordinal,
                    file: path.clone(),
                    offset: scanned.offset,
                    frame_len: scanned.frame_len,
                });
            ordinal = ordinal.saturating_add(1);
        }
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::TornTail { offset, .. } if position.saturating_add(1) == last => {
                torn_tail = Some(Location {
                    file: path.clone(),
                    offset,
                });
            }
            ScanEnd::TornTail { offset, problem } => {
                return Err(store_failure(StoreError::Corruption {
                    path: path.clone(),
                    offset,
                    detail: format!("{problem} at the end of a segment that is not the last"),
                }));
            }
            ScanEnd::Corrupt { offset, detail } => {
                return Err(store_failure(StoreError::Corruption {
                    path: path.clone(),
                    offset,
                    detail,
                }));
            }
        }
    }
    // Pass 2: verification in stored order.
    let mut verifier = CapsuleVerifier::new(metadata.clone());
    verifier.set_revoked(options.revoked.iter().copied());
    let mut summary = VerifySummary {
        capsule: metadata.id(),
        name: metadata.name().to_string(),
        records: 0,
        bytes: 0,
        segments: segments.len(),
        heads: Vec::new(),
        closed_writers: 0,
        torn_tail,
    };
    let mut ordinal = 0u64;
    for (index, path) in &segments {
        let body = segment::read_segment(path, &metadata.id(), *index).map_err(store_failure)?;
        let scan = frame::scan(&body, SEGMENT_HEADER_BYTES);
        for chunk in scan.frames.chunks(1024) {
            let records: Vec<SealedRecord> =
                chunk.iter().map(|scanned| scanned.record.clone()).collect();
            let results = verifier.verify_batch(&records, options.validity);
            for (scanned, result) in chunk.iter().zip(results) {
                let location = Location {
                    file: path.clone(),
                    offset: scanned.offset,
                };
                let record = &scanned.record;
                let failure = |kind| VerifyFailure {
                    location: Some(location.clone()),
                    writer: Some(record.writer()),
                    seq: Some(record.seq()),
                    kind: Box::new(kind),
                };
                match result {
                    Ok(Verdict::Accepted(_)) => {}
                    Ok(Verdict::Duplicate { .. }) => {
                        return Err(failure(VerifyFailureKind::Duplicate));
                    }
                    Err(error) => return Err(failure(explain(error, record, ordinal, &seen))),
                }
                summary.records = summary.records.saturating_add(1);
                summary.bytes = summary.bytes.saturating_add(record.len() as u64);
                ordinal = ordinal.saturating_add(1);
            }
        }
    }
    if let Err(error) = verifier.check_heads(&options.expected_heads) {
        let (writer, seq) = match &error {
            VerifyError::Truncated {
                writer, expected, ..
            } => (Some(*writer), Some(*expected)),
            VerifyError::HeadMismatch { writer, seq } => (Some(*writer), Some(*seq)),
            _ => (None, None),
        };
        return Err(VerifyFailure {
            location: None,
            writer,
            seq,
            kind: Box::new(VerifyFailureKind::Record(error)),
        });
    }
    summary.heads = verifier.heads();
    summary.closed_writers = summary
        .heads
        .iter()
        .filter(|head| verifier.closed_at(&head.writer).is_some())
        .count();
    Ok(summary)
}

/// Turns a verifier error into the most specific failure, using the whole log: a gap whose
/// missing record appears later is reordering; a fork gets full evidence.
fn explain(
    error: VerifyError,
    record: &SealedRecord,
    ordinal: u64,
    seen: &HashMap<(WriterId, u64), Seen>,
) -> VerifyFailureKind {
    let writer = record.writer();
    let later = |seq: u64| {
        seen.get(&(writer, seq))
            .is_some_and(|at| at.ordinal > ordinal)
    };
    match error {
        VerifyError::Gap { ref missing, .. } if later(missing.start) => {
            VerifyFailureKind::Record(VerifyError::Reordered {
                writer,
                seq: record.seq(),
                expected: missing.start,
            })
        }
        VerifyError::UnknownWriter { seq, .. } if seq > 0 && later(0) => {
            VerifyFailureKind::Record(VerifyError::Reordered {
                writer,
                seq,
                expected: 0,
            })
        }
        VerifyError::Fork {
            ref conflicting, ..
        } => match seen.get(&(writer, record.seq())).and_then(read_seen) {
            Some(first) => VerifyFailureKind::Fork(Box::new(ForkEvidence {
                first: first.signed_header(),
                second: (**conflicting).clone(),
            })),
            None => VerifyFailureKind::Record(error),
        },
        other => VerifyFailureKind::Record(other),
    }
}

fn read_seen(at: &Seen) -> Option<SealedRecord> {
    let file = File::open(&at.file).ok()?;
    let mut buffer = vec![0u8; usize::try_from(at.frame_len).ok()?];
    file.read_exact_at(&mut buffer, at.offset).ok()?;
    let raw = frame::parse_frame(&buffer).ok()?;
    SealedRecord::decode(raw.record).ok()
}

//! Record stores for DataCapsule records.
//!
//! [`RecordStore`] is the one interface the rest of PSL uses to keep sealed records: append a
//! batch with a [`Durability`] policy, read a writer's records by sequence range, list writers
//! and heads. [`DirStore`] is the embedded implementation, a crash-safe directory of segmented
//! append-only files; the cluster mode will add a NATS JetStream implementation of the same
//! trait.
//!
//! A store is *untrusted storage*: it never holds the data key and never decrypts. It does check
//! what it can with public keys (capsule id, hash, writer certificate, signature, chain), so a
//! stranger cannot fill it with records that would block the real ones, and it accepts a valid
//! record from anyone (DESIGN 4.8, "seen but not durable"). Readers must still verify.
//!
//! [`inspect`] and [`verify`] are the read-only audit functions behind `psl capsule inspect` and
//! `psl capsule verify`.
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests may panic on failure"
    )
)]

mod audit;
mod dir;
mod error;
mod frame;
mod segment;

use std::ops::Range;

use psl_capsule::{CapsuleMetadata, Head, SealedRecord, WriterId};

pub use audit::{
    InspectReport, Location, VerifyFailure, VerifyFailureKind, VerifyOptions, VerifySummary,
    WriterSummary, inspect, verify, verify_with,
};
pub use dir::{DirStore, OpenReport, STORE_WRITERS_MAX, StoreOptions};
pub use error::StoreError;
pub use frame::{FRAME_HEADER_BYTES, FRAME_MAGIC};

/// The frame of one record as stored in a segment (for tools, tests and fuzzing).
pub fn encode_frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len().saturating_add(FRAME_HEADER_BYTES));
    frame::encode_frame(record, &mut out);
    out
}

/// The 48-byte header of segment `index` of `capsule`.
pub fn segment_header(capsule: &psl_capsule::CapsuleId, index: u64) -> Vec<u8> {
    segment::segment_header(capsule, index)
}
pub use segment::{SEGMENT_BYTES_TARGET, SEGMENT_FILE_BYTES_MAX};

/// Most records one `read_range` call returns.
pub const READ_RECORDS_MAX: usize = 4096;
/// Most bytes of records one `read_range` call returns (at least one record is returned).
pub const READ_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most bytes of records one `append` call accepts.
pub const APPEND_BYTES_MAX: usize = 16 * 1024 * 1024;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before returning, once per append call.
    Always,
    /// Group commit: concurrent appenders share one `fdatasync`; returns once durable.
    Batch,
    /// Written to the OS only (survives a process crash, not a power loss). Tests and benches.
    Never,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Records newly written.
    pub appended: usize,
    /// Records already present with the same hash (idempotent, skipped).
    pub duplicates: usize,
}

/// A store of sealed records for one capsule. Synchronous and object safe.
pub trait RecordStore: Send + Sync {
    /// The capsule metadata the store was created with.
    fn metadata(&self) -> &CapsuleMetadata;

    /// Appends records in order. Each must be the next record of its writer (or already present
    /// with the same hash: then it is skipped). Every record that verifies is written (and made
    /// durable per `durability`); if any was refused, the error names the first one.
    fn append(
        &self,
        records: &[SealedRecord],
        durability: Durability,
    ) -> Result<AppendReport, StoreError>;

    /// Records of `writer` with sequence numbers in `seqs`, in order: a prefix of the range
    /// limited by what exists, [`READ_RECORDS_MAX`] and [`READ_BYTES_MAX`].
    fn read_range(
        &self,
        writer: WriterId,
        seqs: Range<u64>,
    ) -> Result<Vec<SealedRecord>, StoreError>;

    /// The head of every writer, sorted by writer id.
    fn heads(&self) -> Result<Vec<Head>, StoreError>;

    /// Every writer with at least one record, sorted.
    fn writers(&self) -> Result<Vec<WriterId>, StoreError>;
}

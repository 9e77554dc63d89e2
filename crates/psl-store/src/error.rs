//! The store's error type. Every variant says where (file and offset) or which record.

use std::path::PathBuf;

use psl_capsule::{DecodeError, ForkEvidence, VerifyError, WriterId};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An IO operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An earlier `fsync` or write failed; the store refuses further work (its durable state is
    /// unknown). Reopen it to recover from what is on disk.
    #[error("store is poisoned by an earlier IO failure; reopen it")]
    Poisoned,
    /// Another process (or handle) holds the directory lock.
    #[error("store {0} is locked by another process")]
    Locked(PathBuf),
    /// The directory holds no capsule metadata file.
    #[error("{0} is not a capsule store (no capsule.meta)")]
    NotAStore(PathBuf),
    /// The directory already holds a store.
    #[error("{0} already holds a capsule store")]
    AlreadyExists(PathBuf),
    /// The metadata file is unreadable.
    #[error("metadata {path}: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// Bytes in the middle of the log are damaged; nothing was dropped.
    #[error("corruption in {path} at offset {offset}: {detail}")]
    Corruption {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A record was refused. Every record of the batch that verified was still appended.
    #[error(
        "record {index} of the batch refused ({appended} records of the batch appended): {source}"
    )]
    Rejected {
        /// Index in the batch.
        index: usize,
        /// Records of the batch that were appended.
        appended: usize,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// A different record with the same writer and sequence number is already stored.
    #[error("record {index} of the batch equivocates: writer {} seq {} already stored with another hash", .evidence.first.header.writer, .evidence.first.header.seq)]
    Fork {
        /// Index in the batch.
        index: usize,
        /// Both signed headers.
        evidence: Box<ForkEvidence>,
    },
    /// More bytes than [`crate::APPEND_BYTES_MAX`] in one append.
    #[error("append of {len} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A writer id the store does not know.
    #[error("unknown writer {0}")]
    UnknownWriter(WriterId),
}

pub(crate) fn io(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

//! Error types for decoding, sealing and opening. Verification errors live in [`crate::verify`].
//!
//! Every variant names what was being processed so a caller can log a useful reason.

use crate::ids::WriterId;

/// Malformed bytes: the input does not follow the canonical encoding or exceeds a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before `what` was complete.
    #[error("truncated {what} at byte {offset}: needed {needed} bytes, {available} available")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Offset of the field in the input.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length or count exceeds its limit.
    #[error("{what} too large: {len} exceeds the limit of {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// The length or count found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes were left over after a complete structure.
    #[error("{extra} trailing bytes after {what}")]
    TrailingBytes {
        /// The structure.
        what: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },
    /// A format version this build does not read.
    #[error("unsupported {what} format version {version}")]
    UnsupportedVersion {
        /// The structure.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A cipher suite this build does not know.
    #[error("unknown cipher suite {0}")]
    UnknownSuite(u8),
    /// A record kind byte this build does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// An update operation byte this build does not know.
    #[error("unknown update operation {op} in update {index}")]
    UnknownUpdateOp {
        /// The byte found.
        op: u8,
        /// Index of the update in its batch.
        index: usize,
    },
    /// A field has a value the format forbids.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why it is invalid.
        reason: &'static str,
    },
}

/// Sealing a record failed. These are caller errors (bad arguments), never data corruption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext body exceeds [`crate::limits::BODY_PLAINTEXT_BYTES_MAX`].
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More links than [`crate::limits::LINKS_MAX`], a link to the writer itself, or two links
    /// to the same writer.
    #[error("invalid links: {0}")]
    InvalidLinks(&'static str),
    /// The Lamport time did not increase.
    #[error("lamport time {given} is not greater than the previous {previous}")]
    LamportNotIncreasing {
        /// The previous record's Lamport time.
        previous: u64,
        /// The Lamport time given.
        given: u64,
    },
    /// Genesis records are produced by [`crate::CapsuleWriter::start`] only.
    #[error("record kind {0} cannot be sealed by the caller")]
    KindNotSealable(&'static str),
    /// The writer was closed by a `WriterClose` record and seals nothing more.
    #[error("writer {0} is closed")]
    WriterClosed(WriterId),
    /// The sequence number space of this writer is exhausted.
    #[error("writer {0} has no sequence numbers left")]
    SequenceExhausted(WriterId),
    /// The certificate does not match this writer or capsule.
    #[error("certificate does not match: {0}")]
    CertificateMismatch(&'static str),
    /// An update batch could not be encoded.
    #[error("update batch: {0}")]
    Updates(#[from] DecodeError),
    /// The AEAD refused to seal (only for impossible lengths).
    #[error("AEAD seal failed")]
    Aead,
    /// The crypto pool is shut down or a worker thread died.
    #[error("crypto pool unavailable")]
    PoolUnavailable,
}

/// Opening (decrypting) a record body failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The AEAD tag did not verify: wrong data key, or the ciphertext or header was altered.
    #[error("body of writer {writer} seq {seq} failed authentication (wrong key or tampered)")]
    Authentication {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// Genesis bodies are not encrypted; read the certificate instead.
    #[error("genesis record of writer {0} has no encrypted body")]
    NotEncrypted(WriterId),
    /// The subkey belongs to another writer or capsule.
    #[error("subkey is for another writer or capsule")]
    WrongSubkey,
}

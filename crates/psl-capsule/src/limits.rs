//! Every size and count limit of the DataCapsule formats, in one place.
//!
//! Decoders check these *before* allocating, so a hostile length field can never make us reserve
//! more memory than the limit. Changing a limit that narrows what is accepted is a format change
//! (see `docs/formats.md`); widening one must be coordinated with every reader.

/// Largest encoded record (header + ciphertext + hash + signature), in bytes: 4 MiB.
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most links to other writers' heads that one record header may carry.
pub const LINKS_MAX: usize = 16;

/// Largest plaintext body a record may carry, in bytes (leaves room for the largest header).
pub const BODY_PLAINTEXT_BYTES_MAX: usize = RECORD_BYTES_MAX - 64 * 1024;

/// Largest key in an update batch, in bytes: 4 KiB.
pub const UPDATE_KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest value in an update batch, in bytes: 1 MiB.
pub const UPDATE_VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Most updates in one batch (one record body).
pub const UPDATES_PER_BATCH_MAX: usize = 65_536;

/// Longest capsule (application) name, in bytes of UTF-8.
pub const CAPSULE_NAME_BYTES_MAX: usize = 256;

/// Largest encoded capsule metadata, in bytes.
pub const METADATA_BYTES_MAX: usize = 1024;

/// Default number of recent record hashes a verifier remembers per writer to tell duplicates,
/// replays and forks apart. Older records can still be verified, but only against the chain.
pub const VERIFIER_HASH_WINDOW_DEFAULT: usize = 65_536;

/// Default number of distinct writers one verifier tracks before refusing new ones.
pub const VERIFIER_WRITERS_MAX_DEFAULT: usize = 65_536;

/// Most records a [`crate::CryptoPool`] call seals at once.
pub const POOL_BATCH_RECORDS_MAX: usize = 4096;

/// Most worker threads in a [`crate::CryptoPool`].
pub const POOL_THREADS_MAX: usize = 64;

/// Most writers in one signed revocation list.
pub const REVOKED_WRITERS_MAX: usize = 65_536;

//! DataCapsule formats and cryptography for PSL.
//!
//! A DataCapsule is an append-only log made of per-writer hash chains: every record is sealed
//! (AES-256-GCM with the encoded header as associated data), hashed (BLAKE3) and signed (Ed25519)
//! by the writer incarnation that produced it. This crate owns
//!
//! * the canonical, versioned, hand-written binary encodings ([`CapsuleMetadata`],
//!   [`WriterCertificate`], [`RevocationList`], [`SealedRecord`], the [`body`] update-batch
//!   codec),
//! * the cipher suite ([`suite`]) and key handling ([`keys`]),
//! * producing records ([`CapsuleWriter`], [`CryptoPool`]) and checking them ([`CapsuleVerifier`]).
//!
//! It deliberately does **no IO**, reads **no clock** and draws **no randomness**: keys come in as
//! seed bytes and the time as a `now_s` argument, so every function here is deterministic and can
//! run inside a simulator. Nothing in this crate panics on untrusted bytes: every decoder returns a
//! typed error, and the crate is linted against `unwrap`, `expect`, `panic`, indexing and
//! unchecked arithmetic.
//!
//! The byte layouts and the reasoning behind them are documented in `docs/formats.md`.
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

pub mod body;
pub mod cert;
mod codec;
pub mod error;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod metadata;
pub mod pool;
pub mod record;
pub mod revocation;
pub mod suite;
pub mod testkit;
pub mod verify;
pub mod writer;

pub use body::{Update, UpdateOp, decode_updates, encode_updates};
pub use cert::{WriterCertificate, issue_certificate};
pub use error::{DecodeError, OpenError, SealError};
pub use ids::{CapsuleId, Head, RecordHash, WriterId};
pub use keys::{DataKey, OwnerKey, WriterKeyPair, WriterSubkey};
pub use metadata::{CapsuleMetadata, CreationParams};
pub use pool::{CryptoPool, SealRequest};
pub use record::{Link, RecordHeader, RecordKind, SealedRecord, SignedHeader};
pub use revocation::{RevocationError, RevocationList, issue_revocation_list};
pub use suite::CipherSuite;
pub use verify::{
    CapsuleVerifier, ForkEvidence, Validity, Verdict, VerifiedRecord, VerifierLimits, VerifyError,
};
pub use writer::{CapsuleWriter, PreparedRecord};

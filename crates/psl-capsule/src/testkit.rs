//! Deterministic keys and capsules for tests, fixtures, fuzzing and benchmarks.
//!
//! Everything is derived from a small integer seed with BLAKE3, so the same seed always gives
//! the same bytes. Never use these in production: the "secrets" are public.

use crate::cert::{WriterCertificate, issue_certificate};
use crate::ids::CapsuleId;
use crate::keys::{DataKey, OwnerKey, WriterKeyPair};
use crate::limits::RECORD_BYTES_MAX;
use crate::metadata::{CapsuleMetadata, CreationParams};

/// 32 deterministic bytes for `(label, seed)`.
pub fn seed_bytes(label: &str, seed: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("PSL DataCapsule testkit v1");
    hasher.update(label.as_bytes());
    hasher.update(&seed.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// A test capsule: owner key, metadata and data key, all from `seed`.
pub struct TestCapsule {
    /// The owner key.
    pub owner: OwnerKey,
    /// The metadata.
    pub metadata: CapsuleMetadata,
    /// The data key.
    pub data_key: DataKey,
}

impl TestCapsule {
    /// Builds the capsule named `name` from `seed` (created at time 1 700 000 000).
    pub fn new(name: &str, seed: u64) -> Self {
        let owner = OwnerKey::from_seed(&seed_bytes("owner", seed));
        let mut salt = [0u8; 16];
        salt.copy_from_slice(seed_bytes("salt", seed).get(..16).unwrap_or(&[0u8; 16]));
        let params = CreationParams {
            created_s: 1_700_000_000,
            salt,
            record_bytes_max: u32::try_from(RECORD_BYTES_MAX).unwrap_or(u32::MAX),
        };
        let metadata = match CapsuleMetadata::new(owner.public_key(), name, params) {
            Ok(metadata) => metadata,
            Err(_) => unreachable_testkit(),
        };
        let data_key = DataKey::from_bytes(seed_bytes("data key", seed));
        TestCapsule {
            owner,
            metadata,
            data_key,
        }
    }

    /// The capsule id.
    pub fn id(&self) -> CapsuleId {
        self.metadata.id()
    }

    /// A writer key pair and certificate valid from 0 to `u64::MAX`.
    pub fn writer(&self, seed: u64) -> (WriterKeyPair, WriterCertificate) {
        self.writer_valid(seed, 0, u64::MAX)
    }

    /// A writer key pair and certificate valid in `[not_before_s, not_after_s]`.
    pub fn writer_valid(
        &self,
        seed: u64,
        not_before_s: u64,
        not_after_s: u64,
    ) -> (WriterKeyPair, WriterCertificate) {
        let keys = WriterKeyPair::from_seed(&seed_bytes("writer", seed));
        let certificate = issue_certificate(
            &self.owner,
            &self.metadata,
            keys.public_key(),
            seed_bytes("measurement", seed),
            not_before_s,
            not_after_s,
        );
        (keys, certificate)
    }
}

#[allow(
    clippy::panic,
    reason = "the testkit's fixed inputs are within every limit"
)]
fn unreachable_testkit() -> ! {
    panic!("testkit metadata out of limits")
}

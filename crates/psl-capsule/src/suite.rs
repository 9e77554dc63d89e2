//! The one place that names the cipher suite and its primitives.
//!
//! Everything cryptographic in the DataCapsule (AEAD, key derivation, hashing, signatures,
//! domain-separation tags, nonce construction) is defined here and nowhere else, so changing the
//! suite is one new [`CipherSuite`] variant plus the functions it selects. The suite byte travels
//! in the capsule metadata and in every certificate, so a reader always knows which suite applies.
//!
//! This module must not hold state, read clocks or draw randomness.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;

use crate::ids::{CapsuleId, RecordHash, WriterId};

/// The cipher suite of a capsule. One variant today; the byte is carried in the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    /// AES-256-GCM (ring) for bodies, HKDF-SHA256 for per-writer subkeys, Ed25519
    /// (ed25519-dalek) for signatures, BLAKE3 (derive-key mode, one context per use) for hashes.
    Aes256GcmEd25519Blake3,
}

impl CipherSuite {
    /// The suite this version of PSL writes.
    pub const CURRENT: CipherSuite = CipherSuite::Aes256GcmEd25519Blake3;

    /// The wire byte of this suite.
    pub fn to_byte(self) -> u8 {
        match self {
            CipherSuite::Aes256GcmEd25519Blake3 => 1,
        }
    }

    /// Parses a wire byte; `None` for suites this build does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(CipherSuite::Aes256GcmEd25519Blake3),
            _ => None,
        }
    }

    /// A human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes256GcmEd25519Blake3 => "AES-256-GCM/HKDF-SHA256/Ed25519/BLAKE3",
        }
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Length of the AEAD authentication tag appended to every sealed body, in bytes.
pub const AEAD_TAG_BYTES: usize = 16;
/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// Length of an Ed25519 public key, in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;

// BLAKE3 derive-key contexts: one per use, so a hash of one kind can never be mistaken for
// another (domain separation). Changing any of these is a format change.
const CONTEXT_CAPSULE_ID: &str = "PSL DataCapsule v1 capsule id";
const CONTEXT_WRITER_ID: &str = "PSL DataCapsule v1 writer id";
const CONTEXT_BODY_DIGEST: &str = "PSL DataCapsule v1 record body digest";
const CONTEXT_RECORD_HASH: &str = "PSL DataCapsule v1 record hash";

/// Signature domain tags (prefixed to the signed message).
pub(crate) const SIGN_TAG_RECORD: &[u8] = b"PSL DataCapsule v1 record signature\0";
pub(crate) const SIGN_TAG_CERTIFICATE: &[u8] = b"PSL DataCapsule v1 writer certificate\0";
pub(crate) const SIGN_TAG_REVOCATION: &[u8] = b"PSL DataCapsule v1 revocation list\0";

// HKDF info strings.
const HKDF_INFO_WRITER_SUBKEY: &[u8] = b"PSL DataCapsule v1 writer subkey";
const HKDF_INFO_DATA_KEY: &[u8] = b"PSL DataCapsule v1 data key";
const HKDF_INFO_OWNER_KEY: &[u8] = b"PSL DataCapsule v1 owner signing key";

/// Capsule id = BLAKE3 (derive-key "capsule id") of the canonical metadata encoding.
pub(crate) fn capsule_id(metadata_bytes: &[u8]) -> CapsuleId {
    CapsuleId(blake3::derive_key(CONTEXT_CAPSULE_ID, metadata_bytes))
}

/// Writer id = first 16 bytes of BLAKE3 (derive-key "writer id") of the writer public key.
pub(crate) fn writer_id(public_key: &[u8; PUBLIC_KEY_BYTES]) -> WriterId {
    let full = blake3::derive_key(CONTEXT_WRITER_ID, public_key);
    let mut id = [0u8; 16];
    for (dst, src) in id.iter_mut().zip(full.iter()) {
        *dst = *src;
    }
    WriterId(id)
}

/// Digest of a record body (the ciphertext, or the clear certificate of a genesis record).
pub(crate) fn body_digest(body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_BODY_DIGEST);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// Record hash = BLAKE3 (derive-key "record hash") of `header bytes || body digest`.
pub(crate) fn record_hash(header_bytes: &[u8], body_digest: &[u8; 32]) -> RecordHash {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_RECORD_HASH);
    hasher.update(header_bytes);
    hasher.update(body_digest);
    RecordHash(*hasher.finalize().as_bytes())
}

/// The message a writer signs for a record: tag || hash.
pub(crate) fn record_signing_message(hash: &RecordHash) -> [u8; 68] {
    let mut message = [0u8; 68];
    let (tag, rest) = message.split_at_mut(SIGN_TAG_RECORD.len());
    tag.copy_from_slice(SIGN_TAG_RECORD);
    rest.copy_from_slice(&hash.0);
    message
}

/// The 96-bit AEAD nonce of record `seq`: the sequence number little-endian, then four zero bytes.
///
/// Unique per (subkey, seq) because every writer incarnation has its own subkey and never seals
/// two records with the same sequence number (see `docs/formats.md`, "Nonces").
pub(crate) fn nonce_for_seq(seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    for (dst, src) in nonce.iter_mut().zip(seq.to_le_bytes()) {
        *dst = src;
    }
    nonce
}

/// An AEAD key bound to one writer incarnation of one capsule.
pub(crate) struct AeadKey(LessSafeKey);

impl AeadKey {
    /// Derives the writer subkey: HKDF-SHA256(salt = capsule id, ikm = data key,
    /// info = "writer subkey" || writer id), used directly as an AES-256-GCM key.
    pub(crate) fn derive(data_key: &[u8; 32], capsule: &CapsuleId, writer: &WriterId) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &capsule.0).extract(data_key);
        let info = [HKDF_INFO_WRITER_SUBKEY, &writer.0[..]];
        // AES_256_GCM's key length (32) is far below HKDF-SHA256's 255 * 32 byte limit, so
        // `expand` cannot fail; ring reports it as Unspecified only for over-long outputs.
        let key = match prk.expand(&info, &AES_256_GCM) {
            Ok(okm) => UnboundKey::from(okm),
            Err(_) => unreachable_kdf(),
        };
        AeadKey(LessSafeKey::new(key))
    }

    /// Seals `in_out` in place with `aad` and returns the 16-byte tag.
    pub(crate) fn seal(
        &self,
        seq: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; AEAD_TAG_BYTES], ()> {
        let nonce = Nonce::assume_unique_for_key(nonce_for_seq(seq));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
            .map_err(|_| ())?;
        let mut out = [0u8; AEAD_TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens `ciphertext` (with tag) and returns the plaintext.
    pub(crate) fn open(&self, seq: u64, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, ()> {
        let nonce = Nonce::assume_unique_for_key(nonce_for_seq(seq));
        let mut buffer = ciphertext.to_vec();
        let plain_len = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buffer)
            .map_err(|_| ())?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

/// 32 bytes of HKDF output.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn hkdf_32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let parts = [info];
    let mut out = [0u8; 32];
    match prk.expand(&parts, Len32).and_then(|okm| okm.fill(&mut out)) {
        Ok(()) => out,
        Err(_) => unreachable_kdf(),
    }
}

/// Derives the capsule data key from the application root secret and the capsule id.
pub(crate) fn derive_data_key(root_secret: &[u8; 32], capsule: &CapsuleId) -> [u8; 32] {
    hkdf_32(&capsule.0, root_secret, HKDF_INFO_DATA_KEY)
}

/// Derives the owner signing-key seed from the application root secret.
pub(crate) fn derive_owner_seed(root_secret: &[u8; 32]) -> [u8; 32] {
    hkdf_32(&[], root_secret, HKDF_INFO_OWNER_KEY)
}

/// HKDF-SHA256 with a 32-byte output cannot fail (the limit is 8160 bytes). Reaching this is a
/// bug in ring, not something input can cause, so it is a trusted-state assertion.
#[allow(
    clippy::panic,
    reason = "trusted invariant: HKDF with a 32-byte output cannot fail"
)]
fn unreachable_kdf() -> ! {
    panic!("HKDF-SHA256 expand of 32 bytes failed")
}

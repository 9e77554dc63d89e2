//! Key material: the owner signing key, writer key pairs, the capsule data key and per-writer
//! AEAD subkeys.
//!
//! Keys are built from caller-supplied seed bytes (this crate draws no randomness); secret bytes
//! are zeroized on drop. Nothing here encodes or stores keys on disk.

use ed25519_dalek::{Signer, SigningKey};
use zeroize::Zeroizing;

use crate::ids::{CapsuleId, WriterId};
use crate::suite::{self, AeadKey};

/// The capsule owner's (application admin's) Ed25519 signing key. It issues writer certificates.
pub struct OwnerKey(SigningKey);

impl OwnerKey {
    /// Builds the key from a 32-byte secret seed (draw it from a CSPRNG).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        OwnerKey(SigningKey::from_bytes(seed))
    }

    /// Derives the owner key from the application root secret (HKDF-SHA256, info
    /// "PSL DataCapsule v1 owner signing key").
    pub fn from_root_secret(root_secret: &[u8; 32]) -> Self {
        let seed = Zeroizing::new(suite::derive_owner_seed(root_secret));
        OwnerKey(SigningKey::from_bytes(&seed))
    }

    /// The public key that goes into the capsule metadata.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnerKey(public {})", hex::encode(self.public_key()))
    }
}

/// One writer incarnation's Ed25519 key pair. Generate a fresh one at every worker start.
pub struct WriterKeyPair {
    signing: SigningKey,
    id: WriterId,
}

impl WriterKeyPair {
    /// Builds the key pair from a 32-byte secret seed (draw it from a CSPRNG at every start).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let id = suite::writer_id(&signing.verifying_key().to_bytes());
        WriterKeyPair { signing, id }
    }

    /// The public key that goes into the certificate.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The writer id derived from the public key.
    pub fn writer_id(&self) -> WriterId {
        self.id
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for WriterKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriterKeyPair({})", self.id)
    }
}

/// Derives a writer id from a writer public key (what certificates and headers carry).
pub fn writer_id_of(public_key: &[u8; 32]) -> WriterId {
    suite::writer_id(public_key)
}

/// The capsule data-encryption key (32 bytes). Only enclaves hold it; stores never do.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// Derives the data key of `capsule` from the application root secret
    /// (HKDF-SHA256, salt = capsule id, info "PSL DataCapsule v1 data key").
    pub fn from_root_secret(root_secret: &[u8; 32], capsule: &CapsuleId) -> Self {
        DataKey(Zeroizing::new(suite::derive_data_key(root_secret, capsule)))
    }

    /// The raw key bytes. Only for delivering the key to an attested enclave (the trust layer
    /// seals it to the enclave's channel key); never log, store or send them in the clear.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives the AEAD subkey of one writer incarnation.
    pub fn writer_subkey(&self, capsule: &CapsuleId, writer: &WriterId) -> WriterSubkey {
        WriterSubkey {
            capsule: *capsule,
            writer: *writer,
            key: AeadKey::derive(&self.0, capsule, writer),
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// The AES-256-GCM key of one writer incarnation in one capsule:
/// HKDF-SHA256(salt = capsule id, ikm = data key, info = "writer subkey" || writer id).
pub struct WriterSubkey {
    pub(crate) capsule: CapsuleId,
    pub(crate) writer: WriterId,
    pub(crate) key: AeadKey,
}

impl WriterSubkey {
    /// The writer this subkey belongs to.
    pub fn writer(&self) -> WriterId {
        self.writer
    }
}

impl std::fmt::Debug for WriterSubkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriterSubkey({})", self.writer)
    }
}

//! Writer certificates: the capsule owner's signed statement that a writer public key (one
//! writer incarnation) may append to a capsule, with its attestation measurement and validity.
//!
//! Layout (194 bytes, integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (1) |
//! | 1 | cipher suite |
//! | 32 | capsule id |
//! | 16 | writer id (must equal the id derived from the public key) |
//! | 32 | writer Ed25519 public key |
//! | 32 | measurement (filled by attestation; zero when not attested) |
//! | 8 | `not_before_s` |
//! | 8 | `not_after_s` (inclusive) |
//! | 64 | owner Ed25519 signature over tag `PSL DataCapsule v1 writer certificate\0` and the 130
//!   bytes above |
//!
//! This module checks signatures and bindings but owns no policy: revocation lists and the
//! current time come from the caller.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::ids::{CapsuleId, WriterId};
use crate::keys::OwnerKey;
use crate::metadata::CapsuleMetadata;
use crate::suite::{self, CipherSuite, SIGN_TAG_CERTIFICATE};

/// Format version of the certificate encoding.
pub const CERTIFICATE_VERSION: u8 = 1;
/// Encoded size of a certificate, in bytes.
pub const CERTIFICATE_BYTES: usize = 194;
const SIGNED_BYTES: usize = CERTIFICATE_BYTES - 64;

/// A writer certificate. Decoding checks only the layout; [`WriterCertificate::check`] checks
/// the signature and bindings.
#[derive(Clone, PartialEq, Eq)]
pub struct WriterCertificate {
    /// The cipher suite.
    pub suite: CipherSuite,
    /// The capsule the writer may append to.
    pub capsule: CapsuleId,
    /// The writer id.
    pub writer: WriterId,
    /// The writer's Ed25519 public key.
    pub writer_public_key: [u8; 32],
    /// Attestation measurement of the writer's enclave (zero if not attested).
    pub measurement: [u8; 32],
    /// First second (Unix time) the certificate is valid.
    pub not_before_s: u64,
    /// Last second (Unix time, inclusive) the certificate is valid.
    pub not_after_s: u64,
    /// The owner's signature.
    pub owner_signature: [u8; 64],
}

impl std::fmt::Debug for WriterCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterCertificate")
            .field("capsule", &self.capsule)
            .field("writer", &self.writer)
            .field("measurement", &hex::encode(self.measurement))
            .field("not_before_s", &self.not_before_s)
            .field("not_after_s", &self.not_after_s)
            .finish_non_exhaustive()
    }
}

/// Why a certificate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The owner signature does not verify under the capsule's owner key.
    #[error("owner signature does not verify")]
    BadOwnerSignature,
    /// The certificate names another capsule.
    #[error("certificate is for capsule {0}")]
    OtherCapsule(CapsuleId),
    /// The writer id is not the one derived from the public key.
    #[error("writer id does not match the public key")]
    WriterIdMismatch,
    /// The writer public key is not a valid or is a weak (small-order) Ed25519 key.
    #[error("writer public key is invalid or weak")]
    BadWriterKey,
    /// The owner public key in the metadata is not a valid Ed25519 key.
    #[error("owner public key is invalid")]
    BadOwnerKey,
    /// The suite differs from the capsule's.
    #[error("certificate suite differs from the capsule's")]
    SuiteMismatch,
    /// `now` is before `not_before_s`.
    #[error("not valid before {not_before_s} (now {now_s})")]
    NotYetValid {
        /// Start of validity.
        not_before_s: u64,
        /// The time checked.
        now_s: u64,
    },
    /// `now` is after `not_after_s`.
    #[error("expired at {not_after_s} (now {now_s})")]
    Expired {
        /// End of validity.
        not_after_s: u64,
        /// The time checked.
        now_s: u64,
    },
}

impl WriterCertificate {
    fn signed_bytes(&self) -> [u8; SIGNED_BYTES] {
        let mut out = [0u8; SIGNED_BYTES];
        let parts: [&[u8]; 8] = [
            &[CERTIFICATE_VERSION, self.suite.to_byte()],
            &self.capsule.0,
            &self.writer.0,
            &self.writer_public_key,
            &self.measurement,
            &self.not_before_s.to_le_bytes(),
            &self.not_after_s.to_le_bytes(),
            &[],
        ];
        let mut iter = out.iter_mut();
        for byte in parts.iter().flat_map(|part| part.iter()) {
            if let Some(dst) = iter.next() {
                *dst = *byte;
            }
        }
        out
    }

    fn signing_message(&self) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(SIGN_TAG_CERTIFICATE.len().saturating_add(SIGNED_BYTES));
        message.extend_from_slice(SIGN_TAG_CERTIFICATE);
        message.extend_from_slice(&self.signed_bytes());
        message
    }

    /// The canonical encoding ([`CERTIFICATE_BYTES`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CERTIFICATE_BYTES);
        out.extend_from_slice(&self.signed_bytes());
        out.extend_from_slice(&self.owner_signature);
        out
    }

    /// Decodes the canonical encoding (layout only; call [`Self::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != CERTIFICATE_BYTES {
            return Err(DecodeError::Invalid {
                what: "writer certificate",
                reason: "must be exactly 194 bytes",
            });
        }
        let mut reader = Reader::new(bytes);
        let version = reader.u8("certificate version")?;
        if version != CERTIFICATE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "writer certificate",
                version,
            });
        }
        let suite_byte = reader.u8("certificate suite")?;
        let suite =
            CipherSuite::from_byte(suite_byte).ok_or(DecodeError::UnknownSuite(suite_byte))?;
        let certificate = WriterCertificate {
            suite,
            capsule: CapsuleId(reader.array("certificate capsule id")?),
            writer: WriterId(reader.array("certificate writer id")?),
            writer_public_key: reader.array("writer public key")?,
            measurement: reader.array("measurement")?,
            not_before_s: reader.u64("not_before_s")?,
            not_after_s: reader.u64("not_after_s")?,
            owner_signature: reader.array("owner signature")?,
        };
        reader.finish("writer certificate")?;
        Ok(certificate)
    }

    /// Checks the owner signature, the capsule binding and the writer-id binding, ignoring time.
    /// Returns the writer's verifying key.
    pub fn check_binding(
        &self,
        metadata: &CapsuleMetadata,
    ) -> Result<VerifyingKey, CertificateError> {
        if self.suite != metadata.suite() {
            return Err(CertificateError::SuiteMismatch);
        }
        if self.capsule != metadata.id() {
            return Err(CertificateError::OtherCapsule(self.capsule));
        }
        if suite::writer_id(&self.writer_public_key) != self.writer {
            return Err(CertificateError::WriterIdMismatch);
        }
        let owner = VerifyingKey::from_bytes(&metadata.owner_public_key())
            .map_err(|_| CertificateError::BadOwnerKey)?;
        owner
            .verify_strict(
                &self.signing_message(),
                &Signature::from_bytes(&self.owner_signature),
            )
            .map_err(|_| CertificateError::BadOwnerSignature)?;
        let writer = VerifyingKey::from_bytes(&self.writer_public_key)
            .map_err(|_| CertificateError::BadWriterKey)?;
        if writer.is_weak() {
            return Err(CertificateError::BadWriterKey);
        }
        Ok(writer)
    }

    /// Checks validity at `now_s` (inclusive bounds).
    pub fn check_validity(&self, now_s: u64) -> Result<(), CertificateError> {
        if now_s < self.not_before_s {
            return Err(CertificateError::NotYetValid {
                not_before_s: self.not_before_s,
                now_s,
            });
        }
        if now_s > self.not_after_s {
            return Err(CertificateError::Expired {
                not_after_s: self.not_after_s,
                now_s,
            });
        }
        Ok(())
    }

    /// [`Self::check_binding`] and [`Self::check_validity`] together.
    pub fn check(
        &self,
        metadata: &CapsuleMetadata,
        now_s: u64,
    ) -> Result<VerifyingKey, CertificateError> {
        let key = self.check_binding(metadata)?;
        self.check_validity(now_s)?;
        Ok(key)
    }
}

/// Issues a certificate for `writer_public_key`, signed by the capsule owner.
///
/// The trust layer (the manager) calls this after the writer's enclave passed attestation and
/// passes the verified measurement; tests may pass zeros.
pub fn issue_certificate(
    owner: &OwnerKey,
    metadata: &CapsuleMetadata,
    writer_public_key: [u8; 32],
    measurement: [u8; 32],
    not_before_s: u64,
    not_after_s: u64,
) -> WriterCertificate {
    let mut certificate = WriterCertificate {
        suite: metadata.suite(),
        capsule: metadata.id(),
        writer: suite::writer_id(&writer_public_key),
        writer_public_key,
        measurement,
        not_before_s,
        not_after_s,
        owner_signature: [0u8; 64],
    };
    certificate.owner_signature = owner.sign(&certificate.signing_message());
    certificate
}

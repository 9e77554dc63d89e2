//! Signed revocation lists: the capsule owner's statement that some writers may no longer
//! append. Every verifier that applies the list ([`crate::CapsuleVerifier::apply_revocations`])
//! refuses the listed writers' records, including records it would otherwise accept from a
//! known chain.
//!
//! Layout (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (1) |
//! | 1 | cipher suite |
//! | 32 | capsule id |
//! | 8 | serial (a newer list has a larger serial; lists only grow) |
//! | 4 | writer count n (<= `REVOKED_WRITERS_MAX`) |
//! | 16 n | writer ids, strictly ascending |
//! | 64 | owner Ed25519 signature over tag `PSL DataCapsule v1 revocation list\0` and the bytes above |

use ed25519_dalek::{Signature, VerifyingKey};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::ids::{CapsuleId, WriterId};
use crate::keys::OwnerKey;
use crate::limits::REVOKED_WRITERS_MAX;
use crate::metadata::CapsuleMetadata;
use crate::suite::{CipherSuite, SIGN_TAG_REVOCATION};

/// Format version of the revocation list encoding.
pub const REVOCATION_VERSION: u8 = 1;

/// A signed revocation list. Decoding checks the layout; [`Self::check`] the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// The cipher suite.
    pub suite: CipherSuite,
    /// The capsule.
    pub capsule: CapsuleId,
    /// Serial number: larger is newer.
    pub serial: u64,
    /// Revoked writers, strictly ascending.
    pub writers: Vec<WriterId>,
    /// The owner's signature.
    pub owner_signature: [u8; 64],
}

/// Why a revocation list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Names another capsule.
    #[error("revocation list is for capsule {0}")]
    OtherCapsule(CapsuleId),
    /// Suite differs from the capsule's.
    #[error("revocation list suite differs from the capsule's")]
    SuiteMismatch,
    /// The owner signature does not verify.
    #[error("revocation list owner signature does not verify")]
    BadOwnerSignature,
    /// Older than a list already applied (a rollback would un-revoke writers).
    #[error("revocation list serial {serial} is older than the applied {applied}")]
    Stale {
        /// This list's serial.
        serial: u64,
        /// The serial already applied.
        applied: u64,
    },
}

impl RevocationList {
    fn body(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(46usize.saturating_add(self.writers.len().saturating_mul(16)));
        out.push(REVOCATION_VERSION);
        out.push(self.suite.to_byte());
        out.extend_from_slice(&self.capsule.0);
        out.extend_from_slice(&self.serial.to_le_bytes());
        // issue_revocation_list and decode bound the count to REVOKED_WRITERS_MAX (< 2^32).
        let count = u32::try_from(self.writers.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for writer in &self.writers {
            out.extend_from_slice(&writer.0);
        }
        out
    }

    fn signing_message(&self) -> Vec<u8> {
        let mut message = SIGN_TAG_REVOCATION.to_vec();
        message.extend_from_slice(&self.body());
        message
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.owner_signature);
        out
    }

    /// Decodes the canonical encoding (layout only; call [`Self::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8("revocation list version")?;
        if version != REVOCATION_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "revocation list",
                version,
            });
        }
        let suite_byte = reader.u8("revocation list suite")?;
        let suite =
            CipherSuite::from_byte(suite_byte).ok_or(DecodeError::UnknownSuite(suite_byte))?;
        let capsule = CapsuleId(reader.array("revocation list capsule id")?);
        let serial = reader.u64("revocation list serial")?;
        let count = usize::try_from(reader.u32("revoked writer count")?).unwrap_or(usize::MAX);
        if count > REVOKED_WRITERS_MAX {
            return Err(DecodeError::TooLarge {
                what: "revocation list",
                len: count,
                max: REVOKED_WRITERS_MAX,
            });
        }
        let mut writers: Vec<WriterId> = Vec::with_capacity(count.min(reader.remaining() / 16));
        for _ in 0..count {
            let writer = WriterId(reader.array("revoked writer id")?);
            if writers.last().is_some_and(|last| *last >= writer) {
                return Err(DecodeError::Invalid {
                    what: "revocation list",
                    reason: "writer ids must be strictly ascending",
                });
            }
            writers.push(writer);
        }
        let owner_signature = reader.array("revocation list signature")?;
        reader.finish("revocation list")?;
        Ok(RevocationList {
            suite,
            capsule,
            serial,
            writers,
            owner_signature,
        })
    }

    /// Checks the capsule binding and the owner signature.
    pub fn check(&self, metadata: &CapsuleMetadata) -> Result<(), RevocationError> {
        if self.suite != metadata.suite() {
            return Err(RevocationError::SuiteMismatch);
        }
        if self.capsule != metadata.id() {
            return Err(RevocationError::OtherCapsule(self.capsule));
        }
        let owner = VerifyingKey::from_bytes(&metadata.owner_public_key())
            .map_err(|_| RevocationError::BadOwnerSignature)?;
        owner
            .verify_strict(
                &self.signing_message(),
                &Signature::from_bytes(&self.owner_signature),
            )
            .map_err(|_| RevocationError::BadOwnerSignature)
    }
}

/// Issues a revocation list signed by the capsule owner. Writers are sorted and deduplicated;
/// `None` if there are more than [`REVOKED_WRITERS_MAX`].
pub fn issue_revocation_list(
    owner: &OwnerKey,
    metadata: &CapsuleMetadata,
    serial: u64,
    writers: impl IntoIterator<Item = WriterId>,
) -> Option<RevocationList> {
    let mut writers: Vec<WriterId> = writers.into_iter().collect();
    writers.sort_unstable();
    writers.dedup();
    if writers.len() > REVOKED_WRITERS_MAX {
        return None;
    }
    let mut list = RevocationList {
        suite: metadata.suite(),
        capsule: metadata.id(),
        serial,
        writers,
        owner_signature: [0u8; 64],
    };
    list.owner_signature = owner.sign(&list.signing_message());
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestCapsule;

    #[test]
    fn round_trip_and_signature() {
        let capsule = TestCapsule::new("revocation", 1);
        let list = issue_revocation_list(
            &capsule.owner,
            &capsule.metadata,
            7,
            [WriterId([3; 16]), WriterId([1; 16]), WriterId([3; 16])],
        )
        .unwrap();
        assert_eq!(list.writers, vec![WriterId([1; 16]), WriterId([3; 16])]);
        let decoded = RevocationList::decode(&list.encode()).unwrap();
        assert_eq!(decoded, list);
        decoded.check(&capsule.metadata).unwrap();

        let other = TestCapsule::new("revocation", 2);
        assert!(matches!(
            decoded.check(&other.metadata),
            Err(RevocationError::OtherCapsule(_))
        ));
        let mut bytes = list.encode();
        let serial_byte = 34;
        bytes[serial_byte] ^= 1;
        let tampered = RevocationList::decode(&bytes).unwrap();
        assert_eq!(
            tampered.check(&capsule.metadata),
            Err(RevocationError::BadOwnerSignature)
        );
    }

    #[test]
    fn decode_refuses_bad_layouts() {
        let capsule = TestCapsule::new("revocation", 1);
        let list = issue_revocation_list(&capsule.owner, &capsule.metadata, 1, [WriterId([1; 16])])
            .unwrap();
        let bytes = list.encode();
        for len in 0..bytes.len() {
            assert!(
                RevocationList::decode(&bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut huge = bytes.clone();
        huge[42..46].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(RevocationList::decode(&huge).is_err());
        let unsorted = RevocationList {
            writers: vec![WriterId([2; 16]), WriterId([1; 16])],
            ..list
        };
        assert!(RevocationList::decode(&unsorted.encode()).is_err());
    }
}

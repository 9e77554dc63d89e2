//! Capsule metadata: the owner public key, name and creation parameters; its canonical encoding
//! and the capsule id derived from it.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `PSLCAPMD` |
//! | 1 | format version (1) |
//! | 1 | cipher suite |
//! | 32 | owner Ed25519 public key |
//! | 8 | `created_s`: creation time, seconds since the Unix epoch (informational) |
//! | 16 | `salt`: caller-chosen random bytes, so two capsules never share an id |
//! | 4 | `record_bytes_max` |
//! | 2 | name length n (<= 256) |
//! | n | name, UTF-8 |

use crate::codec::{Reader, len_u32};
use crate::error::DecodeError;
use crate::ids::CapsuleId;
use crate::limits::{CAPSULE_NAME_BYTES_MAX, METADATA_BYTES_MAX, RECORD_BYTES_MAX};
use crate::suite::{self, CipherSuite};

const MAGIC: &[u8; 8] = b"PSLCAPMD";
/// Format version of the metadata encoding.
pub const METADATA_VERSION: u8 = 1;

/// Parameters chosen when the capsule is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationParams {
    /// Creation time in seconds since the Unix epoch (informational; never used for checks).
    pub created_s: u64,
    /// Random bytes chosen by the creator so that two capsules with the same name and owner
    /// still get distinct ids.
    pub salt: [u8; 16],
    /// Largest encoded record this capsule accepts (at most [`RECORD_BYTES_MAX`]).
    pub record_bytes_max: u32,
}

/// The public description of a capsule. Its canonical encoding's hash is the capsule id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapsuleMetadata {
    suite: CipherSuite,
    owner_public_key: [u8; 32],
    name: String,
    params: CreationParams,
    id: CapsuleId,
}

impl CapsuleMetadata {
    /// Builds metadata, checking the name and parameters against the limits.
    pub fn new(
        owner_public_key: [u8; 32],
        name: &str,
        params: CreationParams,
    ) -> Result<Self, DecodeError> {
        check_fields(name, &params)?;
        let mut metadata = CapsuleMetadata {
            suite: CipherSuite::CURRENT,
            owner_public_key,
            name: name.to_string(),
            params,
            id: CapsuleId([0; 32]),
        };
        metadata.id = suite::capsule_id(&metadata.encode());
        Ok(metadata)
    }

    /// The capsule id: BLAKE3 (derive-key "capsule id") of [`Self::encode`].
    pub fn id(&self) -> CapsuleId {
        self.id
    }

    /// The cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The owner's Ed25519 public key; it signs writer certificates.
    pub fn owner_public_key(&self) -> [u8; 32] {
        self.owner_public_key
    }

    /// The capsule (application) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The creation parameters.
    pub fn params(&self) -> &CreationParams {
        &self.params
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(72usize.saturating_add(self.name.len()));
        out.extend_from_slice(MAGIC);
        out.push(METADATA_VERSION);
        out.push(self.suite.to_byte());
        out.extend_from_slice(&self.owner_public_key);
        out.extend_from_slice(&self.params.created_s.to_le_bytes());
        out.extend_from_slice(&self.params.salt);
        out.extend_from_slice(&self.params.record_bytes_max.to_le_bytes());
        // check_fields bounded the name to 256 bytes, which fits a u16.
        let name_len = u16::try_from(self.name.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Decodes and checks the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > METADATA_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "capsule metadata",
                len: bytes.len(),
                max: METADATA_BYTES_MAX,
            });
        }
        let mut reader = Reader::new(bytes);
        if reader.take(8, "metadata magic")? != MAGIC {
            return Err(DecodeError::Invalid {
                what: "metadata magic",
                reason: "not PSLCAPMD",
            });
        }
        let version = reader.u8("metadata version")?;
        if version != METADATA_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "capsule metadata",
                version,
            });
        }
        let suite_byte = reader.u8("metadata suite")?;
        let suite =
            CipherSuite::from_byte(suite_byte).ok_or(DecodeError::UnknownSuite(suite_byte))?;
        let owner_public_key = reader.array::<32>("owner public key")?;
        let created_s = reader.u64("created_s")?;
        let salt = reader.array::<16>("salt")?;
        let record_bytes_max = reader.u32("record_bytes_max")?;
        let name_len = usize::from(reader.u16("name length")?);
        if name_len > CAPSULE_NAME_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "capsule name",
                len: name_len,
                max: CAPSULE_NAME_BYTES_MAX,
            });
        }
        let name = std::str::from_utf8(reader.take(name_len, "capsule name")?).map_err(|_| {
            DecodeError::Invalid {
                what: "capsule name",
                reason: "not UTF-8",
            }
        })?;
        reader.finish("capsule metadata")?;
        let params = CreationParams {
            created_s,
            salt,
            record_bytes_max,
        };
        check_fields(name, &params)?;
        Ok(CapsuleMetadata {
            suite,
            owner_public_key,
            name: name.to_string(),
            params,
            id: suite::capsule_id(bytes),
        })
    }
}

fn check_fields(name: &str, params: &CreationParams) -> Result<(), DecodeError> {
    if name.len() > CAPSULE_NAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            what: "capsule name",
            len: name.len(),
            max: CAPSULE_NAME_BYTES_MAX,
        });
    }
    let max = len_u32(RECORD_BYTES_MAX, "record_bytes_max")?;
    if params.record_bytes_max > max || params.record_bytes_max < 1024 {
        return Err(DecodeError::Invalid {
            what: "record_bytes_max",
            reason: "must be between 1 KiB and RECORD_BYTES_MAX",
        });
    }
    Ok(())
}

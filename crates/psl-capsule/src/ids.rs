//! Identifier newtypes: capsule id, writer id, record hash, and a writer head.
//!
//! These are plain values with hex `Display`; they carry no secrets and do no validation beyond
//! their fixed sizes.

use std::fmt;

/// Identifies a capsule: BLAKE3 of its canonical metadata encoding (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapsuleId(pub [u8; 32]);

/// Identifies one writer incarnation: the first 16 bytes of BLAKE3 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterId(pub [u8; 16]);

/// The hash of one record (over its header and body digest); the chain link.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordHash(pub [u8; 32]);

impl RecordHash {
    /// The all-zero hash used as `prev_hash` of sequence number 0.
    pub const ZERO: RecordHash = RecordHash([0u8; 32]);
}

/// The head of one writer's chain: its latest sequence number and that record's hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Head {
    /// The writer.
    pub writer: WriterId,
    /// Sequence number of the writer's latest record.
    pub seq: u64,
    /// Hash of that record.
    pub hash: RecordHash,
}

macro_rules! hex_fmt {
    ($t:ty, $short:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let text = hex::encode(self.0);
                write!(f, "{}({})", $short, text.get(..16).unwrap_or(&text))
            }
        }
        impl $t {
            /// Lower-case hex of all bytes.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 bytes in hex, for logs and tables.
            pub fn short(&self) -> String {
                let text = hex::encode(self.0);
                text.get(..16).unwrap_or(&text).to_string()
            }
        }
    };
}

hex_fmt!(CapsuleId, "CapsuleId");
hex_fmt!(WriterId, "WriterId");
hex_fmt!(RecordHash, "RecordHash");

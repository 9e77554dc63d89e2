//! The SCL's record body: a batch of updates, each stamped with its own Lamport time, plus
//! the lock fences the batch was written under. Versioned, canonical, little-endian, with a
//! limit on every length; decoding never panics and never allocates past the limits.
//!
//! Layout (version 1):
//! `u8 version=1, u16 n_fences, (u16 name_len, name, u64 token)*, u32 n_updates,
//!  (u64 lamport, u8 op (0 put, 1 delete), u16 key_len, key, [u32 value_len, value if put])*`.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::cursor::{Reader, Truncated};

/// Format version of the body.
pub const BODY_VERSION: u8 = 1;
/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 4 << 10;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Largest lock name, in bytes.
pub const LOCK_NAME_BYTES_MAX: usize = 4 << 10;
/// Most updates in one batch.
pub const UPDATES_MAX: usize = 65_536;
/// Most fences on one batch.
pub const FENCES_MAX: usize = 64;

/// What an update does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the value.
    Put(Vec<u8>),
    /// Remove the key (kept as a tombstone with its version).
    Delete,
}

/// One update with its own Lamport time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StampedUpdate {
    /// Lamport time of the update (the writer id completes its version).
    pub lamport: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The operation.
    pub op: Op,
}

/// A lock fence: the batch was written while holding `lock` under `token`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence {
    /// Lock name.
    pub lock: Vec<u8>,
    /// Fencing token of the grant.
    pub token: u64,
}

/// A batch of updates: the plaintext of an `Updates` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Locks held while the batch was written (empty outside critical sections).
    pub fences: Vec<Fence>,
    /// The updates, in the order the writer applied them.
    pub updates: Vec<StampedUpdate>,
}

/// Why a body did not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Unknown format version.
    #[error("unknown SCL body version {0}")]
    Version(u8),
    /// The bytes ended early.
    #[error("SCL body truncated")]
    Truncated,
    /// Bytes left over after the last update.
    #[error("{0} trailing bytes after the SCL body")]
    Trailing(usize),
    /// A length or count over its limit.
    #[error("SCL body: {what} of {value} exceeds the limit {max}")]
    Limit {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// An unknown operation code.
    #[error("SCL body: unknown operation {0}")]
    Op(u8),
}

impl Batch {
    /// The highest Lamport time in the batch (0 if empty).
    pub fn max_lamport(&self) -> u64 {
        self.updates.iter().map(|u| u.lamport).max().unwrap_or(0)
    }

    /// Encodes the batch. Fails only if the batch itself breaks a limit.
    pub fn encode(&self) -> Result<Vec<u8>, BodyError> {
        limit("fences", self.fences.len(), FENCES_MAX)?;
        limit("updates", self.updates.len(), UPDATES_MAX)?;
        let mut out = Vec::with_capacity(16 + self.updates.len() * 32);
        out.push(BODY_VERSION);
        out.extend_from_slice(&(self.fences.len() as u16).to_le_bytes());
        for fence in &self.fences {
            limit("lock name bytes", fence.lock.len(), LOCK_NAME_BYTES_MAX)?;
            out.extend_from_slice(&(fence.lock.len() as u16).to_le_bytes());
            out.extend_from_slice(&fence.lock);
            out.extend_from_slice(&fence.token.to_le_bytes());
        }
        out.extend_from_slice(&(self.updates.len() as u32).to_le_bytes());
        for update in &self.updates {
            limit("key bytes", update.key.len(), KEY_BYTES_MAX)?;
            out.extend_from_slice(&update.lamport.to_le_bytes());
            match &update.op {
                Op::Put(_) => out.push(0),
                Op::Delete => out.push(1),
            }
            out.extend_from_slice(&(update.key.len() as u16).to_le_bytes());
            out.extend_from_slice(&update.key);
            if let Op::Put(value) = &update.op {
                limit("value bytes", value.len(), VALUE_BYTES_MAX)?;
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
        Ok(out)
    }

    /// Decodes a batch, checking every length against its limit before allocating.
    pub fn decode(bytes: &[u8]) -> Result<Self, BodyError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != BODY_VERSION {
            return Err(BodyError::Version(version));
        }
        let n_fences = usize::from(reader.u16()?);
        limit("fences", n_fences, FENCES_MAX)?;
        let mut fences = Vec::with_capacity(n_fences);
        for _ in 0..n_fences {
            let len = usize::from(reader.u16()?);
            limit("lock name bytes", len, LOCK_NAME_BYTES_MAX)?;
            let lock = reader.bytes(len)?.to_vec();
            let token = reader.u64()?;
            fences.push(Fence { lock, token });
        }
        let n_updates = reader.u32()? as usize;
        limit("updates", n_updates, UPDATES_MAX)?;
        // Each update takes at least 11 bytes: refuse counts the input cannot hold before
        // reserving memory for them.
        if n_updates > reader.remaining() / 11 + 1 {
            return Err(BodyError::Truncated);
        }
        let mut updates = Vec::with_capacity(n_updates);
        for _ in 0..n_updates {
            let lamport = reader.u64()?;
            let code = reader.u8()?;
            let key_len = usize::from(reader.u16()?);
            limit("key bytes", key_len, KEY_BYTES_MAX)?;
            let key = reader.bytes(key_len)?.to_vec();
            let op = match code {
                0 => {
                    let len = reader.u32()? as usize;
                    limit("value bytes", len, VALUE_BYTES_MAX)?;
                    Op::Put(reader.bytes(len)?.to_vec())
                }
                1 => Op::Delete,
                other => return Err(BodyError::Op(other)),
            };
            updates.push(StampedUpdate { lamport, key, op });
        }
        if reader.remaining() > 0 {
            return Err(BodyError::Trailing(reader.remaining()));
        }
        Ok(Batch { fences, updates })
    }
}

fn limit(what: &'static str, value: usize, max: usize) -> Result<(), BodyError> {
    if value > max {
        Err(BodyError::Limit { what, value, max })
    } else {
        Ok(())
    }
}

impl From<Truncated> for BodyError {
    fn from(_: Truncated) -> Self {
        BodyError::Truncated
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Batch {
        Batch {
            fences: vec![Fence {
                lock: b"bank".to_vec(),
                token: 7,
            }],
            updates: vec![
                StampedUpdate {
                    lamport: 3,
                    key: b"a".to_vec(),
                    op: Op::Put(b"xy".to_vec()),
                },
                StampedUpdate {
                    lamport: 4,
                    key: b"b".to_vec(),
                    op: Op::Delete,
                },
            ],
        }
    }

    /// The format is deliberate: a change to these bytes must come with a new version.
    #[test]
    fn golden_bytes() {
        let expected = concat!(
            "01",
            "0100",
            "0400",
            "62616e6b",
            "0700000000000000",
            "02000000",
            "0300000000000000",
            "00",
            "0100",
            "61",
            "02000000",
            "7879",
            "0400000000000000",
            "01",
            "0100",
            "62",
        );
        assert_eq!(hex_of(&sample().encode().unwrap()), expected);
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trip_and_errors() {
        let batch = sample();
        let bytes = batch.encode().unwrap();
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
        assert_eq!(batch.max_lamport(), 4);
        assert_eq!(
            Batch::decode(&bytes[..bytes.len() - 1]),
            Err(BodyError::Truncated)
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Batch::decode(&extra), Err(BodyError::Trailing(1)));
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(Batch::decode(&bad), Err(BodyError::Version(9)));
        assert_eq!(
            Batch::decode(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(BodyError::Limit {
                what: "updates",
                value: u32::MAX as usize,
                max: UPDATES_MAX
            })
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Batch::decode(&bytes);
        }
    }
}

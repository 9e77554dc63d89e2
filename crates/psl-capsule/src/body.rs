//! Plaintext body codec for `Updates` records: a batch of key-value puts and deletes.
//!
//! Layout (little-endian): `count u32`, then per update `op u8` (1 = put, 2 = delete),
//! `key_len u16`, key, and for a put `value_len u32` and the value. Limits: key <= 4 KiB,
//! value <= 1 MiB, count <= 65 536; all checked before anything is allocated.
//!
//! Bodies of the other kinds are opaque bytes to this crate (the SCL defines them); this module
//! only knows the update batch.

use crate::codec::{Reader, len_u32};
use crate::error::DecodeError;
use crate::limits::{UPDATE_KEY_BYTES_MAX, UPDATE_VALUE_BYTES_MAX, UPDATES_PER_BATCH_MAX};

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// What an update does to its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpdateOp {
    /// Set the key to this value.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
}

/// One key-value update.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Update {
    /// The key (at most [`UPDATE_KEY_BYTES_MAX`] bytes).
    pub key: Vec<u8>,
    /// The operation.
    pub op: UpdateOp,
}

impl Update {
    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Update {
            key: key.into(),
            op: UpdateOp::Put(value.into()),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Update {
            key: key.into(),
            op: UpdateOp::Delete,
        }
    }
}

/// Checks the limits and returns the encoded length of `updates`.
pub fn encoded_len(updates: &[Update]) -> Result<usize, DecodeError> {
    if updates.len() > UPDATES_PER_BATCH_MAX {
        return Err(DecodeError::TooLarge {
            what: "update count",
            len: updates.len(),
            max: UPDATES_PER_BATCH_MAX,
        });
    }
    let mut total: usize = 4;
    for update in updates {
        if update.key.len() > UPDATE_KEY_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "update key",
                len: update.key.len(),
                max: UPDATE_KEY_BYTES_MAX,
            });
        }
        // op + key length + key: at most 1 + 2 + 4096, cannot overflow usize.
        let mut item = 3usize.saturating_add(update.key.len());
        if let UpdateOp::Put(value) = &update.op {
            if value.len() > UPDATE_VALUE_BYTES_MAX {
                return Err(DecodeError::TooLarge {
                    what: "update value",
                    len: value.len(),
                    max: UPDATE_VALUE_BYTES_MAX,
                });
            }
            item = item.saturating_add(4).saturating_add(value.len());
        }
        total = total.saturating_add(item);
    }
    Ok(total)
}

/// Appends the encoding of `updates` to `out` (limits checked first; nothing written on error).
pub fn encode_updates_into(updates: &[Update], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = encoded_len(updates)?;
    out.reserve(len);
    out.extend_from_slice(&len_u32(updates.len(), "update count")?.to_le_bytes());
    for update in updates {
        match &update.op {
            UpdateOp::Put(_) => out.push(OP_PUT),
            UpdateOp::Delete => out.push(OP_DELETE),
        }
        // Bounded by UPDATE_KEY_BYTES_MAX (4096) above.
        let key_len = u16::try_from(update.key.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&update.key);
        if let UpdateOp::Put(value) = &update.op {
            out.extend_from_slice(&len_u32(value.len(), "update value")?.to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// Encodes a batch of updates.
pub fn encode_updates(updates: &[Update]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    encode_updates_into(updates, &mut out)?;
    Ok(out)
}

/// Decodes a batch of updates, checking every limit before allocating.
pub fn decode_updates(bytes: &[u8]) -> Result<Vec<Update>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let count = usize::try_from(reader.u32("update count")?).unwrap_or(usize::MAX);
    if count > UPDATES_PER_BATCH_MAX {
        return Err(DecodeError::TooLarge {
            what: "update count",
            len: count,
            max: UPDATES_PER_BATCH_MAX,
        });
    }
    // Each update takes at least 3 bytes, so a count the input cannot hold is rejected before
    // reserving memory for it.
    if count > reader.remaining() / 3 {
        return Err(DecodeError::Invalid {
            what: "update count",
            reason: "larger than the body could hold",
        });
    }
    let mut updates = Vec::with_capacity(count);
    for index in 0..count {
        let op = reader.u8("update op")?;
        let key_len = usize::from(reader.u16("update key length")?);
        if key_len > UPDATE_KEY_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "update key",
                len: key_len,
                max: UPDATE_KEY_BYTES_MAX,
            });
        }
        let key = reader.take(key_len, "update key")?.to_vec();
        let op = match op {
            OP_PUT => {
                let value_len =
                    usize::try_from(reader.u32("update value length")?).unwrap_or(usize::MAX);
                if value_len > UPDATE_VALUE_BYTES_MAX {
                    return Err(DecodeError::TooLarge {
                        what: "update value",
                        len: value_len,
                        max: UPDATE_VALUE_BYTES_MAX,
                    });
                }
                UpdateOp::Put(reader.take(value_len, "update value")?.to_vec())
            }
            OP_DELETE => UpdateOp::Delete,
            other => return Err(DecodeError::UnknownUpdateOp { op: other, index }),
        };
        updates.push(Update { key, op });
    }
    reader.finish("update batch")?;
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let batch = vec![
            Update::put("a", "1"),
            Update::delete("b"),
            Update::put("", ""),
        ];
        let bytes = encode_updates(&batch).unwrap();
        assert_eq!(bytes.len(), encoded_len(&batch).unwrap());
        assert_eq!(decode_updates(&bytes).unwrap(), batch);
        let big_key = vec![Update::put(vec![0u8; UPDATE_KEY_BYTES_MAX + 1], "x")];
        assert!(matches!(
            encode_updates(&big_key),
            Err(DecodeError::TooLarge { .. })
        ));
        // A huge count with no data behind it is refused before allocation.
        assert!(decode_updates(&u32::MAX.to_le_bytes()).is_err());
        assert!(decode_updates(&60_000u32.to_le_bytes()).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_updates(&trailing),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut bad_op = bytes;
        bad_op[4] = 9;
        assert!(matches!(
            decode_updates(&bad_op),
            Err(DecodeError::UnknownUpdateOp { .. })
        ));
    }
}

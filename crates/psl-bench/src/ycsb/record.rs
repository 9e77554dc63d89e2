//! Keys and record values as YCSB builds them.
//!
//! Key: `"user"` followed by the decimal ordinal, hashed with [`fnvhash64`] first unless
//! inserts are ordered, left-padded with zeros to `zero_padding` digits (YCSB
//! `CoreWorkload.buildKeyName`; default padding 1 means no padding).
//!
//! Value: YCSB stores `fieldcount` named fields (`field0`, `field1`, ...). The [`psl_runtime::State`]
//! interface stores one byte string per key, so a record is its fields serialized as
//! `count:u32le` then, per field, `name_len:u32le name value_len:u32le value`.

use super::rng::{SplitMix64, fnvhash64};

/// Ordinal order of keys on insert (YCSB `insertorder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertOrder {
    /// Keys are the hashed ordinals (YCSB default): insert order is not key order.
    Hashed,
    /// Keys are the ordinals themselves.
    Ordered,
}

/// The key of record `ordinal`.
pub fn key_name(ordinal: u64, order: InsertOrder, zero_padding: usize) -> String {
    let number = match order {
        InsertOrder::Hashed => fnvhash64(ordinal),
        InsertOrder::Ordered => ordinal,
    };
    format!("user{number:0>zero_padding$}")
}

/// The name of field `index` (`field0`...).
pub fn field_name(index: usize) -> String {
    format!("field{index}")
}

/// `len` random printable ASCII bytes (YCSB's `RandomByteIterator` draws from `' '..='~'`).
pub fn random_bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let word = rng.next_u64();
        for byte in word.to_le_bytes() {
            if out.len() == len {
                break;
            }
            out.push(b' ' + (u32::from(byte) * 95 / 256) as u8);
        }
    }
    out
}

/// A record: named fields in field order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// (name, value) pairs.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Record {
    /// A fresh record of `field_count` random fields of `field_length` bytes.
    pub fn random(rng: &mut SplitMix64, field_count: usize, field_length: usize) -> Self {
        Self {
            fields: (0..field_count)
                .map(|i| (field_name(i).into_bytes(), random_bytes(rng, field_length)))
                .collect(),
        }
    }

    /// The serialized record.
    pub fn encode(&self) -> Vec<u8> {
        let size = 4 + self
            .fields
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for (name, value) in &self.fields {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Parses a serialized record; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if bytes.len() < n {
                return None;
            }
            let (head, tail) = bytes.split_at(n);
            *bytes = tail;
            Some(head)
        }
        fn take_u32(bytes: &mut &[u8]) -> Option<usize> {
            let raw = take(bytes, 4)?;
            Some(u32::from_le_bytes(raw.try_into().ok()?) as usize)
        }
        let mut rest = bytes;
        let count = take_u32(&mut rest)?;
        let mut fields = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let name_len = take_u32(&mut rest)?;
            let name = take(&mut rest, name_len)?.to_vec();
            let value_len = take_u32(&mut rest)?;
            let value = take(&mut rest, value_len)?.to_vec();
            fields.push((name, value));
        }
        rest.is_empty().then_some(Self { fields })
    }

    /// The value of the field called `name`.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets (or adds) the field called `name`, as YCSB's update merges fields into a record.
    pub fn set(&mut self, name: Vec<u8>, value: Vec<u8>) {
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.fields.push((name, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_ycsb_format() {
        assert_eq!(key_name(42, InsertOrder::Ordered, 1), "user42");
        assert_eq!(key_name(42, InsertOrder::Ordered, 6), "user000042");
        let hashed = key_name(42, InsertOrder::Hashed, 1);
        assert_eq!(hashed, format!("user{}", fnvhash64(42)));
        assert!(hashed.starts_with("user") && hashed[4..].bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(
            key_name(1, InsertOrder::Hashed, 1),
            key_name(2, InsertOrder::Hashed, 1)
        );
    }

    #[test]
    fn records_round_trip_and_update_one_field() {
        let mut rng = SplitMix64::new(1);
        let mut record = Record::random(&mut rng, 10, 100);
        assert_eq!(record.fields.len(), 10);
        assert!(record.fields.iter().all(|(_, v)| v.len() == 100));
        assert!(
            record
                .fields
                .iter()
                .all(|(_, v)| v.iter().all(|b| (b' '..=b'~').contains(b)))
        );
        let bytes = record.encode();
        assert_eq!(bytes.len(), 4 + 10 * (8 + 6 + 100));
        assert_eq!(Record::decode(&bytes), Some(record.clone()));
        assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
        record.set(b"field3".to_vec(), b"new".to_vec());
        assert_eq!(record.field(b"field3"), Some(&b"new"[..]));
        assert_eq!(record.fields.len(), 10);
    }
}

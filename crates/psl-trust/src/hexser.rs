//! Serde helpers: byte arrays and vectors as lowercase hex strings (readable from a shell).

use serde::{Deserialize, Deserializer, Serializer};

/// `[u8; N]` as hex.
pub mod array {
    use super::*;

    /// Serializes as hex.
    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    /// Deserializes from hex of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// `Option<[u8; N]>` as hex or null.
pub mod option_array {
    use super::*;

    /// Serializes as hex or null.
    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &Option<[u8; N]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes from hex of exactly `N` bytes, or null.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        match text {
            None => Ok(None),
            Some(text) => {
                let mut out = [0u8; N];
                hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
                Ok(Some(out))
            }
        }
    }
}

/// `Vec<u8>` as hex.
pub mod vec {
    use super::*;

    /// Serializes as hex.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    /// Deserializes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(&text).map_err(serde::de::Error::custom)
    }
}

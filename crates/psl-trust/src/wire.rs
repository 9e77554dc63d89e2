//! Protocol messages: JSON with hex byte fields, one `version` field each, bounded on decode.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::MESSAGE_BYTES_MAX;

/// The message format version.
pub const WIRE_VERSION: u32 = 1;

/// Why a message does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than [`MESSAGE_BYTES_MAX`].
    #[error("{what} of {len} bytes exceeds {max}")]
    TooLarge {
        /// The message kind.
        what: &'static str,
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not valid JSON for the message.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The message kind.
        what: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// Unsupported version.
    #[error("{what} version {version} is not supported (expected {WIRE_VERSION})")]
    Version {
        /// The message kind.
        what: &'static str,
        /// The version found.
        version: u32,
    },
}

pub(crate) trait Versioned {
    const WHAT: &'static str;
    fn version(&self) -> u32;
}

pub(crate) fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Plain structs with string keys: serialization cannot fail.
    serde_json::to_vec(message).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge {
            what: T::WHAT,
            len: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    let message: T = serde_json::from_slice(bytes).map_err(|error| WireError::Malformed {
        what: T::WHAT,
        reason: error.to_string(),
    })?;
    if message.version() != WIRE_VERSION {
        return Err(WireError::Version {
            what: T::WHAT,
            version: message.version(),
        });
    }
    Ok(message)
}

macro_rules! versioned {
    ($ty:ty, $what:literal) => {
        impl $crate::wire::Versioned for $ty {
            const WHAT: &'static str = $what;
            fn version(&self) -> u32 {
                self.version
            }
        }
    };
}
pub(crate) use versioned;

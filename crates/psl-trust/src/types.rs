//! Small shared types: platforms, roles, measurements, function hashes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of TEE that produced evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// The software-only simulated TEE: **no hardware protection at all**.
    Sim,
    /// AMD SEV-SNP confidential VM.
    SevSnp,
    /// Intel SGX enclave (DCAP quote).
    Sgx,
    /// Intel TDX trust domain (DCAP quote).
    Tdx,
}

impl Platform {
    /// The stable name used in policy files and measurements (`sim`, `sev-snp`, `sgx`, `tdx`).
    pub fn name(self) -> &'static str {
        match self {
            Platform::Sim => "sim",
            Platform::SevSnp => "sev-snp",
            Platform::Sgx => "sgx",
            Platform::Tdx => "tdx",
        }
    }

    /// Parses [`Self::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sim" => Some(Platform::Sim),
            "sev-snp" => Some(Platform::SevSnp),
            "sgx" => Some(Platform::Sgx),
            "tdx" => Some(Platform::Tdx),
            _ => None,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Platform::Sim => 0,
            Platform::SevSnp => 1,
            Platform::Sgx => 2,
            Platform::Tdx => 3,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role an enclave claims in the attestation binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The FaaS manager (attests workers, distributes keys).
    Manager,
    /// A worker (runs functions, writes records).
    Worker,
}

impl Role {
    /// `manager` or `worker`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Role::Manager => 1,
            Role::Worker => 2,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most bytes in a measurement (SNP and TDX measurements are 48 bytes).
pub const MEASUREMENT_BYTES_MAX: usize = 64;

/// A launch measurement, tagged with its platform: 32 bytes for `sim` (BLAKE3) and `sgx`
/// (MRENCLAVE), 48 bytes for `sev-snp` (MEASUREMENT) and `tdx` (MRTD).
///
/// Text form (policy files, CLI output): `<platform>:<hex>`, e.g. `sim:3f0a…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Measurement {
    platform: Platform,
    bytes: Vec<u8>,
}

/// Why a measurement string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasurementParseError {
    /// No `platform:` prefix.
    #[error("measurement {0:?} has no '<platform>:' prefix")]
    NoPlatform(String),
    /// Unknown platform name.
    #[error("unknown platform {0:?} (expected sim, sev-snp, sgx or tdx)")]
    UnknownPlatform(String),
    /// Not hex, or the wrong length for the platform.
    #[error("measurement for {platform} must be {expected} hex-encoded bytes")]
    BadValue {
        /// The platform.
        platform: Platform,
        /// Expected length in bytes.
        expected: usize,
    },
}

impl Measurement {
    /// Builds a measurement; `None` if the length is wrong for the platform.
    pub fn new(platform: Platform, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == Self::len_for(platform)).then(|| Measurement {
            platform,
            bytes: bytes.to_vec(),
        })
    }

    /// The byte length of measurements of `platform`.
    pub fn len_for(platform: Platform) -> usize {
        match platform {
            Platform::Sim | Platform::Sgx => 32,
            Platform::SevSnp | Platform::Tdx => 48,
        }
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The 32-byte digest that goes into a writer certificate's `measurement` field:
    /// BLAKE3 derive-key `PSL trust v1 certificate measurement` over the platform byte, the
    /// measurement and the function hash (zeros when none).
    pub fn certificate_digest(&self, function: Option<&FunctionHash>) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("PSL trust v1 certificate measurement");
        hasher.update(&[self.platform.to_byte()]);
        hasher.update(&self.bytes);
        match function {
            Some(function) => hasher.update(&[1]).update(&function.0),
            None => hasher.update(&[0]).update(&[0u8; 32]),
        };
        *hasher.finalize().as_bytes()
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, hex::encode(&self.bytes))
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Measurement {
    type Err = MeasurementParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (platform, value) = text
            .split_once(':')
            .ok_or_else(|| MeasurementParseError::NoPlatform(text.chars().take(80).collect()))?;
        let platform = Platform::from_name(platform).ok_or_else(|| {
            MeasurementParseError::UnknownPlatform(platform.chars().take(40).collect())
        })?;
        let expected = Self::len_for(platform);
        let bytes = hex::decode(value)
            .ok()
            .filter(|bytes| bytes.len() == expected)
            .ok_or(MeasurementParseError::BadValue { platform, expected })?;
        Ok(Measurement { platform, bytes })
    }
}

impl Serialize for Measurement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Measurement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The hash naming a function's code: BLAKE3 of the module bytes (`psl_runtime::FunctionId`
/// uses the same definition).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionHash(pub [u8; 32]);

impl FunctionHash {
    /// BLAKE3 of the module bytes.
    pub fn of_module(bytes: &[u8]) -> Self {
        FunctionHash(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for FunctionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FunctionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FunctionHash({self})")
    }
}

impl std::str::FromStr for FunctionHash {
    type Err = hex::FromHexError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)?;
        Ok(FunctionHash(out))
    }
}

impl Serialize for FunctionHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FunctionHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

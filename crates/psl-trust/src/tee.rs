//! The `Tee` trait: what an enclave can say about itself.

use std::fmt;

use zeroize::Zeroizing;

use crate::evidence::Evidence;
use crate::types::{Measurement, Platform};

/// Why a TEE backend could not produce evidence or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeeError {
    /// A collector file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A collector file is larger than allowed.
    #[error("{path}: {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The path.
        path: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The collector's output is not what the interface promises.
    #[error("{0}")]
    Protocol(String),
    /// Someone else used the report entry while we did (configfs-tsm `generation` changed).
    #[error(
        "configfs-tsm report {path} was modified concurrently (generation {before} -> {after})"
    )]
    Concurrent {
        /// The report entry.
        path: String,
        /// Generation after our write.
        before: u64,
        /// Generation after our read.
        after: u64,
    },
    /// The backend cannot do this.
    #[error("not supported by this TEE: {0}")]
    Unsupported(&'static str),
    /// The produced evidence does not parse.
    #[error("evidence produced by the TEE does not parse: {0}")]
    Evidence(#[from] crate::evidence::EvidenceError),
}

/// A 32-byte key bound to the enclave's identity (zeroized on drop).
pub struct SealingKey(Zeroizing<[u8; 32]>);

impl SealingKey {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        SealingKey(Zeroizing::new(bytes))
    }

    /// The key bytes (for example the MAC key of `psl-runtime`'s compiled-module cache).
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// A trusted execution environment as seen from inside it.
pub trait Tee: Send + Sync {
    /// The platform.
    fn platform(&self) -> Platform;

    /// True for the simulated TEE.
    fn is_simulated(&self) -> bool {
        self.platform() == Platform::Sim
    }

    /// A line for logs and CLI output at start-up: loud for the simulated TEE.
    fn banner(&self) -> String {
        if self.is_simulated() {
            "SIMULATED TEE: no hardware protection; evidence is signed by a local simulated root key \
             and a strict policy refuses it"
                .to_string()
        } else {
            format!("TEE: {}", self.platform())
        }
    }

    /// This enclave's launch measurement.
    fn measurement(&self) -> Result<Measurement, TeeError>;

    /// Evidence over 64 bytes of report data chosen by the caller (normally
    /// [`crate::binding::Binding::report_data`]).
    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, TeeError>;

    /// A key only this enclave identity can derive, separated by `label`.
    fn sealing_key(&self, label: &str) -> Result<SealingKey, TeeError>;
}

//! The simulated TEE: software only, **no hardware protection at all**.
//!
//! Measurement = BLAKE3 (derive-key `PSL sim TEE v1 measurement`) of the worker binary identity
//! and the loaded function hash (zeros when none). Evidence = that measurement, the binary
//! identity, the function hash and the report data, signed with Ed25519 by a local simulated
//! root key. Anyone holding the root key's secret can forge any evidence, so a verifier accepts
//! simulated evidence only when its policy sets `allow_sim` and pins that root's public key.
//!
//! The backend announces itself: the evidence has `"simulated": true` and a `notice`, its
//! `Display` starts with `SIMULATED TEE`, and [`SimTee::new`] returns a tee whose
//! [`crate::Tee::banner`] says so for logs and CLI output.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::evidence::{Anchors, Claims, Evidence, EvidenceError, Tcb};
use crate::tee::{SealingKey, Tee, TeeError};
use crate::types::{FunctionHash, Measurement, Platform};

const SIGN_TAG: &[u8] = b"PSL trust v1 SIMULATED TEE evidence\0";
/// The notice every simulated evidence carries.
pub const SIM_NOTICE: &str = "SIMULATED TEE: software only, no hardware protection";

/// The identity of a worker or manager binary: 32 bytes, normally BLAKE3 of the executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinaryIdentity(pub [u8; 32]);

impl BinaryIdentity {
    /// BLAKE3 of the executable's bytes.
    pub fn of_bytes(executable: &[u8]) -> Self {
        BinaryIdentity(*blake3::hash(executable).as_bytes())
    }

    /// A name-and-version identity (for tests and development; says nothing about the code).
    pub fn named(name: &str, version: &str) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("PSL sim TEE v1 named binary");
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(version.as_bytes());
        BinaryIdentity(*hasher.finalize().as_bytes())
    }
}

/// The simulated measurement of a binary with an optional loaded function.
pub fn sim_measurement(binary: &BinaryIdentity, function: Option<&FunctionHash>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("PSL sim TEE v1 measurement");
    hasher.update(&binary.0);
    match function {
        Some(function) => hasher.update(&[1]).update(&function.0),
        None => hasher.update(&[0]).update(&[0u8; 32]),
    };
    *hasher.finalize().as_bytes()
}

/// The simulated platform's root key (stands in for the CPU vendor's attestation key).
pub struct SimRootKey {
    signing: SigningKey,
}

impl SimRootKey {
    /// Builds the root key from a 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SimRootKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The public key a policy pins (`sim_roots`).
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }
}

impl fmt::Debug for SimRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimRootKey(public {})", hex::encode(self.public_key()))
    }
}

/// Simulated evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimEvidence {
    /// Always true; evidence without it is refused.
    pub simulated: bool,
    /// [`SIM_NOTICE`], for humans reading the JSON.
    pub notice: String,
    /// The binary identity.
    #[serde(with = "crate::hexser::array")]
    pub binary: [u8; 32],
    /// The loaded function, if any.
    #[serde(with = "crate::hexser::option_array")]
    pub function: Option<[u8; 32]>,
    /// [`sim_measurement`] of the two above.
    #[serde(with = "crate::hexser::array")]
    pub measurement: [u8; 32],
    /// The report data.
    #[serde(with = "crate::hexser::array")]
    pub report_data: [u8; 64],
    /// The simulated root's public key.
    #[serde(with = "crate::hexser::array")]
    pub root: [u8; 32],
    /// Ed25519 signature by the root over tag || binary || function flag and hash ||
    /// measurement || report data.
    #[serde(with = "crate::hexser::array")]
    pub signature: [u8; 64],
}

impl SimEvidence {
    fn signing_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(SIGN_TAG.len().saturating_add(161));
        message.extend_from_slice(SIGN_TAG);
        message.extend_from_slice(&self.binary);
        match &self.function {
            Some(function) => {
                message.push(1);
                message.extend_from_slice(function);
            }
            None => {
                message.push(0);
                message.extend_from_slice(&[0u8; 32]);
            }
        }
        message.extend_from_slice(&self.measurement);
        message.extend_from_slice(&self.report_data);
        message
    }

    pub(crate) fn verify(&self, anchors: &Anchors) -> Result<Claims, EvidenceError> {
        if !self.simulated {
            return Err(EvidenceError::SimNotMarked);
        }
        if !anchors.sim_roots.contains(&self.root) {
            return Err(EvidenceError::SimUntrustedRoot(hex::encode(self.root)));
        }
        let function = self.function.map(FunctionHash);
        if sim_measurement(&BinaryIdentity(self.binary), function.as_ref()) != self.measurement {
            return Err(EvidenceError::SimMeasurementMismatch);
        }
        let key =
            VerifyingKey::from_bytes(&self.root).map_err(|_| EvidenceError::SimBadSignature)?;
        key.verify_strict(
            &self.signing_message(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| EvidenceError::SimBadSignature)?;
        let measurement = Measurement::new(Platform::Sim, &self.measurement)
            .ok_or_else(|| EvidenceError::Malformed("sim measurement length".into()))?;
        Ok(Claims {
            platform: Platform::Sim,
            simulated: true,
            measurement,
            report_data: self.report_data,
            tcb: Tcb::Simulated,
            debug: false,
            role: None,
            function,
        })
    }
}

impl fmt::Display for SimEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIMULATED TEE evidence (no hardware protection): measurement sim:{} root {}",
            hex::encode(self.measurement),
            hex::encode(self.root)
        )
    }
}

/// The simulated TEE backend.
pub struct SimTee {
    root: SigningKey,
    binary: BinaryIdentity,
    function: Option<FunctionHash>,
    measurement: [u8; 32],
}

impl SimTee {
    /// A simulated enclave running `binary` with `function` loaded (workers) or none (manager).
    pub fn new(root: &SimRootKey, binary: BinaryIdentity, function: Option<FunctionHash>) -> Self {
        SimTee {
            root: root.signing.clone(),
            binary,
            measurement: sim_measurement(&binary, function.as_ref()),
            function,
        }
    }

    /// The loaded function.
    pub fn function(&self) -> Option<FunctionHash> {
        self.function
    }

    /// Signs simulated evidence over `report_data` (infallible, unlike hardware backends).
    pub fn sim_evidence(&self, report_data: [u8; 64]) -> SimEvidence {
        let mut evidence = SimEvidence {
            simulated: true,
            notice: SIM_NOTICE.to_string(),
            binary: self.binary.0,
            function: self.function.map(|function| function.0),
            measurement: self.measurement,
            report_data,
            root: self.root.verifying_key().to_bytes(),
            signature: [0u8; 64],
        };
        evidence.signature = self.root.sign(&evidence.signing_message()).to_bytes();
        evidence
    }
}

impl fmt::Debug for SimTee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SimTee(SIMULATED, measurement sim:{})",
            hex::encode(self.measurement)
        )
    }
}

impl Tee for SimTee {
    fn platform(&self) -> Platform {
        Platform::Sim
    }

    fn measurement(&self) -> Result<Measurement, TeeError> {
        Measurement::new(Platform::Sim, &self.measurement)
            .ok_or(TeeError::Unsupported("sim measurement length"))
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, TeeError> {
        Ok(Evidence::Sim(self.sim_evidence(report_data)))
    }

    /// BLAKE3 derive-key `PSL sim TEE v1 sealing key` over the root secret, the measurement and
    /// the label: like SGX's MRENCLAVE policy, another measurement gets another key. Anyone with
    /// the root seed can derive it: there is no hardware secret.
    fn sealing_key(&self, label: &str) -> Result<SealingKey, TeeError> {
        let secret = Zeroizing::new(self.root.to_bytes());
        let mut hasher = blake3::Hasher::new_derive_key("PSL sim TEE v1 sealing key");
        hasher.update(secret.as_slice());
        hasher.update(&self.measurement);
        hasher.update(label.as_bytes());
        Ok(SealingKey::new(*hasher.finalize().as_bytes()))
    }
}

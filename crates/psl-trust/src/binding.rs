//! Binding evidence to a channel: the report data is a hash of who the enclave says it is
//! (role), the keys it will use (HPKE channel key, writer signing key), the function it loaded
//! and the verifier's fresh nonce. A verifier recomputes the hash from what it was sent and its
//! own nonce, so evidence replayed from another session (another nonce) or for other keys is
//! refused, and whoever verified the evidence knows only that enclave holds the channel key.
//!
//! report data (64 bytes) = BLAKE3 XOF, derive-key context `PSL trust v1 report data`, over
//! `role (1) || channel key (32) || writer key flag (1) and key (32) || function flag (1) and
//! hash (32) || nonce (32)`.

use crate::evidence::{Claims, Evidence, EvidenceError};
use crate::policy::{Policy, PolicyError};
use crate::types::{FunctionHash, Role};

/// What an enclave binds into its report data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The role the enclave claims.
    pub role: Role,
    /// Its HPKE (X25519) channel public key.
    pub channel_key: [u8; 32],
    /// Its writer Ed25519 public key (workers).
    pub writer_key: Option<[u8; 32]>,
    /// The function it loaded (workers).
    pub function: Option<FunctionHash>,
    /// The verifier's nonce.
    pub nonce: [u8; 32],
}

impl Binding {
    /// The 64 bytes of report data.
    pub fn report_data(&self) -> [u8; 64] {
        let mut hasher = blake3::Hasher::new_derive_key("PSL trust v1 report data");
        hasher.update(&[self.role.to_byte()]);
        hasher.update(&self.channel_key);
        match &self.writer_key {
            Some(key) => hasher.update(&[1]).update(key),
            None => hasher.update(&[0]).update(&[0u8; 32]),
        };
        match &self.function {
            Some(function) => hasher.update(&[1]).update(&function.0),
            None => hasher.update(&[0]).update(&[0u8; 32]),
        };
        hasher.update(&self.nonce);
        let mut out = [0u8; 64];
        hasher.finalize_xof().fill(&mut out);
        out
    }
}

/// Why the binding does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The report data is not the hash of this role, these keys and this nonce.
    #[error(
        "report data does not bind this session's nonce and keys (replayed or stale evidence, or \
         evidence for other keys)"
    )]
    ReportDataMismatch,
    /// Simulated evidence measured another function than the one claimed.
    #[error("evidence measured function {evidence:?} but the enclave claims {claimed:?}")]
    FunctionMismatch {
        /// Function in the evidence.
        evidence: Option<FunctionHash>,
        /// Function claimed in the binding.
        claimed: Option<FunctionHash>,
    },
}

/// Why attestation failed: the evidence, the binding or the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence is not genuine.
    #[error("evidence refused: {0}")]
    Evidence(#[from] EvidenceError),
    /// The evidence is genuine but bound to something else.
    #[error("binding refused: {0}")]
    Binding(#[from] BindingError),
    /// The evidence is genuine and bound, but the policy does not accept it.
    #[error("policy refused: {0}")]
    Policy(#[from] PolicyError),
}

impl AttestError {
    /// A short stable name of the failure class (for metrics and CLI output).
    pub fn class(&self) -> &'static str {
        match self {
            AttestError::Evidence(_) => "evidence",
            AttestError::Binding(BindingError::ReportDataMismatch) => "stale-or-replayed",
            AttestError::Binding(_) => "binding",
            AttestError::Policy(PolicyError::SimulatedNotAllowed) => "simulated-not-allowed",
            AttestError::Policy(PolicyError::MeasurementNotAllowed { .. }) => "wrong-measurement",
            AttestError::Policy(PolicyError::FunctionNotAllowed(_)) => "function-not-allowed",
            AttestError::Policy(_) => "policy",
        }
    }
}

/// The whole check: evidence genuine (at `now_s`), bound to `binding`, accepted by `policy`.
/// Simulated evidence under a policy without `allow_sim` is refused before anything else.
/// Returns the claims with the binding's role and function.
pub fn attest(
    policy: &Policy,
    evidence: &Evidence,
    binding: &Binding,
    now_s: u64,
) -> Result<Claims, AttestError> {
    if evidence.is_simulated() && !policy.allow_sim {
        return Err(PolicyError::SimulatedNotAllowed.into());
    }
    let mut claims = evidence.verify(&policy.anchors(), now_s)?;
    if claims.report_data != binding.report_data() {
        return Err(BindingError::ReportDataMismatch.into());
    }
    if claims.simulated && claims.function != binding.function {
        return Err(BindingError::FunctionMismatch {
            evidence: claims.function,
            claimed: binding.function,
        }
        .into());
    }
    claims.role = Some(binding.role);
    claims.function = binding.function;
    policy.check(&claims)?;
    Ok(claims)
}

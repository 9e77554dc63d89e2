//! Key distribution: the manager attests each worker, then issues it a writer certificate and
//! the capsule data key. Sans-IO: every step takes and returns bytes; time and entropy come from
//! the caller.
//!
//! ```text
//! manager (KeyDistributor)                          worker (WorkerEnrollment)
//!   challenge(tee, nonce, now) ── EnrollChallenge ──▶ request(tee, challenge, now)
//!     manager evidence over                             verifies the manager (its own policy)
//!     Binding{manager, channel key, nonce}              evidence over Binding{worker, channel
//!                                                       key, writer key, function, nonce}
//!   enroll(request, now, entropy) ◀─ EnrollRequest ──┘
//!     nonce outstanding (single use, expires)
//!     evidence + binding + policy; writer not revoked
//!     issue_certificate; data key HPKE-sealed (Auth mode, manager channel key)
//!                             ──── Grant ──────────▶ accept(grant, now) -> Provisioned
//! ```
//!
//! On any refusal `enroll` returns a [`Refusal`] and nothing else: no certificate, no sealed key.
//! The worker opens the grant only in HPKE Auth mode from the manager channel key it attested,
//! so a grant forged by anyone else (who could encrypt to the worker's public key) is refused.

use std::collections::{HashMap, HashSet, VecDeque};

use psl_capsule::{
    CapsuleMetadata, DataKey, OwnerKey, RevocationList, WriterCertificate, WriterId, WriterKeyPair,
    issue_certificate, issue_revocation_list,
};
use serde::{Deserialize, Serialize};

use crate::binding::{AttestError, Binding, attest};
use crate::evidence::{Claims, Evidence};
use crate::limits::{OUTSTANDING_NONCES_DEFAULT, REVOKED_WRITERS_MAX_DEFAULT};
use crate::policy::Policy;
use crate::prepare::{ManagerEndpoint, ManagerOffer};
use crate::seal::{self, ChannelKeyPair, SealError, Sealed};
use crate::tee::{Tee, TeeError};
use crate::types::{FunctionHash, Role};
use crate::wire::{self, WIRE_VERSION, WireError, versioned};

const HPKE_INFO_DATA_KEY: &[u8] = b"PSL trust v1 capsule data key";

/// Manager → worker: a fresh nonce with the manager's own evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollChallenge {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The manager's offer: nonce, channel key, evidence.
    pub manager: ManagerOffer,
}
versioned!(EnrollChallenge, "enroll challenge");

/// Worker → manager: keys, function and evidence binding them to the nonce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The manager's nonce.
    #[serde(with = "crate::hexser::array")]
    pub nonce: [u8; 32],
    /// The worker's HPKE channel public key.
    #[serde(with = "crate::hexser::array")]
    pub channel_key: [u8; 32],
    /// The worker's writer Ed25519 public key (to certify).
    #[serde(with = "crate::hexser::array")]
    pub writer_key: [u8; 32],
    /// The function the worker loaded, if any.
    pub function: Option<FunctionHash>,
    /// Evidence over the binding of all the above.
    pub evidence: Evidence,
}
versioned!(EnrollRequest, "enroll request");

/// Manager → worker: the certificate and the sealed data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The nonce of the enrollment.
    #[serde(with = "crate::hexser::array")]
    pub nonce: [u8; 32],
    /// The capsule metadata (canonical encoding).
    #[serde(with = "crate::hexser::vec")]
    pub metadata: Vec<u8>,
    /// The writer certificate (canonical encoding).
    #[serde(with = "crate::hexser::vec")]
    pub certificate: Vec<u8>,
    /// The data key, HPKE Auth mode from the manager's channel key to the worker's.
    pub data_key: Sealed,
}
versioned!(Grant, "grant");

fn grant_aad(nonce: &[u8; 32], metadata: &[u8], certificate: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("PSL trust v1 grant aad");
    hasher.update(nonce);
    hasher.update(&(metadata.len() as u64).to_le_bytes());
    hasher.update(metadata);
    hasher.update(certificate);
    *hasher.finalize().as_bytes()
}

/// Why the manager refused a worker. No key material leaves the manager with a refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The request does not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The nonce is not outstanding: never issued, already used, evicted or expired. A request
    /// replayed from an earlier enrollment ends here.
    #[error("nonce unknown, already used or expired (replayed or stale request)")]
    UnknownNonce,
    /// Attestation refused the worker.
    #[error("worker attestation refused: {0}")]
    Attest(#[from] AttestError),
    /// The writer key was revoked.
    #[error("writer {0} is revoked")]
    Revoked(WriterId),
    /// The writer key was already certified (a writer key serves one incarnation).
    #[error("writer {0} already holds a certificate")]
    AlreadyCertified(WriterId),
    /// The distributor tracks as many writers as allowed.
    #[error("too many certified writers (limit {0})")]
    TooManyWriters(usize),
    /// Sealing the data key failed (invalid worker channel key).
    #[error("sealing the data key: {0}")]
    Seal(#[from] SealError),
}

impl Refusal {
    /// A short stable name of the refusal (for metrics and logs).
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::Wire(_) => "malformed",
            Refusal::UnknownNonce => "stale-or-replayed",
            Refusal::Attest(error) => error.class(),
            Refusal::Revoked(_) => "revoked",
            Refusal::AlreadyCertified(_) => "already-certified",
            Refusal::TooManyWriters(_) => "too-many-writers",
            Refusal::Seal(_) => "seal",
        }
    }
}

/// Key distributor settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributorConfig {
    /// Lifetime of issued certificates (seconds; `not_after = now + lifetime`).
    pub certificate_lifetime_s: u64,
    /// How long a challenge nonce stays valid (seconds).
    pub nonce_lifetime_s: u64,
    /// Most outstanding nonces (the oldest is forgotten beyond).
    pub outstanding_nonces_max: usize,
    /// Most certified plus revoked writers tracked.
    pub writers_max: usize,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        DistributorConfig {
            certificate_lifetime_s: 24 * 3600,
            nonce_lifetime_s: 60,
            outstanding_nonces_max: OUTSTANDING_NONCES_DEFAULT,
            writers_max: REVOKED_WRITERS_MAX_DEFAULT,
        }
    }
}

/// What the manager knows about one certified writer.
#[derive(Clone, Debug)]
pub struct IssuedWriter {
    /// The certificate issued.
    pub certificate: WriterCertificate,
    /// The claims it was issued on.
    pub claims: Claims,
}

/// The manager's key distribution state machine.
pub struct KeyDistributor {
    policy: Policy,
    config: DistributorConfig,
    endpoint: ManagerEndpoint,
    owner: OwnerKey,
    metadata: CapsuleMetadata,
    data_key: DataKey,
    outstanding: HashMap<[u8; 32], u64>,
    order: VecDeque<[u8; 32]>,
    issued: HashMap<WriterId, IssuedWriter>,
    revoked: HashSet<WriterId>,
    revocation_serial: u64,
}

impl std::fmt::Debug for KeyDistributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDistributor")
            .field("capsule", &self.metadata.id())
            .field("outstanding", &self.outstanding.len())
            .field("issued", &self.issued.len())
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl KeyDistributor {
    /// A distributor for the capsule `metadata`, holding its owner key and data key, accepting
    /// workers by `policy`, speaking through `endpoint` (the manager's channel key).
    pub fn new(
        policy: Policy,
        config: DistributorConfig,
        endpoint: ManagerEndpoint,
        owner: OwnerKey,
        metadata: CapsuleMetadata,
        data_key: DataKey,
    ) -> Self {
        KeyDistributor {
            policy,
            config,
            endpoint,
            owner,
            metadata,
            data_key,
            outstanding: HashMap::new(),
            order: VecDeque::new(),
            issued: HashMap::new(),
            revoked: HashSet::new(),
            revocation_serial: 0,
        }
    }

    /// The capsule metadata.
    pub fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Writers certified so far (and not revoked).
    pub fn issued(&self) -> impl Iterator<Item = &IssuedWriter> {
        self.issued
            .values()
            .filter(|issued| !self.revoked.contains(&issued.certificate.writer))
    }

    /// Issues a challenge with a fresh `nonce` (32 bytes from a CSPRNG) at `now_s`, with the
    /// manager's evidence from `tee`.
    pub fn challenge(
        &mut self,
        tee: &dyn Tee,
        nonce: [u8; 32],
        now_s: u64,
    ) -> Result<Vec<u8>, TeeError> {
        let offer = self
            .endpoint
            .offer(tee, nonce)
            .map_err(|error| match error {
                crate::prepare::PrepareError::Tee(error) => error,
                other => TeeError::Protocol(other.to_string()),
            })?;
        if self.outstanding.insert(nonce, now_s).is_none() {
            self.order.push_back(nonce);
        }
        while self.order.len() > self.config.outstanding_nonces_max.max(1) {
            if let Some(oldest) = self.order.pop_front() {
                self.outstanding.remove(&oldest);
            }
        }
        Ok(wire::encode(&EnrollChallenge {
            version: WIRE_VERSION,
            manager: offer,
        }))
    }

    fn take_nonce(&mut self, nonce: &[u8; 32], now_s: u64) -> Result<(), Refusal> {
        let issued_at = self
            .outstanding
            .remove(nonce)
            .ok_or(Refusal::UnknownNonce)?;
        self.order.retain(|queued| queued != nonce);
        if now_s > issued_at.saturating_add(self.config.nonce_lifetime_s) || now_s < issued_at {
            return Err(Refusal::UnknownNonce);
        }
        Ok(())
    }

    /// Verifies a worker's request at `now_s` and, if everything holds, returns the grant: a
    /// certificate valid from `now_s` for the configured lifetime and the data key sealed to the
    /// worker (`entropy`: 32 bytes from a CSPRNG). The nonce is consumed whatever the outcome.
    pub fn enroll(
        &mut self,
        request: &[u8],
        now_s: u64,
        entropy: [u8; 32],
    ) -> Result<(Vec<u8>, IssuedWriter), Refusal> {
        let request: EnrollRequest = wire::decode(request)?;
        self.take_nonce(&request.nonce, now_s)?;
        let binding = Binding {
            role: Role::Worker,
            channel_key: request.channel_key,
            writer_key: Some(request.writer_key),
            function: request.function,
            nonce: request.nonce,
        };
        let claims = attest(&self.policy, &request.evidence, &binding, now_s)?;
        let writer = psl_capsule::keys::writer_id_of(&request.writer_key);
        if self.revoked.contains(&writer) {
            return Err(Refusal::Revoked(writer));
        }
        if self.issued.contains_key(&writer) {
            return Err(Refusal::AlreadyCertified(writer));
        }
        if self.issued.len().saturating_add(self.revoked.len()) >= self.config.writers_max {
            return Err(Refusal::TooManyWriters(self.config.writers_max));
        }
        let certificate = issue_certificate(
            &self.owner,
            &self.metadata,
            request.writer_key,
            claims
                .measurement
                .certificate_digest(claims.function.as_ref()),
            now_s,
            now_s.saturating_add(self.config.certificate_lifetime_s),
        );
        let metadata = self.metadata.encode();
        let certificate_bytes = certificate.encode();
        let sealed = seal::seal(
            &request.channel_key,
            Some(self.endpoint.channel()),
            HPKE_INFO_DATA_KEY,
            &grant_aad(&request.nonce, &metadata, &certificate_bytes),
            self.data_key.expose_secret(),
            entropy,
        )?;
        let issued = IssuedWriter {
            certificate,
            claims,
        };
        self.issued.insert(writer, issued.clone());
        let grant = wire::encode(&Grant {
            version: WIRE_VERSION,
            nonce: request.nonce,
            metadata,
            certificate: certificate_bytes,
            data_key: sealed,
        });
        Ok((grant, issued))
    }

    /// Revokes a writer and returns the new owner-signed revocation list, to publish to every
    /// verifier (`CapsuleVerifier::apply_revocations`). `None` if the list would exceed the
    /// writer limit.
    pub fn revoke(&mut self, writer: WriterId) -> Option<RevocationList> {
        if !self.revoked.contains(&writer) && self.revoked.len() >= self.config.writers_max {
            return None;
        }
        self.revoked.insert(writer);
        self.issued.remove(&writer);
        self.revocation_serial = self.revocation_serial.saturating_add(1);
        self.revocation_list()
    }

    /// The current owner-signed revocation list.
    pub fn revocation_list(&self) -> Option<RevocationList> {
        issue_revocation_list(
            &self.owner,
            &self.metadata,
            self.revocation_serial,
            self.revoked.iter().copied(),
        )
    }

    /// Whether `writer` is revoked.
    pub fn is_revoked(&self, writer: &WriterId) -> bool {
        self.revoked.contains(writer)
    }
}

/// Why a worker's enrollment failed on its side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// A message does not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The manager's attestation was refused by the worker's policy.
    #[error("manager attestation refused: {0}")]
    Manager(#[from] AttestError),
    /// The TEE could not produce evidence.
    #[error("TEE: {0}")]
    Tee(#[from] TeeError),
    /// The grant answers another enrollment.
    #[error("grant answers another nonce")]
    WrongNonce,
    /// The grant's metadata or certificate do not decode.
    #[error("grant: {0}")]
    Decode(#[from] psl_capsule::DecodeError),
    /// The capsule is not the one this worker was configured for.
    #[error("grant is for capsule {found}, expected {expected}")]
    WrongCapsule {
        /// Expected capsule.
        expected: psl_capsule::CapsuleId,
        /// Capsule in the grant.
        found: psl_capsule::CapsuleId,
    },
    /// The certificate is not for this worker's writer key, or does not verify.
    #[error("grant certificate: {0}")]
    Certificate(String),
    /// The sealed data key does not open from the attested manager.
    #[error("data key: {0}")]
    Seal(#[from] SealError),
}

/// A worker before it has keys. It can ask for them, and nothing else.
pub struct WorkerEnrollment {
    policy: Policy,
    capsule: Option<psl_capsule::CapsuleId>,
    channel: ChannelKeyPair,
    writer: WriterKeyPair,
    function: Option<FunctionHash>,
}

impl std::fmt::Debug for WorkerEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnrollment")
            .field("writer", &self.writer.writer_id())
            .field("function", &self.function)
            .finish_non_exhaustive()
    }
}

/// A worker's enrollment after it sent its request: waits for the grant.
pub struct PendingEnrollment {
    enrollment: WorkerEnrollment,
    nonce: [u8; 32],
    manager_key: [u8; 32],
    manager_claims: Claims,
}

impl std::fmt::Debug for PendingEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingEnrollment")
            .field("enrollment", &self.enrollment)
            .field("manager", &self.manager_claims.measurement)
            .finish_non_exhaustive()
    }
}

impl WorkerEnrollment {
    /// A worker incarnation with fresh keys from two 32-byte seeds (from a CSPRNG, drawn inside
    /// the enclave at every start), the function it loaded, and the policy by which it accepts a
    /// manager. `capsule` pins the capsule it expects keys for (recommended).
    pub fn new(
        policy: Policy,
        capsule: Option<psl_capsule::CapsuleId>,
        channel_seed: &[u8; 32],
        writer_seed: &[u8; 32],
        function: Option<FunctionHash>,
    ) -> Self {
        WorkerEnrollment {
            policy,
            capsule,
            channel: ChannelKeyPair::from_seed(channel_seed),
            writer: WriterKeyPair::from_seed(writer_seed),
            function,
        }
    }

    /// This incarnation's writer id.
    pub fn writer_id(&self) -> WriterId {
        self.writer.writer_id()
    }

    /// Verifies the manager's challenge at `now_s` (manager evidence, bound to its channel key
    /// and nonce, accepted by this worker's policy) and answers with evidence over this
    /// worker's binding.
    pub fn request(
        self,
        tee: &dyn Tee,
        challenge: &[u8],
        now_s: u64,
    ) -> Result<(Vec<u8>, PendingEnrollment), EnrollError> {
        let challenge: EnrollChallenge = wire::decode(challenge)?;
        let offer = challenge.manager;
        let manager_binding = Binding {
            role: Role::Manager,
            channel_key: offer.channel_key,
            writer_key: None,
            function: None,
            nonce: offer.nonce,
        };
        let manager_claims = attest(&self.policy, &offer.evidence, &manager_binding, now_s)?;
        let binding = Binding {
            role: Role::Worker,
            channel_key: self.channel.public_key(),
            writer_key: Some(self.writer.public_key()),
            function: self.function,
            nonce: offer.nonce,
        };
        let request = EnrollRequest {
            version: WIRE_VERSION,
            nonce: offer.nonce,
            channel_key: self.channel.public_key(),
            writer_key: self.writer.public_key(),
            function: self.function,
            evidence: tee.evidence(binding.report_data())?,
        };
        Ok((
            wire::encode(&request),
            PendingEnrollment {
                enrollment: self,
                nonce: offer.nonce,
                manager_key: offer.channel_key,
                manager_claims,
            },
        ))
    }
}

impl PendingEnrollment {
    /// The manager's verified claims.
    pub fn manager_claims(&self) -> &Claims {
        &self.manager_claims
    }

    /// Opens the grant at `now_s`: the certificate must be for this writer key, signed by the
    /// capsule owner and valid now; the data key must open in HPKE Auth mode from the attested
    /// manager's channel key.
    pub fn accept(self, grant: &[u8], now_s: u64) -> Result<Provisioned, EnrollError> {
        let grant: Grant = wire::decode(grant)?;
        if grant.nonce != self.nonce {
            return Err(EnrollError::WrongNonce);
        }
        let metadata = CapsuleMetadata::decode(&grant.metadata)?;
        if let Some(expected) = self.enrollment.capsule
            && expected != metadata.id()
        {
            return Err(EnrollError::WrongCapsule {
                expected,
                found: metadata.id(),
            });
        }
        let certificate = WriterCertificate::decode(&grant.certificate)?;
        if certificate.writer_public_key != self.enrollment.writer.public_key() {
            return Err(EnrollError::Certificate(
                "certificate is for another writer key".into(),
            ));
        }
        certificate
            .check(&metadata, now_s)
            .map_err(|error| EnrollError::Certificate(error.to_string()))?;
        let key = seal::open(
            &self.enrollment.channel,
            Some(&self.manager_key),
            HPKE_INFO_DATA_KEY,
            &grant_aad(&self.nonce, &grant.metadata, &grant.certificate),
            &grant.data_key,
        )?;
        let bytes: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| EnrollError::Certificate("data key must be 32 bytes".into()))?;
        Ok(Provisioned {
            writer: self.enrollment.writer,
            certificate,
            metadata,
            data_key: DataKey::from_bytes(bytes),
            function: self.enrollment.function,
            manager_claims: self.manager_claims,
        })
    }
}

/// A worker that received its keys. Only [`PendingEnrollment::accept`] constructs it, so code
/// that needs keys (sealing records, opening others') takes a `Provisioned` and a worker without
/// keys cannot run anything.
pub struct Provisioned {
    writer: WriterKeyPair,
    certificate: WriterCertificate,
    metadata: CapsuleMetadata,
    data_key: DataKey,
    function: Option<FunctionHash>,
    manager_claims: Claims,
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("writer", &self.writer.writer_id())
            .field("capsule", &self.metadata.id())
            .field("not_after_s", &self.certificate.not_after_s)
            .finish_non_exhaustive()
    }
}

/// The parts of a [`Provisioned`] worker, to hand to the SCL (`CapsuleWriter::start`, the
/// verifier, the replica).
pub struct ProvisionedParts {
    /// The writer key pair of this incarnation.
    pub writer: WriterKeyPair,
    /// Its certificate.
    pub certificate: WriterCertificate,
    /// The capsule metadata.
    pub metadata: CapsuleMetadata,
    /// The capsule data key.
    pub data_key: DataKey,
}

impl Provisioned {
    /// The writer id.
    pub fn writer_id(&self) -> WriterId {
        self.writer.writer_id()
    }

    /// The certificate.
    pub fn certificate(&self) -> &WriterCertificate {
        &self.certificate
    }

    /// The capsule metadata.
    pub fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    /// The data key.
    pub fn data_key(&self) -> &DataKey {
        &self.data_key
    }

    /// The function this worker may run.
    pub fn function(&self) -> Option<FunctionHash> {
        self.function
    }

    /// The manager's verified claims.
    pub fn manager_claims(&self) -> &Claims {
        &self.manager_claims
    }

    /// Checks that a module about to be compiled is the function this worker was attested
    /// and certified for (functions are named by hash; check before compiling).
    pub fn check_function(&self, module: &[u8]) -> Result<FunctionHash, FunctionMismatch> {
        let found = FunctionHash::of_module(module);
        match self.function {
            Some(expected) if expected == found => Ok(found),
            expected => Err(FunctionMismatch { expected, found }),
        }
    }

    /// Takes the keys out.
    pub fn into_parts(self) -> ProvisionedParts {
        ProvisionedParts {
            writer: self.writer,
            certificate: self.certificate,
            metadata: self.metadata,
            data_key: self.data_key,
        }
    }
}

/// A module that is not the function the worker was provisioned for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module hash {found} is not the provisioned function {expected:?}")]
pub struct FunctionMismatch {
    /// The provisioned function.
    pub expected: Option<FunctionHash>,
    /// The module's hash.
    pub found: FunctionHash,
}

//! Trust for the embedded cluster: the flow of `docs/trust.md` run in one process.
//!
//! 1. **Prepare.** The application owner (here: the process that starts the cluster) draws
//!    the owner secret, challenges the manager with a fresh nonce, verifies the manager's
//!    evidence against the policy (bound to the manager's channel key and the nonce), and
//!    HPKE-seals the owner secret to that key. Only the manager opens it; from it the manager
//!    derives the capsule's owner key and data key.
//! 2. **Key distribution.** Every worker incarnation draws fresh channel and writer keys,
//!    verifies the manager's evidence, and sends its own evidence; the manager's
//!    [`KeyDistributor`] checks it against the policy and answers with a writer certificate and
//!    the data key sealed to the worker. A worker without that grant has no keys and runs
//!    nothing ([`psl_trust::Provisioned`] exists only after a verified grant).
//! 3. **Functions by hash.** Embedded workers are general-purpose: each is attested as the
//!    worker binary (no function in its evidence) and runs any deployed function the policy
//!    allows. [`ManagerTrust::check_function`] checks a module's hash before it is compiled:
//!    when the policy lists `functions`, only those hashes may be deployed. (A policy with
//!    `pin_functions` asks for workers attested per function, as in the research system; the
//!    embedded cluster does not run that mode, and enrollment refuses with `FunctionRequired`.)
//!
//! On these machines there is no TEE: the backend is [`SimTee`], which says so everywhere
//! (banner, evidence, claims) and is accepted only because the generated development policy
//! allows it and pins its simulated root. A strict policy refuses it, and no key is issued.

use psl_capsule::{CapsuleId, CapsuleMetadata, DataKey, OwnerKey};
use psl_trust::{
    BinaryIdentity, Claims, DistributorConfig, FunctionHash, KeyDistributor, ManagerEndpoint,
    OwnerSecret, Policy, PrepareClient, ProvisionedParts, SimRootKey, SimTee, Tee,
    WorkerEnrollment,
};
use zeroize::Zeroizing;

/// Certificates issued to embedded workers live this long (a restarted worker gets a new one).
pub const CERTIFICATE_LIFETIME_S: u64 = 30 * 86_400;

/// Why the trust flow refused or failed. No key left the manager.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The client refused the manager (prepare phase).
    #[error("prepare phase: {0}")]
    Prepare(#[from] psl_trust::PrepareError),
    /// A worker refused the manager or the grant.
    #[error("worker enrollment: {0}")]
    Enroll(#[from] psl_trust::EnrollError),
    /// The manager refused a worker.
    #[error("manager refused the worker: {0}")]
    Refused(#[from] psl_trust::Refusal),
    /// The TEE could not produce evidence.
    #[error("TEE: {0}")]
    Tee(#[from] psl_trust::TeeError),
    /// The policy does not allow this function.
    #[error("function {0} is not allowed by the policy")]
    FunctionNotAllowed(String),
    /// The capsule could not be created.
    #[error("capsule: {0}")]
    Capsule(String),
    /// No system randomness.
    #[error("no system randomness")]
    Randomness,
}

/// 32 bytes from the system CSPRNG.
pub(crate) fn random() -> Result<[u8; 32], TrustError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| TrustError::Randomness)?;
    Ok(seed)
}

/// Unix time in seconds (0 if the clock is before 1970).
pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The TEEs and policy of a cluster whose enclaves are simulated.
pub struct SimTrust {
    /// The policy every party checks evidence with.
    pub policy: Policy,
    manager_tee: SimTee,
    worker_tee: SimTee,
}

impl SimTrust {
    /// A fresh simulated root, the manager's and workers' simulated TEEs, and the development
    /// policy: simulation allowed for this root only, the manager's and workers' measurements
    /// pinned, any function allowed (set `policy.pin_functions` to restrict them).
    pub fn generate() -> Result<Self, TrustError> {
        Self::from_root_seed(&random()?)
    }

    /// [`Self::generate`] from the seed of the simulated root: every process of a cluster-mode
    /// deployment given the same seed gets the same simulated hardware, measurements and
    /// policy (the seed stands for the TEE vendor's root of trust; keep it with the operator).
    pub fn from_root_seed(seed: &[u8; 32]) -> Result<Self, TrustError> {
        let root = SimRootKey::from_seed(seed);
        let version = env!("CARGO_PKG_VERSION");
        let manager_tee = SimTee::new(&root, BinaryIdentity::named("psl-manager", version), None);
        let worker_tee = SimTee::new(&root, BinaryIdentity::named("psl-worker", version), None);
        let mut policy = Policy::strict();
        policy.allow_sim = true;
        policy.sim_roots.push(root.public_key());
        policy.manager.measurements.push(manager_tee.measurement()?);
        policy.worker.measurements.push(worker_tee.measurement()?);
        Ok(Self {
            policy,
            manager_tee,
            worker_tee,
        })
    }

    /// The same TEEs checked under another policy (tests: a strict one must refuse them).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// What the TEE says about itself on start.
    pub fn banner(&self) -> String {
        self.manager_tee.banner()
    }

    /// Starts a worker incarnation's side of enrollment (cluster mode): fresh channel and
    /// writer keys, the manager's `challenge` verified against the policy (and `capsule`, if
    /// known), and this worker's evidence. Send the request; `accept` the manager's grant.
    pub fn worker_request(
        &self,
        capsule: Option<CapsuleId>,
        challenge: &[u8],
    ) -> Result<(Vec<u8>, psl_trust::PendingEnrollment), TrustError> {
        let enrollment =
            WorkerEnrollment::new(self.policy.clone(), capsule, &random()?, &random()?, None);
        Ok(enrollment.request(&self.worker_tee, challenge, now_s())?)
    }
}

/// Finishes a worker's enrollment with the manager's grant: its keys, certificate and data key.
pub fn worker_accept(
    pending: psl_trust::PendingEnrollment,
    grant: &[u8],
) -> Result<ProvisionedParts, TrustError> {
    Ok(pending.accept(grant, now_s())?.into_parts())
}

/// The manager's trust state after the prepare phase: the owner secret, the key distributor and
/// the TEEs.
pub struct ManagerTrust {
    policy: Policy,
    manager_tee: SimTee,
    worker_tee: SimTee,
    channel_seed: Zeroizing<[u8; 32]>,
    secret: OwnerSecret,
    distributor: KeyDistributor,
    manager_claims: Claims,
    enrolled: u64,
}

impl ManagerTrust {
    /// Runs the prepare phase: the owner attests the manager and provisions the owner secret;
    /// the manager derives the capsule (named `name`, created with `params`) and sets up key
    /// distribution. Returns the state and the capsule metadata.
    pub fn prepare(
        trust: SimTrust,
        name: &str,
        params: psl_capsule::CreationParams,
    ) -> Result<(Self, CapsuleMetadata), TrustError> {
        let now = now_s();
        let channel_seed = Zeroizing::new(random()?);
        let endpoint = ManagerEndpoint::new(&channel_seed);
        // The owner's side.
        let owner_secret = OwnerSecret::from_bytes(random()?);
        let client = PrepareClient::new(trust.policy.clone(), random()?);
        let (offer, session) = endpoint.respond(&trust.manager_tee, &client.challenge())?;
        let attested = client.verify_offer(&offer, now)?;
        let sealed = attested.seal_owner_secret(&owner_secret, random()?)?;
        drop(owner_secret);
        // The manager's side.
        let secret = session.open(&endpoint, &sealed)?;
        let owner = secret.owner_key();
        let metadata = CapsuleMetadata::new(owner.public_key(), name, params)
            .map_err(|e| TrustError::Capsule(e.to_string()))?;
        let config = DistributorConfig {
            certificate_lifetime_s: CERTIFICATE_LIFETIME_S,
            ..DistributorConfig::default()
        };
        let distributor = KeyDistributor::new(
            trust.policy.clone(),
            config,
            endpoint,
            owner,
            metadata.clone(),
            secret.data_key(&metadata.id()),
        );
        Ok((
            Self {
                policy: trust.policy,
                manager_tee: trust.manager_tee,
                worker_tee: trust.worker_tee,
                channel_seed,
                secret,
                distributor,
                manager_claims: attested.claims().clone(),
                enrolled: 0,
            },
            metadata,
        ))
    }

    /// The owner key (the manager certifies its own chain with it).
    pub fn owner_key(&self) -> OwnerKey {
        self.secret.owner_key()
    }

    /// The capsule data key (for the manager's own chain).
    pub fn data_key(&self, capsule: &CapsuleId) -> DataKey {
        self.secret.data_key(capsule)
    }

    /// What the owner verified about the manager.
    pub fn manager_claims(&self) -> &Claims {
        &self.manager_claims
    }

    /// Workers enrolled so far.
    pub fn enrolled(&self) -> u64 {
        self.enrolled
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Enrolls a new worker incarnation: fresh keys, mutual attestation, certificate and data
    /// key. Refused (with no key issued) if the worker's evidence does not satisfy the policy.
    pub fn enroll_worker(&mut self, capsule: CapsuleId) -> Result<ProvisionedParts, TrustError> {
        let now = now_s();
        let challenge = self
            .distributor
            .challenge(&self.manager_tee, random()?, now)?;
        let enrollment = WorkerEnrollment::new(
            self.policy.clone(),
            Some(capsule),
            &random()?,
            &random()?,
            None,
        );
        let (request, pending) = enrollment.request(&self.worker_tee, &challenge, now)?;
        let (grant, _issued) = self.distributor.enroll(&request, now, random()?)?;
        let provisioned = pending.accept(&grant, now)?;
        self.enrolled += 1;
        Ok(provisioned.into_parts())
    }

    /// A fresh enrollment challenge with the manager's evidence (cluster mode: sent to a worker
    /// that asked to enroll).
    pub fn challenge(&mut self) -> Result<Vec<u8>, TrustError> {
        Ok(self
            .distributor
            .challenge(&self.manager_tee, random()?, now_s())?)
    }

    /// Verifies a worker's enrollment request against the policy and answers with its grant
    /// (certificate, and the data key sealed to the worker); returns the writer id certified.
    pub fn enroll_request(
        &mut self,
        request: &[u8],
    ) -> Result<(Vec<u8>, psl_capsule::WriterId), TrustError> {
        let (grant, issued) = self.distributor.enroll(request, now_s(), random()?)?;
        self.enrolled += 1;
        Ok((grant, issued.certificate.writer))
    }

    /// Revokes a writer: returns the owner-signed revocation list to apply at every verifier
    /// (`None` if the revocation table is full).
    pub fn revoke(&mut self, writer: psl_capsule::WriterId) -> Option<psl_capsule::RevocationList> {
        self.distributor.revoke(writer)
    }

    /// The current revocation list, if anything was revoked.
    pub fn revocation_list(&self) -> Option<psl_capsule::RevocationList> {
        self.distributor.revocation_list()
    }

    /// Answers a client's prepare challenge (`psl attest`): the manager's evidence bound to its
    /// channel key and the client's nonce.
    pub fn offer(&self, challenge: &[u8]) -> Result<Vec<u8>, TrustError> {
        let endpoint = ManagerEndpoint::new(&self.channel_seed);
        let (offer, _session) = endpoint.respond(&self.manager_tee, challenge)?;
        Ok(offer)
    }

    /// Applies the policy's list of functions to a module about to be compiled (an empty list
    /// allows any).
    pub fn check_function(&self, module: &[u8]) -> Result<FunctionHash, TrustError> {
        let hash = FunctionHash::of_module(module);
        if !self.policy.functions.is_empty() && !self.policy.functions.contains_key(&hash) {
            return Err(TrustError::FunctionNotAllowed(hash.to_string()));
        }
        Ok(hash)
    }
}

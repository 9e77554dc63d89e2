//! The prepare phase: the client (application owner) attests the manager and provisions the
//! application's owner secret to it.
//!
//! ```text
//! client                                   manager (enclave)
//!   PrepareClient::new(policy, nonce)
//!   challenge() ───── PrepareChallenge ───▶ ManagerEndpoint::respond(tee, challenge)
//!                                              evidence over Binding{manager, channel key, nonce}
//!   verify_offer(offer, now) ◀─ ManagerOffer ─┘
//!     evidence + binding + policy
//!   AttestedManager::seal_owner_secret ─ SealedOwnerSecret ─▶ PrepareSession::open
//!     HPKE to the attested channel key          -> OwnerSecret
//! ```
//!
//! Everything is sans-IO: functions take and return bytes; nonces and HPKE entropy come from the
//! caller. The manager's channel key is bound into the report data, so the client seals only to
//! the enclave whose evidence it verified; its fresh nonce makes replayed offers fail the
//! binding check.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::binding::{AttestError, Binding, attest};
use crate::evidence::{Claims, Evidence};
use crate::policy::Policy;
use crate::seal::{self, ChannelKeyPair, SealError, Sealed};
use crate::tee::{Tee, TeeError};
use crate::types::Role;
use crate::wire::{self, WIRE_VERSION, WireError, versioned};

const HPKE_INFO_OWNER_SECRET: &[u8] = b"PSL trust v1 owner secret";

/// The application's owner secret (32 bytes): the root from which the capsule owner key and
/// data key derive (`psl_capsule::OwnerKey::from_root_secret`,
/// `psl_capsule::DataKey::from_root_secret`).
pub struct OwnerSecret(Zeroizing<[u8; 32]>);

impl OwnerSecret {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        OwnerSecret(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The capsule owner (certificate signing) key derived from this secret.
    pub fn owner_key(&self) -> psl_capsule::OwnerKey {
        psl_capsule::OwnerKey::from_root_secret(&self.0)
    }

    /// The data key of `capsule` derived from this secret.
    pub fn data_key(&self, capsule: &psl_capsule::CapsuleId) -> psl_capsule::DataKey {
        psl_capsule::DataKey::from_root_secret(&self.0, capsule)
    }
}

impl std::fmt::Debug for OwnerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerSecret(..)")
    }
}

/// Client → manager: a fresh nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareChallenge {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The client's fresh nonce.
    #[serde(with = "crate::hexser::array")]
    pub nonce: [u8; 32],
}
versioned!(PrepareChallenge, "prepare challenge");

/// Manager → client: its channel key and evidence binding it to the nonce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerOffer {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The nonce answered.
    #[serde(with = "crate::hexser::array")]
    pub nonce: [u8; 32],
    /// The manager's HPKE channel public key.
    #[serde(with = "crate::hexser::array")]
    pub channel_key: [u8; 32],
    /// Evidence over `Binding { manager, channel_key, nonce }`.
    pub evidence: Evidence,
}
versioned!(ManagerOffer, "manager offer");

/// Client → manager: the owner secret sealed to the attested channel key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedOwnerSecret {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// The session's nonce.
    #[serde(with = "crate::hexser::array")]
    pub nonce: [u8; 32],
    /// HPKE (base mode) to the manager's channel key; AAD = nonce || channel key.
    pub sealed: Sealed,
}
versioned!(SealedOwnerSecret, "sealed owner secret");

/// Why the prepare phase failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// A message does not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The offer answers another nonce (a replayed or misrouted offer).
    #[error("offer answers another nonce (replayed or misrouted)")]
    WrongNonce,
    /// Attestation refused the manager.
    #[error("manager attestation refused: {0}")]
    Attest(#[from] AttestError),
    /// The TEE could not produce evidence.
    #[error("TEE: {0}")]
    Tee(#[from] TeeError),
    /// Sealing or opening failed.
    #[error("sealing: {0}")]
    Seal(#[from] SealError),
    /// The opened secret has the wrong length.
    #[error("owner secret must be 32 bytes")]
    SecretLength,
}

fn owner_secret_aad(nonce: &[u8; 32], channel_key: &[u8; 32]) -> [u8; 64] {
    let mut aad = [0u8; 64];
    let (first, second) = aad.split_at_mut(32);
    first.copy_from_slice(nonce);
    second.copy_from_slice(channel_key);
    aad
}

/// The client side of the prepare phase.
#[derive(Clone, Debug)]
pub struct PrepareClient {
    policy: Policy,
    nonce: [u8; 32],
}

impl PrepareClient {
    /// A session with a fresh `nonce` (32 bytes from a CSPRNG; never reuse one).
    pub fn new(policy: Policy, nonce: [u8; 32]) -> Self {
        PrepareClient { policy, nonce }
    }

    /// The challenge to send to the manager.
    pub fn challenge(&self) -> Vec<u8> {
        wire::encode(&PrepareChallenge {
            version: WIRE_VERSION,
            nonce: self.nonce,
        })
    }

    /// Verifies the manager's offer at `now_s`: evidence genuine, bound to this session's nonce
    /// and the offered channel key, accepted by the policy as a manager.
    pub fn verify_offer(&self, offer: &[u8], now_s: u64) -> Result<AttestedManager, PrepareError> {
        let offer: ManagerOffer = wire::decode(offer)?;
        let binding = Binding {
            role: Role::Manager,
            channel_key: offer.channel_key,
            writer_key: None,
            function: None,
            nonce: self.nonce,
        };
        // The binding check below covers a wrong nonce too; checking the echoed nonce first
        // only gives a clearer reason. The verdict rests on the report data.
        let claims = attest(&self.policy, &offer.evidence, &binding, now_s)?;
        if offer.nonce != self.nonce {
            return Err(PrepareError::WrongNonce);
        }
        Ok(AttestedManager {
            claims,
            channel_key: offer.channel_key,
            nonce: self.nonce,
        })
    }
}

/// A manager whose evidence verified: the only way to get a key to seal the owner secret to.
#[derive(Clone, Debug)]
pub struct AttestedManager {
    claims: Claims,
    channel_key: [u8; 32],
    nonce: [u8; 32],
}

impl AttestedManager {
    /// What the evidence says (print it: it says SIMULATED TEE when simulated).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The attested channel key.
    pub fn channel_key(&self) -> [u8; 32] {
        self.channel_key
    }

    /// Seals the owner secret to the attested manager (HPKE base mode; `entropy` from a
    /// CSPRNG).
    pub fn seal_owner_secret(
        &self,
        secret: &OwnerSecret,
        entropy: [u8; 32],
    ) -> Result<Vec<u8>, PrepareError> {
        let sealed = seal::seal(
            &self.channel_key,
            None,
            HPKE_INFO_OWNER_SECRET,
            &owner_secret_aad(&self.nonce, &self.channel_key),
            secret.expose_secret(),
            entropy,
        )?;
        Ok(wire::encode(&SealedOwnerSecret {
            version: WIRE_VERSION,
            nonce: self.nonce,
            sealed,
        }))
    }
}

/// The manager's long-lived channel identity.
pub struct ManagerEndpoint {
    key: ChannelKeyPair,
}

impl std::fmt::Debug for ManagerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagerEndpoint({:?})", self.key)
    }
}

impl ManagerEndpoint {
    /// An endpoint whose channel key derives from `channel_seed` (32 bytes from a CSPRNG,
    /// drawn inside the enclave at start).
    pub fn new(channel_seed: &[u8; 32]) -> Self {
        ManagerEndpoint {
            key: ChannelKeyPair::from_seed(channel_seed),
        }
    }

    /// The channel key pair (the key distributor seals grants with it, HPKE Auth mode).
    pub fn channel(&self) -> &ChannelKeyPair {
        &self.key
    }

    /// Evidence over `Binding { manager, channel key, nonce }` as a [`ManagerOffer`].
    pub fn offer(&self, tee: &dyn Tee, nonce: [u8; 32]) -> Result<ManagerOffer, PrepareError> {
        let binding = Binding {
            role: Role::Manager,
            channel_key: self.key.public_key(),
            writer_key: None,
            function: None,
            nonce,
        };
        Ok(ManagerOffer {
            version: WIRE_VERSION,
            nonce,
            channel_key: self.key.public_key(),
            evidence: tee.evidence(binding.report_data())?,
        })
    }

    /// Answers a client's challenge; keep the session to open the sealed secret.
    pub fn respond(
        &self,
        tee: &dyn Tee,
        challenge: &[u8],
    ) -> Result<(Vec<u8>, PrepareSession), PrepareError> {
        let challenge: PrepareChallenge = wire::decode(challenge)?;
        let offer = self.offer(tee, challenge.nonce)?;
        Ok((
            wire::encode(&offer),
            PrepareSession {
                nonce: challenge.nonce,
            },
        ))
    }
}

/// One prepare session on the manager side.
#[derive(Clone, Debug)]
pub struct PrepareSession {
    nonce: [u8; 32],
}

impl PrepareSession {
    /// Opens the client's sealed owner secret.
    pub fn open(
        self,
        endpoint: &ManagerEndpoint,
        sealed: &[u8],
    ) -> Result<OwnerSecret, PrepareError> {
        let message: SealedOwnerSecret = wire::decode(sealed)?;
        if message.nonce != self.nonce {
            return Err(PrepareError::WrongNonce);
        }
        let plaintext = seal::open(
            &endpoint.key,
            None,
            HPKE_INFO_OWNER_SECRET,
            &owner_secret_aad(&self.nonce, &endpoint.key.public_key()),
            &message.sealed,
        )?;
        let bytes: [u8; 32] = plaintext
            .as_slice()
            .try_into()
            .map_err(|_| PrepareError::SecretLength)?;
        Ok(OwnerSecret::from_bytes(bytes))
    }
}

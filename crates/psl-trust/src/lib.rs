//! PSL trust layer: TEE backends, attestation evidence and its verification, the application's
//! policy, the client's prepare phase and the manager's key distribution.
//!
//! * [`Tee`]: what an enclave says about itself. Backends: [`SimTee`] (software only, loud
//!   about it), [`collect::TsmTee`] (Linux configfs-tsm: SEV-SNP and TDX guests) and
//!   [`collect::GramineTee`] (Gramine `/dev/attestation`: SGX).
//! * [`Evidence`] and [`Evidence::verify`]: simulated evidence (Ed25519 by a pinned simulated
//!   root), SEV-SNP reports (`sev`: ARK → ASK → VCEK → report), SGX and TDX DCAP quotes
//!   (`dcap-qvl` with collateral). Verified evidence gives [`Claims`].
//! * [`binding`]: report data = hash of role, channel key, writer key, function and nonce, so
//!   evidence is bound to one session's keys and cannot be replayed.
//! * [`Policy`]: expected measurements per role and per function, TCB levels, `allow_sim`,
//!   function pinning; [`Policy::check`] names the rule a refusal broke.
//! * [`prepare`]: client attests the manager, HPKE-seals the owner secret to it.
//! * [`distribute`]: manager attests workers, issues writer certificates and the data key
//!   ([`KeyDistributor`]); a worker only gets [`Provisioned`] keys through a verified grant.
//!
//! Everything except the collectors is sans-IO: bytes in, bytes out; time (`now_s`), nonces and
//! HPKE entropy come from the caller. Nothing panics on untrusted input, and every input has a
//! size limit ([`limits`]). The flow and formats are documented in `docs/trust.md`.
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "tests may panic on failure"
    )
)]

pub mod binding;
pub mod collect;
mod dcap;
mod dcap_format;
pub mod distribute;
pub mod evidence;
mod hexser;
pub mod limits;
pub mod policy;
pub mod prepare;
pub mod seal;
pub mod sim;
pub mod snp;
pub mod tee;
pub mod types;
mod wire;

pub use binding::{AttestError, Binding, BindingError, attest};
pub use distribute::{
    DistributorConfig, EnrollError, KeyDistributor, PendingEnrollment, Provisioned,
    ProvisionedParts, Refusal, WorkerEnrollment,
};
pub use evidence::{
    Anchors, Claims, DcapFormatError, Evidence, EvidenceError, SnpProduct, SnpTcb, Tcb,
};
pub use policy::{Policy, PolicyError, PolicyFileError};
pub use prepare::{
    AttestedManager, ManagerEndpoint, OwnerSecret, PrepareClient, PrepareError, PrepareSession,
};
pub use sim::{BinaryIdentity, SimRootKey, SimTee, sim_measurement};
pub use tee::{SealingKey, Tee, TeeError};
pub use types::{FunctionHash, Measurement, Platform, Role};
pub use wire::{WIRE_VERSION, WireError};

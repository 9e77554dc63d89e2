//! Shared setup: a simulated platform, a capsule, a manager and a policy.
#![allow(dead_code, clippy::unwrap_used, reason = "shared test helpers")]

use psl_capsule::{CapsuleMetadata, CreationParams};
use psl_trust::{
    BinaryIdentity, DistributorConfig, FunctionHash, KeyDistributor, ManagerEndpoint, Measurement,
    OwnerSecret, Platform, Policy, SimRootKey, SimTee, sim_measurement,
};

pub const NOW: u64 = 1_800_000_000;

pub fn seed(label: &str, n: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("psl-trust tests");
    hasher.update(label.as_bytes());
    hasher.update(&n.to_le_bytes());
    *hasher.finalize().as_bytes()
}

pub struct World {
    pub root: SimRootKey,
    pub manager_binary: BinaryIdentity,
    pub worker_binary: BinaryIdentity,
    pub function: FunctionHash,
    pub policy: Policy,
    pub secret: OwnerSecret,
    pub metadata: CapsuleMetadata,
}

impl World {
    pub fn new() -> Self {
        let root = SimRootKey::from_seed(&seed("sim root", 0));
        let manager_binary = BinaryIdentity::named("psl-manager", "test");
        let worker_binary = BinaryIdentity::named("psl-worker", "test");
        let function = FunctionHash::of_module(b"(module)");
        let policy = Policy::dev_sim(
            root.public_key(),
            sim(sim_measurement(&manager_binary, None)),
            [(
                function,
                sim(sim_measurement(&worker_binary, Some(&function))),
            )],
        );
        let secret = OwnerSecret::from_bytes(seed("owner secret", 0));
        let owner = secret.owner_key();
        let metadata = CapsuleMetadata::new(
            owner.public_key(),
            "trust-test",
            CreationParams {
                created_s: NOW,
                salt: [7; 16],
                record_bytes_max: 1 << 20,
            },
        )
        .unwrap();
        World {
            root,
            manager_binary,
            worker_binary,
            function,
            policy,
            secret,
            metadata,
        }
    }

    pub fn manager_tee(&self) -> SimTee {
        SimTee::new(&self.root, self.manager_binary, None)
    }

    pub fn worker_tee(&self) -> SimTee {
        SimTee::new(&self.root, self.worker_binary, Some(self.function))
    }

    pub fn distributor(&self, config: DistributorConfig) -> KeyDistributor {
        KeyDistributor::new(
            self.policy.clone(),
            config,
            ManagerEndpoint::new(&seed("manager channel", 0)),
            self.secret.owner_key(),
            self.metadata.clone(),
            self.secret.data_key(&self.metadata.id()),
        )
    }
}

pub fn sim(bytes: [u8; 32]) -> Measurement {
    Measurement::new(Platform::Sim, &bytes).unwrap()
}

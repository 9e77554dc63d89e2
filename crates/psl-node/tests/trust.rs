//! Trust in the embedded cluster: the owner attests the manager, the manager attests every
//! worker before it has keys, and the policy gates functions by hash.

#[allow(dead_code, reason = "shared helpers; this file uses some")]
mod common;

use std::sync::Arc;

use common::module;
use psl_node::scl::{ClusterError, LEASE_MS, RoundRobin, SclCluster};
use psl_node::trust::{SimTrust, TrustError};
use psl_node::{Platform, PlatformError};
use psl_runtime::RuntimeConfig;
use psl_trust::Policy;

fn start(trust: SimTrust) -> (Result<SclCluster, ClusterError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start_with_trust(&dir.path().join("capsule"), 2, LEASE_MS, trust);
    (cluster, dir)
}

#[test]
fn the_generated_policy_admits_the_simulated_manager_and_workers() {
    let (cluster, _dir) = start(SimTrust::generate().unwrap());
    let cluster = cluster.unwrap();
    let claims = cluster.manager_claims();
    assert!(claims.simulated);
    assert!(claims.to_string().contains("SIMULATED TEE"));
    assert_eq!(cluster.enrolled(), 2);
    cluster.restart_worker(0).unwrap();
    assert_eq!(cluster.enrolled(), 3, "a restarted worker enrolls again");
}

#[test]
fn a_strict_policy_refuses_the_simulated_manager_and_nothing_starts() {
    let trust = SimTrust::generate().unwrap().with_policy(Policy::strict());
    let (cluster, dir) = start(trust);
    let Err(error) = cluster else {
        panic!("a strict policy accepted a simulated manager");
    };
    assert!(
        matches!(error, ClusterError::Trust(TrustError::Prepare(_))),
        "{error}"
    );
    assert!(error.to_string().contains("simulat"), "{error}");
    // The owner never provisioned anything: no capsule was created.
    assert!(!dir.path().join("capsule").exists());
}

#[test]
fn a_worker_with_an_unexpected_measurement_gets_no_keys() {
    let mut trust = SimTrust::generate().unwrap();
    let mut policy = trust.policy.clone();
    policy.worker.measurements.clear();
    trust = trust.with_policy(policy);
    let (cluster, _dir) = start(trust);
    let Err(error) = cluster else {
        panic!("a worker outside the policy was enrolled");
    };
    assert!(
        matches!(error, ClusterError::Trust(TrustError::Refused(_))),
        "{error}"
    );
}

#[test]
fn pinned_functions_run_and_others_are_refused_before_compiling() {
    let counter = module("counter");
    let mut trust = SimTrust::generate().unwrap();
    let mut policy = trust.policy.clone();
    policy.functions.insert(
        psl_trust::FunctionHash::of_module(&counter),
        Default::default(),
    );
    trust = trust.with_policy(policy);
    let (cluster, _dir) = start(trust);
    let cluster = cluster.unwrap();
    let gate = cluster.clone();
    let platform = Platform::new(RuntimeConfig::default(), Arc::new(RoundRobin(cluster)))
        .unwrap()
        .with_gate(Arc::new(move |m: &[u8]| {
            gate.check_function(m).map_err(|e| e.to_string())
        }));
    platform.deploy("counter", &counter).unwrap();
    let refused = platform.deploy("hello", &module("hello"));
    assert!(
        matches!(refused, Err(PlatformError::NotAllowed(_))),
        "{refused:?}"
    );
}

#[test]
fn a_revoked_worker_is_refused_by_every_other_worker() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start_with_trust(
        &dir.path().join("capsule"),
        3,
        LEASE_MS,
        SimTrust::generate().unwrap(),
    )
    .unwrap();
    let wait = std::time::Duration::from_secs(10);
    use psl_runtime::State;
    // Before the revocation, worker 2's writes reach everyone.
    let mut session = cluster.worker(2).session();
    session.put(b"before", b"1").unwrap();
    session.finish().unwrap();
    assert!(cluster.settle(wait));
    let revoked = cluster.writer_of(2);
    cluster.revoke_writer(revoked).unwrap();
    let rejected_before: u64 = cluster.rejected().iter().sum();
    let mut session = cluster.worker(2).session();
    session.put(b"after", b"2").unwrap();
    session.finish().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for worker in [0, 1] {
        let mut session = cluster.worker(worker).session();
        assert_eq!(session.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(
            session.get(b"after").unwrap(),
            None,
            "worker {worker} applied a revoked writer's record"
        );
        session.finish().unwrap();
    }
    let rejected_after: u64 = cluster.rejected().iter().sum();
    assert!(
        rejected_after > rejected_before,
        "{rejected_before} -> {rejected_after}"
    );
    // A new incarnation of a worker applies the revocation list too. (It refuses the revoked
    // writer's earlier records as well: revocation lists name writers, not a last trusted seq.)
    cluster.restart_worker(0).unwrap();
    let mut session = cluster.worker(0).session();
    assert_eq!(session.get(b"after").unwrap(), None);
    session.finish().unwrap();
}

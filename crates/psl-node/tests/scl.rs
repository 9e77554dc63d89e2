//! The embedded SCL cluster: several workers in one process share state through sealed records
//! in a DataCapsule, with release-consistent locks.

mod common;

use common::{call, module};
use std::sync::Arc;
use std::time::Duration;

use psl_node::Platform;
use psl_node::scl::{RoundRobin, SclCluster};
use psl_runtime::{RuntimeConfig, State};

fn platform(workers: usize) -> (Arc<Platform>, SclCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start(&dir.path().join("capsule"), workers).unwrap();
    let platform = Platform::new(
        RuntimeConfig::default(),
        Arc::new(RoundRobin(cluster.clone())),
    )
    .unwrap();
    for name in ["counter", "bank"] {
        platform.deploy(name, &module(name)).unwrap();
    }
    (Arc::new(platform), cluster, dir)
}

#[test]
fn counter_across_workers_is_exact() {
    let (platform, cluster, dir) = platform(4);
    let (threads, each) = (4, 30);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let platform = Arc::clone(&platform);
            std::thread::spawn(move || {
                for _ in 0..each {
                    call(&platform, "counter", "c");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    // One more increment, on whichever worker comes next, sees every earlier one.
    assert_eq!(
        call(&platform, "counter", "c"),
        (threads * each + 1).to_string()
    );
    assert!(cluster.settle(Duration::from_secs(10)));
    let digests = cluster.digests();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "replicas diverged"
    );
    let mut session = cluster.worker(3).session();
    assert_eq!(
        session.get(b"c").unwrap().unwrap(),
        (threads * each + 1).to_string().into_bytes()
    );
    session.finish().unwrap();
    drop(platform);
    // Everything the workers wrote is in the capsule, and it verifies.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let summary = psl_store::verify(dir.path().join("capsule"), now);
    assert!(summary.is_ok(), "{}", summary.unwrap_err());
}

#[test]
fn bank_total_is_kept_across_workers() {
    let (platform, cluster, _dir) = platform(3);
    assert_eq!(call(&platform, "bank", "open 8 1000"), "8 accounts");
    let handles: Vec<_> = (0..3u64)
        .map(|seed| {
            let platform = Arc::clone(&platform);
            std::thread::spawn(move || {
                call(&platform, "bank", &format!("transfer {} 40", seed + 1))
            })
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap().starts_with("moved"));
    }
    for _ in 0..3 {
        assert_eq!(call(&platform, "bank", "total"), "8000");
    }
    assert!(cluster.settle(Duration::from_secs(10)));
    for worker in 0..3 {
        let mut session = cluster.worker(worker).session();
        let sum: u64 = session
            .scan_prefix(b"bank/acct/", 100)
            .unwrap()
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v).parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, 8000, "worker {worker}");
        session.finish().unwrap();
    }
}

#[test]
fn writes_without_locks_converge() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start(&dir.path().join("capsule"), 3).unwrap();
    for round in 0..20u32 {
        let mut session = cluster.worker(round as usize).session();
        session
            .put(format!("k{}", round % 5).as_bytes(), &round.to_le_bytes())
            .unwrap();
        if round % 3 == 0 {
            session.delete(b"k1").unwrap();
        }
        session.finish().unwrap();
    }
    assert!(cluster.settle(Duration::from_secs(10)));
    let digests = cluster.digests();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "replicas diverged"
    );
}

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

/// One increment under the write lock, made idempotent by a per-client marker: retried after
/// any failure (a killed worker, a refused release) until it is known to be done.
fn increment(cluster: &SclCluster, worker: usize, client: usize, op: u64) -> usize {
    let marker_key = format!("marker/{client}");
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts < 1000,
            "increment {op} of client {client} never succeeded"
        );
        let mut session = cluster.worker(worker).session();
        let result = (|| {
            session.lock(
                b"counter",
                psl_runtime::LockMode::Write,
                Duration::from_secs(10),
            )?;
            let read = |v: Option<Vec<u8>>| {
                v.and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map_or(0, u64::from_le_bytes)
            };
            let counter = read(session.get(b"counter")?);
            let marker = read(session.get(marker_key.as_bytes())?);
            if marker <= op {
                session.put(b"counter", &(counter + 1).to_le_bytes())?;
                session.put(marker_key.as_bytes(), &(op + 1).to_le_bytes())?;
            }
            session.unlock(b"counter")
        })();
        match result {
            Ok(()) => return attempts,
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

#[test]
fn counter_is_exact_while_workers_are_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let workers = 4;
    let cluster = SclCluster::start(&dir.path().join("capsule"), workers).unwrap();
    let (clients, each) = (4, 40u64);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (cluster, stop) = (cluster.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(4));
                cluster.restart_worker(kills % workers).unwrap();
                kills += 1;
            }
            kills
        })
    };
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let cluster = cluster.clone();
            std::thread::spawn(move || {
                (0..each)
                    .map(|op| increment(&cluster, client % workers, client, op))
                    .sum::<usize>()
            })
        })
        .collect();
    let attempts: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert!(kills >= 2, "only {kills} kills happened");
    eprintln!(
        "{kills} kills, {attempts} attempts for {} increments",
        clients as u64 * each
    );
    assert!(cluster.settle(Duration::from_secs(20)));
    let digests = cluster.digests();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "replicas diverged"
    );
    for worker in 0..workers {
        let mut session = cluster.worker(worker).session();
        let counter = session.get(b"counter").unwrap().unwrap();
        assert_eq!(
            u64::from_le_bytes(counter.try_into().unwrap()),
            clients as u64 * each,
            "worker {worker} ({kills} kills, {attempts} attempts)"
        );
        session.finish().unwrap();
    }
    // The capsule verifies, dead incarnations' chains included.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let summary = psl_store::verify(dir.path().join("capsule"), now);
    assert!(summary.is_ok(), "{}", summary.unwrap_err());
}

#[test]
fn a_holder_stalled_past_its_lease_is_fenced_and_its_write_never_applies() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start_with_lease(&dir.path().join("capsule"), 2, 300).unwrap();
    let mut stalled = cluster.worker(0).session();
    stalled
        .lock(b"L", psl_runtime::LockMode::Write, Duration::from_secs(5))
        .unwrap();
    stalled.put(b"x", b"late").unwrap();
    // Another worker waits for the lock; it gets it once the lease ends, and must not see the
    // stalled holder's write.
    let waiter = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            let mut session = cluster.worker(1).session();
            session
                .lock(b"L", psl_runtime::LockMode::Write, Duration::from_secs(10))
                .unwrap();
            let seen = session.get(b"x").unwrap();
            session.put(b"x", b"next").unwrap();
            session.unlock(b"L").unwrap();
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(waiter.join().unwrap(), None);
    // The stalled holder's next call fails: its lease is gone (or its worker restarted).
    let late = stalled.put(b"x", b"later");
    assert!(late.is_err(), "{late:?}");
    let unlocked = stalled.unlock(b"L");
    assert!(unlocked.is_err(), "{unlocked:?}");
    drop(stalled);
    assert!(cluster.settle(Duration::from_secs(10)));
    for worker in 0..2 {
        let mut session = cluster.worker(worker).session();
        assert_eq!(session.get(b"x").unwrap().as_deref(), Some(&b"next"[..]));
        session.finish().unwrap();
    }
    assert!(cluster.restarts() >= 1, "worker 0 should have restarted");
}

/// A holder that flushes inside its critical section and then waits for another lock must not
/// block whoever needs its flushed records: the acknowledged flush commits them at once (a
/// partial verdict), instead of at its release, which would never come (a deadlock).
#[test]
fn flushing_then_waiting_for_another_lock_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start(&dir.path().join("capsule"), 2).unwrap();
    let wait = Duration::from_secs(5);
    let mut holder = cluster.worker(0).session();
    holder
        .lock(b"M", psl_runtime::LockMode::Write, wait)
        .unwrap();
    holder.put(b"m", b"flushed under M").unwrap();
    holder.flush().unwrap();
    // Another session on the same worker releases L with the worker's head, which includes
    // the record flushed under M.
    let mut other = cluster.worker(0).session();
    other
        .lock(b"L", psl_runtime::LockMode::Write, wait)
        .unwrap();
    other.put(b"l", b"1").unwrap();
    other.unlock(b"L").unwrap();
    other.finish().unwrap();
    // A session on worker 1 takes L: it must apply that head, M's record included.
    let next = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            let mut session = cluster.worker(1).session();
            session.lock(b"L", psl_runtime::LockMode::Write, wait)?;
            let seen = session.get(b"m")?;
            std::thread::sleep(Duration::from_millis(50));
            session.unlock(b"L")?;
            Ok::<_, psl_runtime::StateError>(seen)
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    // Meanwhile the holder of M waits for L.
    let started = std::time::Instant::now();
    holder
        .lock(b"L", psl_runtime::LockMode::Write, wait)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    holder.unlock(b"L").unwrap();
    holder.unlock(b"M").unwrap();
    holder.finish().unwrap();
    assert_eq!(
        next.join().unwrap().unwrap().as_deref(),
        Some(&b"flushed under M"[..])
    );
}

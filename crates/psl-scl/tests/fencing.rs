//! Fenced writes commit at release (docs/design/scl.md): a record written under a lock grant is
//! applied by other replicas only once the lock service's verdict on that grant covers it;
//! records the verdict does not cover (late writes of an expired holder) are refused; and the
//! outcome does not depend on whether the verdict or the record arrives first.

use psl_capsule::testkit::{TestCapsule, seed_bytes};
use psl_capsule::{DataKey, SealedRecord, Validity, WriterId};
use psl_scl::body::Fence;
use psl_scl::lock::Watermark;
use psl_scl::replica::ReplicaLimits;
use psl_scl::worker::{Received, WorkerCore};

const NOW: Validity = Validity::At(1_800_000_000);

fn worker(capsule: &TestCapsule, seed: u64) -> (WorkerCore, SealedRecord) {
    let (keys, cert) = capsule.writer_valid(seed, 1_000_000_000, 4_000_000_000);
    WorkerCore::start(
        &capsule.metadata,
        DataKey::from_bytes(seed_bytes("data key", 1)),
        keys,
        &cert,
        ReplicaLimits::default(),
    )
    .unwrap()
}

fn fence(token: u64) -> Vec<Fence> {
    vec![Fence {
        lock: b"L".to_vec(),
        token,
    }]
}

fn verdict(writer: WriterId, seq: u64) -> Watermark {
    let mut w = Watermark::new();
    w.observe(writer, seq);
    w
}

/// Writer A: seq 1 fenced by token 7 (committed), seq 2 fenced by token 7 after the verdict
/// (a late write), seq 3 unfenced.
fn scenario(capsule: &TestCapsule) -> (WriterId, Vec<SealedRecord>) {
    let (mut a, genesis) = worker(capsule, 1);
    let me = a.replica().writer();
    a.replica_mut().put(b"x", b"committed").unwrap();
    let r1 = a.seal(&fence(7)).unwrap().unwrap();
    a.replica_mut().put(b"x", b"late").unwrap();
    let r2 = a.seal(&fence(7)).unwrap().unwrap();
    a.replica_mut().put(b"y", b"free").unwrap();
    let r3 = a.seal(&[]).unwrap().unwrap();
    (me, vec![genesis, r1, r2, r3])
}

#[test]
fn fenced_records_wait_for_the_verdict_and_late_writes_are_refused() {
    let capsule = TestCapsule::new("fence", 1);
    let (a, records) = scenario(&capsule);
    let (mut b, _) = worker(&capsule, 2);
    for record in &records {
        let _ = b.receive(record.clone(), NOW);
    }
    // Nothing fenced is visible yet, and the unfenced record waits behind the fenced one
    // (records of one writer apply in order).
    assert_eq!(b.replica().get(b"x"), None);
    assert_eq!(b.replica().get(b"y"), None);
    assert_eq!(b.replica().applied(&a), 0);
    // The verdict on token 7 covers seq 1 only.
    b.on_verdict(b"L", 7, verdict(a, 1), NOW);
    assert_eq!(b.replica().get(b"x"), Some(&b"committed"[..]));
    assert_eq!(b.replica().get(b"y"), Some(&b"free"[..]));
    assert_eq!(b.fenced_refused(), 1);
    assert_eq!(b.replica().applied(&a), 3);
}

#[test]
fn the_outcome_does_not_depend_on_arrival_order() {
    let capsule = TestCapsule::new("fence", 1);
    let (a, records) = scenario(&capsule);
    let (mut early, _) = worker(&capsule, 2);
    early.on_verdict(b"L", 7, verdict(a, 1), NOW);
    for record in &records {
        let _ = early.receive(record.clone(), NOW);
    }
    let (mut late, _) = worker(&capsule, 3);
    for record in records.iter().rev() {
        let _ = late.receive(record.clone(), NOW);
    }
    late.on_verdict(b"L", 7, verdict(a, 1), NOW);
    assert_eq!(early.replica().digest(), late.replica().digest());
    assert_eq!(early.replica().get(b"x"), Some(&b"committed"[..]));
    assert_eq!(early.fenced_refused(), late.fenced_refused());
}

#[test]
fn records_behind_a_held_one_are_kept_and_counted_once() {
    let capsule = TestCapsule::new("fence", 1);
    let (a, records) = scenario(&capsule);
    let (mut b, _) = worker(&capsule, 2);
    for record in &records {
        let _ = b.receive(record.clone(), NOW);
    }
    // The held record again, and a later one again: no double application.
    assert!(matches!(
        b.receive(records[1].clone(), NOW),
        Received::Duplicate
    ));
    assert!(matches!(
        b.receive(records[3].clone(), NOW),
        Received::Waiting { buffered: true }
    ));
    let applied = b.on_verdict(b"L", 7, verdict(a, 2), NOW);
    assert_eq!(applied, 3);
    assert_eq!(
        b.replica().get(b"x"),
        Some(&b"late"[..]),
        "a verdict covering seq 2 commits it"
    );
    assert_eq!(b.fenced_refused(), 0);
}

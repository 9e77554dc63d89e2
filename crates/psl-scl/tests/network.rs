//! Workers exchanging sealed records over a simulated untrusted network that loses,
//! duplicates, delays and reorders, with gap repair from storage: every replica ends with the
//! same state, equal to the model, and forged or tampered records are refused (EC-1..EC-4).
//! Deterministic from the seed.

use std::collections::BTreeMap;

use psl_capsule::testkit::TestCapsule;
use psl_capsule::{DataKey, SealedRecord, Validity, WriterId};
use psl_scl::replica::ReplicaLimits;
use psl_scl::worker::{Received, WorkerCore};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// In flight: (deliver at step, destination, record).
type Network = Vec<(u64, usize, SealedRecord)>;

/// Runs one seed; returns the hash of its trace (every delivery and its outcome, and the final
/// state), so determinism can be checked.
fn run(seed: u64) -> [u8; 32] {
    let mut trace = blake3::Hasher::new();
    let capsule = TestCapsule::new("net", seed);
    let mut rng = Rng(seed);
    let n = 3;
    let mut workers = Vec::new();
    let mut storage: BTreeMap<WriterId, Vec<SealedRecord>> = BTreeMap::new();
    let mut net: Network = Vec::new();
    for i in 0..n {
        let (keys, cert) = capsule.writer_valid(seed * 10 + i as u64, 1_000_000_000, 4_000_000_000);
        let (core, genesis) = WorkerCore::start(
            &capsule.metadata,
            DataKey::from_bytes(psl_capsule::testkit::seed_bytes("data key", seed)),
            keys,
            &cert,
            ReplicaLimits::default(),
        )
        .unwrap();
        storage
            .entry(genesis.writer())
            .or_default()
            .push(genesis.clone());
        for to in 0..n {
            if to != i {
                net.push((rng.below(20), to, genesis.clone()));
            }
        }
        workers.push(core);
    }
    let mut fetches = 0;
    for step in 0..400u64 {
        // Activity: a random worker writes; sometimes it seals and publishes.
        if step < 300 {
            let w = rng.below(n as u64) as usize;
            let key = format!("k{}", rng.below(8));
            if rng.below(5) == 0 {
                workers[w].replica_mut().delete(key.as_bytes()).unwrap();
            } else {
                workers[w]
                    .replica_mut()
                    .put(key.as_bytes(), format!("{w}:{step}").as_bytes())
                    .unwrap();
            }
            if rng.below(3) == 0
                && let Some(record) = workers[w].seal(&[]).unwrap()
            {
                {
                    storage
                        .entry(record.writer())
                        .or_default()
                        .push(record.clone());
                    for to in 0..n {
                        if to == w {
                            continue;
                        }
                        match rng.below(10) {
                            0 => {} // lost
                            1 => {
                                net.push((step + rng.below(30), to, record.clone()));
                                net.push((step + rng.below(30), to, record.clone())); // duplicated
                            }
                            _ => net.push((step + rng.below(30), to, record.clone())),
                        }
                    }
                }
            }
        }
        // A hostile peer: a tampered copy of a real record.
        if step % 50 == 25
            && let Some(record) = storage.values().flatten().nth(rng.below(5) as usize)
        {
            {
                let mut bytes = record.as_bytes().to_vec();
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 0x10;
                if let Ok(forged) = SealedRecord::decode(&bytes) {
                    let to = rng.below(n as u64) as usize;
                    let before = workers[to].replica().digest();
                    let verdict = workers[to].receive(forged, Validity::At(1_800_000_000));
                    assert!(
                        !matches!(verdict, Received::Applied { .. }),
                        "tampered record applied"
                    );
                    assert_eq!(before, workers[to].replica().digest());
                }
            }
        }
        // Deliveries due now, in a shuffled order.
        let mut due: Vec<(u64, usize, SealedRecord)> = Vec::new();
        net.retain(|item| {
            if item.0 <= step {
                due.push(item.clone());
                false
            } else {
                true
            }
        });
        while !due.is_empty() {
            let i = rng.below(due.len() as u64) as usize;
            let (_, to, record) = due.swap_remove(i);
            trace.update(&[to as u8]);
            trace.update(record.as_bytes());
            deliver(&mut workers[to], record, &storage, &mut fetches);
        }
    }
    // Quiescence: every worker seals what is left; everything reaches everyone via storage
    // (the sync-report path will drive this; here each worker asks storage for every head).
    for worker in workers.iter_mut() {
        if let Some(record) = worker.seal(&[]).unwrap() {
            storage.entry(record.writer()).or_default().push(record);
        }
    }
    for worker in workers.iter_mut() {
        for records in storage.values() {
            if let Some(last) = records.last() {
                deliver(worker, last.clone(), &storage, &mut fetches);
            }
        }
    }
    let digests: Vec<_> = workers.iter().map(|w| w.replica().digest()).collect();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "seed {seed}: replicas diverged"
    );
    for w in &workers {
        for (writer, records) in &storage {
            assert_eq!(
                w.replica().applied(writer),
                records.len() as u64 - 1,
                "seed {seed}"
            );
        }
    }
    trace.update(&digests[0]);
    trace.update(&fetches.to_le_bytes());
    *trace.finalize().as_bytes()
}

/// Delivers a record; on a gap, fetches the missing range from storage and delivers it too.
fn deliver(
    worker: &mut WorkerCore,
    record: SealedRecord,
    storage: &BTreeMap<WriterId, Vec<SealedRecord>>,
    fetches: &mut u32,
) {
    let mut queue = vec![record];
    while let Some(record) = queue.pop() {
        match worker.receive(record.clone(), Validity::At(1_800_000_000)) {
            Received::Gap {
                writer,
                missing,
                buffered,
            } => {
                *fetches += 1;
                if !buffered {
                    queue.push(record);
                }
                let stored = &storage[&writer];
                for seq in missing.rev() {
                    queue.push(stored[seq as usize].clone());
                }
            }
            Received::Rejected(reason) => panic!("a genuine record was refused: {reason}"),
            _ => {}
        }
    }
}

#[test]
fn replicas_converge_over_a_faulty_network_for_many_seeds() {
    for seed in 1..=200 {
        run(seed);
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [3, 77, 150] {
        assert_eq!(run(seed), run(seed), "seed {seed} is not deterministic");
    }
    assert_ne!(run(3), run(4));
}

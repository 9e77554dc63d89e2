//! Convergence (EC-3, EC-4, EC-6): replicas that receive the same records in any interleaving
//! (each writer's records in order, with duplicates) end in identical states, equal to the
//! model "per key, the update with the highest (lamport, writer)".

use std::collections::BTreeMap;

use proptest::prelude::*;
use psl_capsule::WriterId;
use psl_scl::body::{Batch, Op, StampedUpdate};
use psl_scl::replica::{Applied, Replica, ReplicaLimits};

/// Per writer, per batch, the updates as (key index, value or delete).
type RawWriters = Vec<Vec<Vec<(u8, Option<u8>)>>>;
/// Per key: the best (lamport, writer) seen and its value.
type Best = BTreeMap<Vec<u8>, ((u64, u8), Option<Vec<u8>>)>;

/// Each writer's batches: (key index, value or delete) per update; lamports are assigned as a
/// writer's clock would (strictly increasing per writer, from a writer-specific start).
fn writers() -> impl Strategy<Value = RawWriters> {
    proptest::collection::vec(
        proptest::collection::vec(
            proptest::collection::vec((0u8..6, proptest::option::of(any::<u8>())), 1..5),
            1..6,
        ),
        1..4,
    )
}

fn stamp(writers: &RawWriters) -> Vec<Vec<Batch>> {
    writers
        .iter()
        .enumerate()
        .map(|(w, batches)| {
            // Different writers' clocks overlap, so ties and crossings happen.
            let mut clock = w as u64 % 2;
            batches
                .iter()
                .map(|updates| Batch {
                    fences: vec![],
                    updates: updates
                        .iter()
                        .map(|(k, v)| {
                            clock += 1;
                            StampedUpdate {
                                lamport: clock,
                                key: vec![b'k', *k],
                                op: v.map_or(Op::Delete, |v| Op::Put(vec![v])),
                            }
                        })
                        .collect(),
                })
                .collect()
        })
        .collect()
}

fn model(batches: &[Vec<Batch>]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut best: Best = BTreeMap::new();
    for (w, list) in batches.iter().enumerate() {
        for batch in list {
            for u in &batch.updates {
                let version = (u.lamport, w as u8 + 1);
                let value = match &u.op {
                    Op::Put(v) => Some(v.clone()),
                    Op::Delete => None,
                };
                let slot = best
                    .entry(u.key.clone())
                    .or_insert((version, value.clone()));
                if version > slot.0 {
                    *slot = (version, value);
                }
            }
        }
    }
    best.into_iter()
        .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
        .collect()
}

proptest! {
    #[test]
    fn any_delivery_order_converges(raw in writers(), orders in proptest::collection::vec(any::<u64>(), 3)) {
        let batches = stamp(&raw);
        let expected = model(&batches);
        let mut digests = Vec::new();
        for order_seed in orders {
            let mut replica = Replica::new(WriterId([0xee; 16]), ReplicaLimits::default());
            let mut next = vec![0usize; batches.len()];
            let mut state = order_seed | 1;
            loop {
                let open: Vec<usize> = (0..batches.len()).filter(|&w| next[w] < batches[w].len()).collect();
                if open.is_empty() {
                    break;
                }
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let w = open[(state % open.len() as u64) as usize];
                let writer = WriterId([w as u8 + 1; 16]);
                let seq = next[w] as u64 + 1;
                let applied = replica.apply_remote(writer, seq, &batches[w][next[w]]);
                let was_applied = matches!(applied, Applied::Applied { .. });
                prop_assert!(was_applied, "record not applied: {:?}", applied);
                // A duplicate delivery changes nothing.
                let before = replica.digest();
                prop_assert_eq!(replica.apply_remote(writer, seq, &batches[w][next[w]]), Applied::Duplicate);
                prop_assert_eq!(before, replica.digest());
                next[w] += 1;
            }
            let live: BTreeMap<Vec<u8>, Vec<u8>> = replica.scan_prefix(b"", usize::MAX).into_iter().collect();
            prop_assert_eq!(&live, &expected);
            digests.push(replica.digest());
        }
        prop_assert!(digests.windows(2).all(|d| d[0] == d[1]));
    }
}

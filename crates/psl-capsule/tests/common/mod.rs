//! Shared helpers for the psl-capsule integration tests.
#![allow(dead_code, reason = "each test binary uses a subset")]

use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, RecordKind, SealedRecord, Update};

/// The time used for validity checks in tests.
pub const NOW_S: u64 = 1_800_000_000;

/// Starts writer `seed` on `capsule` and seals `n` updates records after the genesis.
pub fn chain(capsule: &TestCapsule, seed: u64, n: usize) -> (CapsuleWriter, Vec<SealedRecord>) {
    let (keys, certificate) = capsule.writer(seed);
    let (mut writer, genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .unwrap();
    let mut records = vec![genesis];
    for i in 0..n {
        let lamport = 2 + i as u64;
        let updates = vec![
            Update::put(format!("k{i}"), format!("v{i}")),
            Update::delete("gone"),
        ];
        records.push(writer.seal_updates(lamport, &[], &updates).unwrap());
    }
    (writer, records)
}

/// A heartbeat record with an opaque body.
pub fn opaque(writer: &mut CapsuleWriter, lamport: u64, body: &[u8]) -> SealedRecord {
    writer
        .seal(RecordKind::Heartbeat, lamport, &[], body)
        .unwrap()
}

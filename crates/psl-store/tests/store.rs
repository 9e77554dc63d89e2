//! DirStore behaviour and audits of tampered directories (test plan DC-1..DC-4, B10).

use std::path::Path;

use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, RecordKind, SealedRecord, Update, Validity};
use psl_store::{
    DirStore, Durability, RecordStore, StoreError, StoreOptions, VerifyOptions, encode_frame,
    inspect, segment_header, verify, verify_with,
};

const NOW_S: u64 = 1_800_000_000;

fn chain(capsule: &TestCapsule, seed: u64, n: usize) -> (CapsuleWriter, Vec<SealedRecord>) {
    let (keys, certificate) = capsule.writer_valid(seed, 1_000_000_000, 2_000_000_000);
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
        let updates = [Update::put(format!("k{seed}-{i}"), vec![i as u8; 100])];
        records.push(writer.seal_updates(2 + i as u64, &[], &updates).unwrap());
    }
    (writer, records)
}

fn segment_path(dir: &Path, index: u64) -> std::path::PathBuf {
    dir.join(format!("segment-{index:020}.psl"))
}

/// Writes `records` (already framed bytes allowed via `raw`) as the only segment of a store.
fn write_segment(dir: &Path, capsule: &TestCapsule, frames: &[Vec<u8>]) {
    let mut bytes = segment_header(&capsule.id(), 1);
    for frame in frames {
        bytes.extend_from_slice(frame);
    }
    std::fs::write(segment_path(dir, 1), bytes).unwrap();
}

fn new_store(capsule: &TestCapsule) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(DirStore::create(dir.path(), &capsule.metadata, StoreOptions::default()).unwrap());
    dir
}

#[test]
fn append_read_heads_and_reopen() {
    let capsule = TestCapsule::new("store", 1);
    let dir = new_store(&capsule);
    let (_, a) = chain(&capsule, 1, 10);
    let (_, b) = chain(&capsule, 2, 5);
    {
        let (store, _) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
        let report = store.append(&a, Durability::Always).unwrap();
        assert_eq!((report.appended, report.duplicates), (11, 0));
        store.append(&b, Durability::Batch).unwrap();
        // Idempotent: the same records again are skipped.
        let report = store.append(&a[3..6], Durability::Always).unwrap();
        assert_eq!((report.appended, report.duplicates), (0, 3));
        assert_eq!(
            store.read_range(a[0].writer(), 2..5).unwrap(),
            a[2..5].to_vec()
        );
        assert_eq!(
            store.read_range(a[0].writer(), 8..100).unwrap(),
            a[8..].to_vec()
        );
        assert!(store.read_range(b[0].writer(), 6..9).unwrap().is_empty());
        assert!(matches!(
            DirStore::open(dir.path(), StoreOptions::default()),
            Err(StoreError::Locked(_))
        ));
    }
    let (store, report) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes), (17, 0));
    let mut expected = vec![a[10].head(), b[5].head()];
    expected.sort_by_key(|head| head.writer);
    assert_eq!(store.heads().unwrap(), expected);
    assert_eq!(store.writers().unwrap().len(), 2);
    assert_eq!(store.read_range(b[0].writer(), 0..6).unwrap(), b);
    let summary = verify(dir.path(), NOW_S).unwrap();
    assert_eq!(summary.records, 17);
    let text = inspect(dir.path()).unwrap().to_string();
    assert!(
        text.contains("17 records") && text.contains("updates 15") && text.contains("genesis 2"),
        "{text}"
    );
}

#[test]
fn appends_refuse_forks_gaps_splices_and_forgeries() {
    let capsule = TestCapsule::new("store", 2);
    let dir = new_store(&capsule);
    let (store, _) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
    let (_, a) = chain(&capsule, 1, 4);
    store.append(&a[..3], Durability::Never).unwrap();

    // Gap: seq 4 before seq 3.
    let error = store.append(&a[4..], Durability::Never).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Rejected {
                index: 0,
                source: psl_capsule::VerifyError::Gap { .. },
                ..
            }
        ),
        "{error}"
    );
    // Unknown writer (no genesis stored).
    let (_, c) = chain(&capsule, 3, 2);
    let error = store.append(&c[1..], Durability::Never).unwrap_err();
    assert!(matches!(
        &error,
        StoreError::Rejected {
            source: psl_capsule::VerifyError::UnknownWriter { .. },
            ..
        }
    ));
    // Splice from another capsule.
    let other = TestCapsule::new("elsewhere", 9);
    let (_, foreign) = chain(&other, 1, 1);
    let error = store.append(&foreign, Durability::Never).unwrap_err();
    assert!(matches!(
        &error,
        StoreError::Rejected {
            source: psl_capsule::VerifyError::WrongCapsule { .. },
            ..
        }
    ));
    // Forged signature on the next record.
    let mut bytes = a[3].as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = SealedRecord::decode(&bytes).unwrap();
    let error = store.append(&[forged], Durability::Never).unwrap_err();
    assert!(matches!(
        &error,
        StoreError::Rejected {
            source: psl_capsule::VerifyError::BadSignature { .. },
            ..
        }
    ));
    // A valid record later in the same batch is still appended.
    let error = store
        .append(&[c[1].clone(), a[3].clone()], Durability::Never)
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::Rejected {
            index: 0,
            appended: 1,
            ..
        }
    ));
    assert_eq!(
        store
            .heads()
            .unwrap()
            .iter()
            .find(|h| h.writer == a[0].writer())
            .unwrap()
            .seq,
        3
    );
    // Fork: a different signed record for a stored seq, with evidence.
    let (mut twin, _) = chain(&capsule, 1, 1);
    let fork = twin
        .seal(RecordKind::Heartbeat, 50, &[], b"other branch")
        .unwrap();
    assert_eq!(fork.seq(), 2);
    let StoreError::Fork { evidence, .. } = store.append(&[fork], Durability::Never).unwrap_err()
    else {
        panic!("expected fork");
    };
    assert!(evidence.check(&a[0].certificate().unwrap().unwrap()));
}

#[test]
fn segments_rotate_and_reopen() {
    let capsule = TestCapsule::new("store", 3);
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        segment_bytes_target: 4096,
    };
    let (_, a) = chain(&capsule, 1, 120);
    {
        let store = DirStore::create(dir.path(), &capsule.metadata, options.clone()).unwrap();
        for chunk in a.chunks(7) {
            store.append(chunk, Durability::Always).unwrap();
        }
        assert!(store.segment_count() > 5, "{}", store.segment_count());
    }
    let (store, report) = DirStore::open(dir.path(), options).unwrap();
    assert_eq!(report.records, 121);
    assert_eq!(store.read_range(a[0].writer(), 0..200).unwrap(), a);
    drop(store);
    assert_eq!(
        verify(dir.path(), NOW_S).unwrap().segments,
        inspect(dir.path()).unwrap().segments.len()
    );
}

#[test]
fn torn_tail_is_cut_and_appending_continues() {
    let capsule = TestCapsule::new("store", 4);
    let dir = new_store(&capsule);
    let (_, a) = chain(&capsule, 1, 6);
    {
        let (store, _) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
        store.append(&a[..5], Durability::Always).unwrap();
    }
    // An interrupted append: half of the next frame.
    let frame = encode_frame(a[5].as_bytes());
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    std::fs::write(&path, &bytes).unwrap();
    let summary = verify(dir.path(), NOW_S).unwrap();
    assert!(summary.torn_tail.is_some());
    assert!(inspect(dir.path()).unwrap().problems.len() == 1);
    let (store, report) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(report.torn_tail_bytes as usize, frame.len() / 2);
    assert_eq!(report.records, 5);
    store.append(&a[5..], Durability::Always).unwrap();
    drop(store);
    let summary = verify(dir.path(), NOW_S).unwrap();
    assert_eq!((summary.records, summary.torn_tail), (7, None));
}

#[test]
fn group_commit_with_concurrent_appenders() {
    let capsule = TestCapsule::new("store", 5);
    let dir = new_store(&capsule);
    let (store, _) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
    let chains: Vec<Vec<SealedRecord>> = (0..4).map(|seed| chain(&capsule, seed, 30).1).collect();
    std::thread::scope(|scope| {
        for records in &chains {
            let store = &store;
            scope.spawn(move || {
                for record in records {
                    store
                        .append(std::slice::from_ref(record), Durability::Batch)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.record_count(), 124);
    for records in &chains {
        assert_eq!(
            &store.read_range(records[0].writer(), 0..31).unwrap(),
            records
        );
    }
}

/// Each tampering of a stored log and the failure class `verify` must name.
#[test]
#[allow(clippy::type_complexity, reason = "the case table reads best inline")]
fn verify_names_every_tampering_of_a_directory() {
    let capsule = TestCapsule::new("audit", 6);
    let other = TestCapsule::new("audit-other", 7);
    let (_, a) = chain(&capsule, 1, 5);
    let (_, b) = chain(&capsule, 2, 2);
    let (_, foreign) = chain(&other, 1, 2);
    let (mut twin, _) = chain(&capsule, 1, 2);
    let fork = twin.seal(RecordKind::Heartbeat, 90, &[], b"fork").unwrap();
    assert_eq!(fork.seq(), 3);
    let frames = |records: &[&SealedRecord]| -> Vec<Vec<u8>> {
        records
            .iter()
            .map(|record| encode_frame(record.as_bytes()))
            .collect()
    };
    let flipped = |record: &SealedRecord, from_end: usize| -> SealedRecord {
        let mut bytes = record.as_bytes().to_vec();
        let at = bytes.len() - from_end;
        bytes[at] ^= 0x04;
        SealedRecord::decode(&bytes).unwrap()
    };
    let clean: Vec<&SealedRecord> = vec![
        &a[0], &b[0], &a[1], &a[2], &b[1], &a[3], &b[2], &a[4], &a[5],
    ];
    let bad_hash = flipped(&a[3], 120);
    let bad_signature = flipped(&a[3], 1);
    let mut raw_flip = frames(&clean);
    let middle = raw_flip[3].len() / 2;
    raw_flip[3][middle] ^= 0x01;

    let swap = |i: usize, j: usize| {
        let mut records = clean.clone();
        records.swap(i, j);
        frames(&records)
    };
    let without = |i: usize| {
        let mut records = clean.clone();
        records.remove(i);
        frames(&records)
    };
    let with = |at: usize, extra: &SealedRecord| {
        let mut records = clean.clone();
        records.insert(at, extra);
        frames(&records)
    };
    let replace = |at: usize, extra: &SealedRecord| {
        let mut records = clean.clone();
        records[at] = extra;
        frames(&records)
    };
    let all_heads = vec![a[5].head(), b[2].head()];
    let default = VerifyOptions {
        validity: Validity::At(NOW_S),
        expected_heads: all_heads.clone(),
        revoked: vec![],
    };

    // (case, frames, options, expected class, store refuses to open)
    let cases: Vec<(&str, Vec<Vec<u8>>, VerifyOptions, Option<&str>, bool)> = vec![
        ("clean", frames(&clean), default.clone(), None, false),
        ("dropped", without(3), default.clone(), Some("gap"), true),
        (
            "duplicated",
            with(3, &a[2]),
            default.clone(),
            Some("duplicate"),
            true,
        ),
        (
            "reordered",
            swap(3, 5),
            default.clone(),
            Some("reordered"),
            true,
        ),
        (
            "reordered genesis",
            swap(0, 2),
            default.clone(),
            Some("reordered"),
            true,
        ),
        (
            "truncated",
            without(8),
            default.clone(),
            Some("truncated"),
            false,
        ),
        (
            "spliced",
            with(4, &foreign[1]),
            default.clone(),
            Some("wrong-capsule"),
            true,
        ),
        (
            "replayed",
            with(9, &a[1]),
            default.clone(),
            Some("replay"),
            true,
        ),
        (
            "equivocating",
            with(9, &fork),
            default.clone(),
            Some("fork"),
            true,
        ),
        (
            "bit flip in body, frame rewritten",
            replace(5, &bad_hash),
            default.clone(),
            Some("bad-hash"),
            true,
        ),
        (
            "bit flip in signature",
            replace(5, &bad_signature),
            default.clone(),
            Some("bad-signature"),
            true,
        ),
        (
            "bit flip under the frame checksum",
            raw_flip,
            default.clone(),
            Some("corruption"),
            true,
        ),
        (
            "expired certificate",
            frames(&clean),
            VerifyOptions {
                validity: Validity::At(0),
                ..default.clone()
            },
            Some("expired"),
            false,
        ),
        (
            "revoked writer",
            frames(&clean),
            VerifyOptions {
                revoked: vec![b[0].writer()],
                ..default.clone()
            },
            Some("revoked"),
            false,
        ),
    ];
    for (name, frames, options, expected, refuses_open) in cases {
        let dir = new_store(&capsule);
        write_segment(dir.path(), &capsule, &frames);
        let outcome = verify_with(dir.path(), &options);
        match (expected, &outcome) {
            (None, Ok(_)) => {}
            (Some(class), Err(failure)) => {
                assert_eq!(failure.class(), class, "{name}: {failure}");
                let text = failure.to_string();
                assert!(text.contains(class), "{name}: {text}");
                if class != "truncated" {
                    assert!(
                        failure.location.is_some() && text.contains("offset"),
                        "{name}: {text}"
                    );
                }
            }
            _ => panic!("{name}: expected {expected:?}, got {outcome:?}"),
        }
        let open = DirStore::open(dir.path(), StoreOptions::default());
        assert_eq!(
            open.is_err(),
            refuses_open,
            "{name}: open gave {:?}",
            open.err()
        );
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            writer: usize,
            n: usize,
            durability: u8,
        },
        Duplicate {
            writer: usize,
        },
        Reopen,
        Read {
            writer: usize,
            start: u64,
            len: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 1..4usize, 0..3u8).prop_map(|(writer, n, durability)| Op::Append { writer, n, durability }),
            1 => (0..3usize).prop_map(|writer| Op::Duplicate { writer }),
            1 => Just(Op::Reopen),
            2 => (0..3usize, 0..12u64, 0..12u64).prop_map(|(writer, start, len)| Op::Read { writer, start, len }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random appends, duplicates, reopens and range reads match an in-memory model.
        #[test]
        fn store_matches_model(ops in proptest::collection::vec(op(), 1..25)) {
            let capsule = TestCapsule::new("model", 8);
            let dir = tempfile::tempdir().unwrap();
            let options = StoreOptions { segment_bytes_target: 4096 };
            let mut store = Some(DirStore::create(dir.path(), &capsule.metadata, options.clone()).unwrap());
            let mut writers: BTreeMap<usize, CapsuleWriter> = BTreeMap::new();
            let mut model: BTreeMap<usize, Vec<SealedRecord>> = BTreeMap::new();
            let mut lamport = 10u64;
            for op in ops {
                let s = store.as_ref().unwrap();
                match op {
                    Op::Append { writer, n, durability } => {
                        let durability = [Durability::Always, Durability::Batch, Durability::Never][durability as usize];
                        let mut batch = Vec::new();
                        if let std::collections::btree_map::Entry::Vacant(slot) = writers.entry(writer) {
                            let (keys, certificate) = capsule.writer(writer as u64);
                            let (w, genesis) = CapsuleWriter::start(&capsule.metadata, &capsule.data_key, keys, &certificate, 1, &[]).unwrap();
                            slot.insert(w);
                            batch.push(genesis);
                        }
                        let w = writers.get_mut(&writer).unwrap();
                        for _ in 0..n {
                            lamport += 1;
                            batch.push(w.seal(RecordKind::Heartbeat, lamport, &[], &lamport.to_le_bytes()).unwrap());
                        }
                        let report = s.append(&batch, durability).unwrap();
                        prop_assert_eq!(report.appended, batch.len());
                        model.entry(writer).or_default().extend(batch);
                    }
                    Op::Duplicate { writer } => {
                        if let Some(records) = model.get(&writer) {
                            let report = s.append(records, Durability::Never).unwrap();
                            prop_assert_eq!((report.appended, report.duplicates), (0, records.len()));
                        }
                    }
                    Op::Reopen => {
                        drop(store.take());
                        store = Some(DirStore::open(dir.path(), options.clone()).unwrap().0);
                    }
                    Op::Read { writer, start, len } => {
                        let Some(records) = model.get(&writer) else { continue };
                        let id = records[0].writer();
                        let got = s.read_range(id, start..start + len).unwrap();
                        let end = ((start + len) as usize).min(records.len());
                        let start = (start as usize).min(end);
                        prop_assert_eq!(&got[..], &records[start..end]);
                    }
                }
                let s = store.as_ref().unwrap();
                let heads = s.heads().unwrap();
                prop_assert_eq!(heads.len(), model.len());
                for records in model.values() {
                    let last = records.last().unwrap().head();
                    prop_assert!(heads.contains(&last));
                }
            }
        }
    }
}

/// Regression (CI run of the crash test): a SIGKILL while a new segment was being created used
/// to leave a segment with a torn header, which open reported as corruption. Creation is now
/// atomic (temporary name, then rename); a left-over temporary file is removed on open.
#[test]
fn interrupted_segment_creation_is_not_corruption() {
    let capsule = TestCapsule::new("creating", 9);
    let dir = new_store(&capsule);
    let (_, records) = chain(&capsule, 1, 3);
    {
        let (store, _) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
        store.append(&records, Durability::Always).unwrap();
    }
    let leftover = dir.path().join("segment-00000000000000000002.psl.creating");
    std::fs::write(&leftover, &segment_header(&capsule.id(), 2)[..10]).unwrap();
    let (store, report) = DirStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(report.records, 4);
    assert!(!leftover.exists());
    assert_eq!(
        store.read_range(records[0].writer(), 0..10).unwrap(),
        records
    );
}

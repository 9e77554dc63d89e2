//! `psl capsule inspect|verify` on real store directories: exit 0 only when everything
//! verifies; a tampered store gives a non-zero exit and names the failure.

use std::path::Path;
use std::process::{Command, Output};

use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, SealedRecord, Update};
use psl_store::{DirStore, Durability, RecordStore, StoreOptions, encode_frame, segment_header};

fn psl(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psl"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

fn records(capsule: &TestCapsule) -> Vec<SealedRecord> {
    let (keys, certificate) = capsule.writer_valid(1, 1_000_000_000, 4_000_000_000);
    let (mut writer, genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .unwrap();
    let mut out = vec![genesis];
    for i in 0..6u64 {
        out.push(
            writer
                .seal_updates(2 + i, &[], &[Update::put(format!("k{i}"), vec![7; 64])])
                .unwrap(),
        );
    }
    out
}

fn rewrite_segment(dir: &Path, capsule: &TestCapsule, records: &[SealedRecord]) {
    let segment = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .unwrap();
    let mut bytes = segment_header(&capsule.id(), 1);
    for record in records {
        bytes.extend_from_slice(&encode_frame(record.as_bytes()));
    }
    std::fs::write(segment, bytes).unwrap();
}

#[test]
fn verify_passes_a_good_store_and_names_each_tampering() {
    let capsule = TestCapsule::new("cli", 3);
    let dir = tempfile::tempdir().unwrap();
    let records = records(&capsule);
    {
        let store =
            DirStore::create(dir.path(), &capsule.metadata, StoreOptions::default()).unwrap();
        store.append(&records, Durability::Always).unwrap();
    }
    let inspect = psl(&["capsule", "inspect"], dir.path());
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(!inspect.stdout.is_empty());
    let ok = psl(&["capsule", "verify"], dir.path());
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // A dropped record: a gap in the writer's chain.
    let mut dropped = records.clone();
    dropped.remove(3);
    rewrite_segment(dir.path(), &capsule, &dropped);
    let gap = psl(&["capsule", "verify"], dir.path());
    let text = String::from_utf8_lossy(&gap.stdout);
    assert_eq!(gap.status.code(), Some(2), "{text}");
    assert!(text.contains("FAILED") && text.contains("gap"), "{text}");

    // Two records swapped: reordering.
    let mut swapped = records.clone();
    swapped.swap(2, 4);
    rewrite_segment(dir.path(), &capsule, &swapped);
    let reordered = psl(&["capsule", "verify"], dir.path());
    assert_eq!(
        reordered.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&reordered.stdout)
    );

    // One flipped bit in the middle of a record.
    rewrite_segment(dir.path(), &capsule, &records);
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // (A damaged last frame would be a torn, never-acknowledged tail; damage one in the middle.)
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&segment, bytes).unwrap();
    let flipped = psl(&["capsule", "verify"], dir.path());
    let text = String::from_utf8_lossy(&flipped.stdout);
    assert_eq!(flipped.status.code(), Some(2), "{text}");
    assert!(text.contains("FAILED"), "{text}");
}

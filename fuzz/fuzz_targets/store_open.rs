//! Fuzz target: a store directory whose first segment holds arbitrary bytes after a valid
//! segment header. `DirStore::open`, `inspect` and `verify` must return (never panic), and
//! whatever `open` accepts must read back and verify. Seeds: the golden records, framed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use psl_capsule::testkit::TestCapsule;
use psl_store::{DirStore, RecordStore, StoreOptions, inspect, segment_header, verify};

fn capsule() -> &'static TestCapsule {
    static CAPSULE: OnceLock<TestCapsule> = OnceLock::new();
    CAPSULE.get_or_init(|| TestCapsule::new("fixture-app", 42))
}

fuzz_target!(|data: &[u8]| {
    let capsule = capsule();
    let dir = tempfile::tempdir().expect("tempdir");
    drop(DirStore::create(dir.path(), &capsule.metadata, StoreOptions::default()).expect("create"));
    let mut bytes = segment_header(&capsule.id(), 1);
    bytes.extend_from_slice(data);
    std::fs::write(dir.path().join(format!("segment-{:020}.psl", 1)), &bytes).expect("write");
    let _ = inspect(dir.path());
    let audit = verify(dir.path(), 1_800_000_000);
    if let Ok((store, _)) = DirStore::open(dir.path(), StoreOptions::default()) {
        for head in store.heads().expect("heads") {
            let records = store.read_range(head.writer, 0..head.seq + 1).expect("read");
            assert_eq!(records.len() as u64, head.seq + 1);
        }
        drop(store);
        // What open accepted (after cutting a torn tail) must pass the audit too.
        verify(dir.path(), 1_800_000_000).expect("an opened store verifies");
    } else {
        let _ = audit;
    }
});

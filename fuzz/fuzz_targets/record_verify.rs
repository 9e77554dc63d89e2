//! Fuzz target: a verifier for the golden fixture capsule is fed arbitrary records. Input: one
//! flag byte (bit 0: batch verification), then records as `u16 LE length || bytes`. It must
//! never panic, never accept a record whose hash does not match, and opening an accepted record
//! must not panic. Seeds are the golden fixture chain.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleVerifier, SealedRecord, Validity, Verdict};

fn capsule() -> &'static TestCapsule {
    static CAPSULE: OnceLock<TestCapsule> = OnceLock::new();
    CAPSULE.get_or_init(|| TestCapsule::new("fixture-app", 42))
}

fn split(mut data: &[u8]) -> Vec<SealedRecord> {
    let mut records = Vec::new();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        if let Ok(record) = SealedRecord::decode(chunk) {
            records.push(record);
        }
        data = tail;
    }
    records
}

fuzz_target!(|data: &[u8]| {
    let capsule = capsule();
    let Some((flags, rest)) = data.split_first() else { return };
    let records = split(rest);
    let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
    let results = if flags & 1 == 1 {
        verifier.verify_batch(&records, Validity::At(1_800_000_000))
    } else {
        records.iter().map(|r| verifier.verify(r, Validity::Ignore)).collect()
    };
    for (record, result) in records.iter().zip(results) {
        if let Ok(Verdict::Accepted(verified)) = result {
            assert_eq!(record.compute_hash(), record.stored_hash());
            let _ = verified.open_body(&capsule.data_key);
        }
    }
    let heads = verifier.heads();
    assert!(verifier.check_heads(&heads).is_ok());
});

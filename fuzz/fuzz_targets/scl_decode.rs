//! Fuzz target: the SCL's decoders of bytes that come out of records (after decryption, so
//! from a certified but possibly hostile writer or manager) must return, never panic; what
//! decodes must encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psl_scl::body::Batch;
use psl_scl::manager::{decode_report, decode_verdicts, encode_report, encode_verdicts};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        let _ = batch.max_lamport();
        assert!(batch.encode().is_ok(), "a decoded batch must encode");
    }
    if let Ok(verdicts) = decode_verdicts(data) {
        let bytes = encode_verdicts(&verdicts).expect("decoded verdicts encode");
        assert_eq!(decode_verdicts(&bytes).expect("re-decode"), verdicts);
    }
    if let Ok(heads) = decode_report(data) {
        let bytes = encode_report(&heads).expect("decoded report encodes");
        assert_eq!(bytes, data, "sync reports are canonical");
    }
});

//! Fuzz target: every decoder of untrusted DataCapsule bytes must return, never panic, and
//! whatever decodes must re-encode to the same bytes (canonical encodings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use psl_capsule::{CapsuleMetadata, SealedRecord, WriterCertificate, decode_updates, encode_updates};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = SealedRecord::decode(data) {
        assert_eq!(record.as_bytes(), data);
        let _ = record.compute_hash();
        let _ = record.signed_header().compute_hash();
        if let Some(Ok(certificate)) = record.certificate() {
            assert_eq!(certificate.encode(), record.body());
        }
    }
    if let Ok(updates) = decode_updates(data) {
        assert_eq!(encode_updates(&updates).expect("re-encode"), data);
    }
    if let Ok(metadata) = CapsuleMetadata::decode(data) {
        assert_eq!(metadata.encode(), data);
    }
    if let Ok(certificate) = WriterCertificate::decode(data) {
        assert_eq!(certificate.encode(), data);
    }
});

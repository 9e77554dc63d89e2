//! Fuzz target: everything the trust layer parses from the network or a file (evidence, the
//! manager's offer, policy files) must return a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psl_trust::{Evidence, Policy, PrepareClient};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::strict();
    if let Ok(evidence) = Evidence::decode(data) {
        let _ = evidence.verify(&policy.anchors(), 1_750_000_000);
        let _ = evidence.encode();
    }
    let client = PrepareClient::new(policy, [7; 32]);
    let _ = client.verify_offer(data, 1_750_000_000);
    let _ = Policy::from_json(data);
});

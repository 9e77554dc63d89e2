//! Fuzz target: what a cluster-mode node decodes from the bus (sealed envelopes, then the
//! manager's requests and replies, invocation frames and answers) and its configuration file
//! must return, never panic. Envelopes that open were sealed by the fuzzer's own key here, so
//! the decoders behind them see arbitrary plaintext too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psl_capsule::{CapsuleId, DataKey, WriterId};
use psl_node::cluster::NodeConfig;
use psl_node::cluster::channel::{ChannelKeys, Direction, ReplayWindow};
use psl_node::cluster::wire::{
    DeployFrame, Invocation, ManagerReply, ManagerRequest, decode_answer, watermark_from_wire,
};

fuzz_target!(|data: &[u8]| {
    let keys = ChannelKeys::new(&DataKey::from_bytes([7; 32]), CapsuleId([9; 32]));
    for direction in [Direction::Request, Direction::Reply] {
        let _ = keys.open(direction, data);
    }
    // Arbitrary plaintext behind a genuine envelope.
    let sealed = keys.seal(Direction::Request, WriterId([1; 16]), 3, data);
    let opened = keys.open(Direction::Request, &sealed).expect("own envelope opens");
    assert_eq!(opened.payload, data);
    if let Ok(request) = serde_json::from_slice::<ManagerRequest>(data) {
        if let ManagerRequest::Release { watermark, .. } = &request {
            let _ = watermark_from_wire(watermark);
        }
        let bytes = serde_json::to_vec(&request).expect("encodes");
        assert_eq!(serde_json::from_slice::<ManagerRequest>(&bytes).expect("re-decodes"), request);
    }
    if let Ok(ManagerReply::Granted(grant)) = serde_json::from_slice::<ManagerReply>(data) {
        let _ = grant.into_grant();
    }
    if let Ok(call) = Invocation::decode(data) {
        assert_eq!(Invocation::decode(&call.encode()).expect("re-decodes"), call);
    }
    let _ = decode_answer(data);
    if let Ok(frame) = DeployFrame::decode(data) {
        assert_eq!(DeployFrame::decode(&frame.encode()).expect("re-decodes"), frame);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = NodeConfig::parse(text) {
            let _ = config.sim_root();
        }
    }
    let mut window = ReplayWindow::default();
    for chunk in data.chunks_exact(8) {
        let counter = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if window.accept(counter) {
            assert!(!window.accept(counter), "a counter accepted twice");
        }
    }
});

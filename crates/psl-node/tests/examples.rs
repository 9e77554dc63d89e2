//! The example guests (built by `cargo xtask guests`) run end to end on the embedded platform.

mod common;

use common::{call, module};
use std::sync::Arc;

use psl_node::{LocalState, Platform};
use psl_runtime::RuntimeConfig;

fn platform() -> (Arc<Platform>, LocalState) {
    let state = LocalState::default();
    let platform = Platform::new(RuntimeConfig::default(), Arc::new(state.clone())).unwrap();
    for name in ["hello", "counter", "bank"] {
        platform.deploy(name, &module(name)).unwrap();
    }
    (Arc::new(platform), state)
}

#[test]
fn hello_greets() {
    let (platform, _) = platform();
    assert_eq!(call(&platform, "hello", "PSL"), "Hello, PSL!");
    assert_eq!(call(&platform, "hello", ""), "Hello, world!");
    let outcome = platform.invoke("hello", b"log me".to_vec()).unwrap();
    assert_eq!(outcome.logs.len(), 1);
    assert_eq!(outcome.logs[0].message, "greeting log me");
}

#[test]
fn counter_under_lock_is_exact_with_concurrent_invocations() {
    let (platform, state) = platform();
    let (threads, each) = (8, 40);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let platform = Arc::clone(&platform);
            std::thread::spawn(move || {
                for _ in 0..each {
                    call(&platform, "counter", "c");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let value = state.snapshot().get(b"c".as_slice()).cloned().unwrap();
    assert_eq!(
        String::from_utf8(value).unwrap(),
        (threads * each).to_string()
    );
    assert_eq!(state.active_locks(), 0, "every lock released");
}

#[test]
fn bank_keeps_its_total_under_concurrent_transfers() {
    let (platform, state) = platform();
    assert_eq!(call(&platform, "bank", "open 12 500"), "12 accounts");
    for round in 0..3u64 {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let platform = Arc::clone(&platform);
                std::thread::spawn(move || {
                    call(
                        &platform,
                        "bank",
                        &format!("transfer {} 100", round * 10 + i + 1),
                    )
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap().starts_with("moved "));
        }
        assert_eq!(
            call(&platform, "bank", "total"),
            "6000",
            "after round {round}"
        );
        // Independently of the guest's own sum, check the stored balances.
        let sum: u64 = state
            .snapshot()
            .iter()
            .filter(|(k, _)| k.starts_with(b"bank/acct/"))
            .map(|(_, v)| String::from_utf8_lossy(v).parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, 6000);
    }
    assert_eq!(call(&platform, "bank", "balances").lines().count(), 12);
    let failed = platform.invoke("bank", b"nonsense".to_vec()).unwrap();
    assert!(failed.result.unwrap_err().to_string().contains("usage"));
}

//! Canary: known plaintext keys, values and lock names go through a multi-worker workload with
//! locks, flushes and a worker restart; afterwards, no byte written to the record store, no
//! record that crossed the bus and no log line contains them. Only enclave memory (the
//! replicas) may hold them, and the test checks that it does, so the scan has something to
//! miss.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{call, module};
use psl_node::Platform;
use psl_node::scl::{RoundRobin, SclCluster};
use psl_runtime::{LockMode, RuntimeConfig, State};

const KEY: &str = "CANARY-KEY-7f3a0c";
const VALUE: &str = "CANARY-VALUE-91bd55";
const LOCK: &str = "CANARY-LOCK-22c4e1";
const COUNTER: &str = "CANARY-COUNTER-5e0d";

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every canary (and its hex and lower-case forms) found in `bytes`.
fn canaries_in(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for canary in [KEY, VALUE, LOCK, COUNTER] {
        let forms = [
            canary.as_bytes().to_vec(),
            canary.to_lowercase().into_bytes(),
            hex::encode(canary).into_bytes(),
        ];
        for form in forms {
            if bytes.windows(form.len()).any(|w| w == form.as_slice()) {
                found.push(canary.to_string());
            }
        }
    }
    found
}

fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

#[test]
fn no_canary_leaves_the_enclaves() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // The scan can fail: a planted canary is found.
    assert_eq!(canaries_in(format!("xx{VALUE}yy").as_bytes()), [VALUE]);

    let dir = tempfile::tempdir().unwrap();
    let capsule = dir.path().join("capsule");
    let cluster = SclCluster::start(&capsule, 3).unwrap();
    let bus = cluster.tap_bus().unwrap();
    let platform = Arc::new(
        Platform::new(
            RuntimeConfig::default(),
            Arc::new(RoundRobin(cluster.clone())),
        )
        .unwrap(),
    );
    platform.deploy("counter", &module("counter")).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|worker| {
            let (cluster, platform) = (cluster.clone(), Arc::clone(&platform));
            std::thread::spawn(move || {
                for i in 0..10 {
                    let mut session = cluster.worker(worker).session();
                    session
                        .lock(LOCK.as_bytes(), LockMode::Write, Duration::from_secs(10))
                        .unwrap();
                    session
                        .put(format!("{KEY}/{worker}/{i}").as_bytes(), VALUE.as_bytes())
                        .unwrap();
                    session.flush().unwrap();
                    session.unlock(LOCK.as_bytes()).unwrap();
                    session
                        .put(
                            format!("{KEY}/free/{worker}/{i}").as_bytes(),
                            VALUE.as_bytes(),
                        )
                        .unwrap();
                    session.finish().unwrap();
                    call(&platform, "counter", COUNTER);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    cluster.restart_worker(1).unwrap();
    assert!(cluster.settle(Duration::from_secs(20)));

    // Enclave memory holds the canaries (so there was something to leak).
    let mut session = cluster.worker(1).session();
    assert_eq!(
        session
            .get(format!("{KEY}/2/9").as_bytes())
            .unwrap()
            .as_deref(),
        Some(VALUE.as_bytes())
    );
    assert_eq!(
        session.get(COUNTER.as_bytes()).unwrap().as_deref(),
        Some(&b"30"[..])
    );
    session.finish().unwrap();

    let mut files = Vec::new();
    files_under(&capsule, &mut files);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            canaries_in(bytes).is_empty(),
            "{} holds {:?}",
            path.display(),
            canaries_in(bytes)
        );
    }
    let mut records = 0;
    while let Ok(Some(message)) = bus.try_recv() {
        records += 1;
        let found = canaries_in(&message.payload);
        assert!(found.is_empty(), "a bus record holds {found:?}");
    }
    assert!(records > 30, "only {records} records crossed the bus");
    let logs = logs.0.lock().unwrap().clone();
    assert!(!logs.is_empty(), "nothing was logged");
    let found = canaries_in(&logs);
    assert!(found.is_empty(), "the logs hold {found:?}");
}

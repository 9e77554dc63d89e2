//! Crash test (test plan DC-1, F2): a child process appends with fsync and is SIGKILLed at
//! seeded random points, 30 times. After every kill the store opens, every acknowledged record is
//! present and verifies, nothing unverifiable is returned, and appending continues.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use psl_capsule::WriterId;
use psl_store::{DirStore, RecordStore, StoreOptions, verify};

const ITERATIONS: u64 = 30;

fn parse_acks(stdout: &str) -> Vec<(WriterId, u64)> {
    stdout
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            if parts.next()? != "ack" {
                return None;
            }
            let writer = hex::decode(parts.next()?).ok()?;
            let seq = parts.next()?.parse().ok()?;
            Some((WriterId(writer.try_into().ok()?), seq))
        })
        .collect()
}

fn crash_loop(mode: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed | 1;
    let mut acknowledged: BTreeMap<WriterId, u64> = BTreeMap::new();
    for run in 0..ITERATIONS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_psl-store-crashloop"))
            .arg(dir.path())
            .arg(run.to_string())
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read acknowledgements on a thread; kill at a random point after the first one, so
        // every run appends something however loaded the machine is.
        let mut pipe = child.stdout.take().unwrap();
        let (first_ack, first_ack_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut signalled = false;
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&chunk[..n]);
                if !signalled && all.contains(&b'\n') {
                    signalled = true;
                    let _ = first_ack.send(());
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        });
        let _ = first_ack_rx.recv_timeout(Duration::from_secs(20));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        let stdout = reader.join().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            !status.success(),
            "run {run}: child exited by itself: {stderr}"
        );
        for (writer, seq) in parse_acks(&stdout) {
            let head = acknowledged.entry(writer).or_insert(seq);
            *head = (*head).max(seq);
        }

        let (store, _report) = DirStore::open(dir.path(), StoreOptions::default())
            .unwrap_or_else(|e| panic!("run {run}: store does not open after SIGKILL: {e}"));
        let heads: BTreeMap<WriterId, u64> = store
            .heads()
            .unwrap()
            .into_iter()
            .map(|h| (h.writer, h.seq))
            .collect();
        for (writer, acked) in &acknowledged {
            let head = heads.get(writer).copied();
            assert!(
                head >= Some(*acked),
                "run {run}: writer {writer} acked {acked}, store has {head:?}"
            );
            let records = store.read_range(*writer, 0..acked + 1).unwrap();
            assert_eq!(records.len() as u64, acked + 1, "run {run}");
        }
        drop(store);
        // Everything in the directory verifies (including unacknowledged but complete records).
        let summary = verify(dir.path(), 1_800_000_000)
            .unwrap_or_else(|e| panic!("run {run}: verify failed: {e}"));
        assert!(summary.records >= acknowledged.values().map(|s| s + 1).sum::<u64>());
    }
    assert_eq!(
        acknowledged.len() as u64,
        ITERATIONS,
        "every run acknowledged its genesis"
    );
}

#[test]
fn sigkill_with_fsync_per_append_loses_nothing_acknowledged() {
    crash_loop("always", 0x5eed_0001);
}

#[test]
fn sigkill_with_group_commit_loses_nothing_acknowledged() {
    crash_loop("batch", 0x5eed_0002);
}

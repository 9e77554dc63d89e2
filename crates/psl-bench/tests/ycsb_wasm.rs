//! YCSB from inside WebAssembly functions: the `ycsb` guest (built by `cargo xtask guests`
//! into `guests/out/`) driven by `psl-bench`'s YCSB driver over the embedded SCL cluster and
//! `LocalState`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use psl_bench::ycsb::wasm::{Batch, Reply, WasmTarget, status};
use psl_bench::ycsb::{Config, Report, run_via};
use psl_node::LocalState;
use psl_node::scl::{RoundRobin, SclCluster};
use psl_runtime::{InvokeError, State};

fn module() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/out/ycsb.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the guests first: `cargo xtask guests`",
            path.display()
        )
    })
}

fn tiny_a(load: bool) -> Config {
    Config {
        record_count: 200,
        operation_count: 500,
        threads: 2,
        load,
        ..Config::preset("a").unwrap()
    }
}

/// Runs `config` with the run phase in the guest on a fresh 2-worker SCL cluster.
fn wasm_scl(config: &Config, ops_per_invoke: usize) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SclCluster::start(&dir.path().join("capsule"), 2).unwrap();
    let states = (0..2)
        .map(|i| Arc::new(cluster.worker(i)) as Arc<dyn State>)
        .collect();
    let wasm = WasmTarget::new(&module(), states, ops_per_invoke).unwrap();
    let settle = || {
        anyhow::ensure!(cluster.settle(Duration::from_secs(60)), "no convergence");
        Ok(())
    };
    run_via(
        &RoundRobin(cluster.clone()),
        config,
        "wasm-scl2",
        &settle,
        Some(&wasm),
        None,
    )
    .unwrap()
}

fn count(report: &Report, op: &str) -> (u64, u64) {
    report
        .phase("run")
        .unwrap()
        .ops
        .iter()
        .find(|o| o.op == op)
        .map_or((0, 0), |o| (o.count, o.failed))
}

#[test]
fn wasm_ycsb_a_on_the_scl_finds_every_loaded_record() {
    for ops_per_invoke in [1, 16] {
        let report = wasm_scl(&tiny_a(true), ops_per_invoke);
        let run = report.phase("run").unwrap();
        assert_eq!(run.operations, 500);
        let (reads, failed_reads) = count(&report, "READ");
        let (updates, failed_updates) = count(&report, "UPDATE");
        assert!(reads > 150 && updates > 150, "{run:?}");
        assert_eq!((failed_reads, failed_updates), (0, 0), "{run:?}");
        let invokes = run.invocations.as_ref().expect("invocations are reported");
        // 250 operations per thread: 250 invocations of one, or 15 of 16 and one of 10.
        let expected = if ops_per_invoke == 1 { 500 } else { 2 * 16 };
        assert_eq!(invokes.count, expected, "{ops_per_invoke}");
        assert_eq!(report.wasm.as_ref().unwrap().ops_per_invoke, ops_per_invoke);
    }
}

#[test]
fn wasm_ycsb_reports_reads_of_missing_records_as_failures() {
    // The negative control of the test above: without the load phase no read can find its
    // record, and the guest's "not found" status must reach the report.
    let report = wasm_scl(&tiny_a(false), 4);
    let (reads, failed_reads) = count(&report, "READ");
    let (updates, failed_updates) = count(&report, "UPDATE");
    assert!(reads > 0 && updates > 0);
    assert_eq!(failed_reads, reads);
    assert_eq!(failed_updates, updates);
}

#[test]
fn wasm_ycsb_on_local_state_runs_every_workload() {
    for workload in ["a", "b", "c", "d", "e", "f"] {
        let state = Arc::new(LocalState::default());
        let wasm = WasmTarget::new(&module(), vec![state.clone()], 8).unwrap();
        let config = Config {
            record_count: 100,
            operation_count: 300,
            threads: 2,
            ..Config::preset(workload).unwrap()
        };
        let report = run_via(
            state.as_ref(),
            &config,
            "wasm-local",
            &|| Ok(()),
            Some(&wasm),
            None,
        )
        .unwrap();
        let run = report.phase("run").unwrap();
        assert_eq!(run.operations, 300, "{workload}");
        assert_eq!(run.failed, 0, "{workload}: {run:?}");
        let inserted = count(&report, "INSERT").0;
        assert_eq!(state.snapshot().len() as u64, 100 + inserted, "{workload}");
    }
}

fn invoke(target: &WasmTarget, input: Vec<u8>) -> Result<Vec<u8>, InvokeError> {
    target
        .platform(0)
        .unwrap()
        .invoke(psl_bench::ycsb::wasm::FUNCTION, input)
        .unwrap()
        .result
}

#[test]
fn the_guest_performs_each_operation_and_refuses_malformed_input() {
    let state = Arc::new(LocalState::default());
    let target = WasmTarget::new(&module(), vec![state.clone()], 1).unwrap();
    // A record of two fields, as psl-bench encodes them.
    let record = |a: &[u8], b: &[u8]| {
        let mut out = 2u32.to_le_bytes().to_vec();
        for (name, value) in [(&b"field0"[..], a), (&b"field1"[..], b)] {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    };
    let mut batch = Batch::new(2).unwrap();
    batch.put(b"user1", &record(b"aa", b"bb")).unwrap();
    batch.put(b"user2", b"not a record").unwrap();
    batch.read(b"user1", None).unwrap();
    batch.read(b"user1", Some(1)).unwrap();
    batch.read(b"user1", Some(7)).unwrap();
    batch.read(b"user2", None).unwrap();
    batch.read(b"user3", None).unwrap();
    batch.update(b"user1", 1, b"BB").unwrap();
    batch.read_modify_write(b"user1", None, 0, b"AA").unwrap();
    batch
        .read_keys(&[b"user1".to_vec(), b"user3".to_vec()])
        .unwrap();
    batch.scan(b"user", 10).unwrap();
    let valid = batch.take();
    let reply = Reply::decode(&invoke(&target, valid.clone()).unwrap()).unwrap();
    use status::{BAD_RECORD, NOT_FOUND, OK};
    assert_eq!(
        reply.statuses,
        [
            OK, OK, OK, OK, BAD_RECORD, BAD_RECORD, NOT_FOUND, OK, OK, NOT_FOUND, OK
        ]
    );
    // Found: 2 reads + the read of the RMW + 1 of READN + 2 scanned entries.
    assert_eq!(reply.found, 6);
    let snapshot = state.snapshot();
    assert_eq!(snapshot.get(&b"user1"[..]).unwrap(), &record(b"AA", b"BB"));

    // Malformed inputs: every truncation, a bad version, flags, tag, count and trailing
    // bytes fail the invocation with the guest's typed message, and nothing runs.
    let mut batch = Batch::new(2).unwrap();
    batch.put(b"fresh", b"x").unwrap();
    batch.read(b"user1", None).unwrap();
    let good = batch.take();
    let mut bad: Vec<Vec<u8>> = (0..good.len()).map(|cut| good[..cut].to_vec()).collect();
    let edit = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    bad.extend([edit(0, 2), edit(1, 1), edit(4, 0), edit(4, 3), edit(6, 9)]);
    let mut trailing = good.clone();
    trailing.push(0);
    bad.push(trailing);
    for (i, input) in bad.into_iter().enumerate() {
        match invoke(&target, input) {
            Err(InvokeError::Guest(message)) => {
                assert!(message.contains("malformed input"), "{i}: {message}")
            }
            other => panic!("{i}: expected a typed guest failure, got {other:?}"),
        }
    }
    assert!(!state.snapshot().contains_key(&b"fresh"[..]));

    // Random bytes never trap the guest.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 64) as usize;
        let mut input: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
        if let Some(first) = input.first_mut() {
            *first = 1; // get past the version check now and then
        }
        match invoke(&target, input) {
            Ok(_) | Err(InvokeError::Guest(_)) => {}
            Err(other) => panic!("the guest must fail with a message, not {other:?}"),
        }
    }
    assert!(invoke(&target, valid).is_ok());
}

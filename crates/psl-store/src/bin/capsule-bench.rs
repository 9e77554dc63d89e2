//! DataCapsule benchmark: seal+sign throughput, verify throughput (single vs batch signature
//! verification) and durable append latency per durability policy.
//!
//! `cargo run --release -p psl-store --bin capsule-bench -- [--quick] [--out FILE] [--dir DIR]`
//!
//! Plain std timing: every configuration runs `REPEATS` times and the median is reported.
//! Results go to `bench-results/capsule.json` (or `--out`) and a markdown table on stdout.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{
    CapsuleVerifier, CapsuleWriter, CryptoPool, SealRequest, SealedRecord, Update, Validity,
};
use psl_store::{DirStore, Durability, RecordStore, StoreOptions};
use serde_json::{Value, json};

const REPEATS: usize = 3;
const VALUE_BYTES: usize = 100;

fn updates(count: usize, salt: u64) -> Vec<Update> {
    (0..count)
        .map(|i| {
            Update::put(
                format!("user{:012}", salt.wrapping_mul(7919) ^ i as u64),
                vec![b'v'; VALUE_BYTES],
            )
        })
        .collect()
}

fn payload_bytes(updates: &[Update]) -> usize {
    updates
        .iter()
        .map(|u| {
            u.key.len()
                + if let psl_capsule::UpdateOp::Put(v) = &u.op {
                    v.len()
                } else {
                    0
                }
        })
        .sum()
}

fn start_writer(capsule: &TestCapsule, seed: u64) -> (CapsuleWriter, SealedRecord) {
    let (keys, certificate) = capsule.writer(seed);
    CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .expect("start")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn bench_seal(capsule: &TestCapsule, quick: bool) -> Vec<Value> {
    let mut rows = Vec::new();
    for per_record in [1usize, 10, 100, 1000] {
        for threads in [0usize, 1, 2] {
            let pool = CryptoPool::new(threads, 256).expect("pool");
            let target_updates = if quick { 20_000 } else { 200_000 };
            let records = (target_updates / per_record).clamp(20, 20_000);
            let batch = 64.min(records);
            let template = updates(per_record, 1);
            let payload = payload_bytes(&template) * records;
            let mut rates = Vec::new();
            for repeat in 0..REPEATS {
                let (mut writer, _) = start_writer(capsule, 100 + repeat as u64);
                let mut lamport = 1;
                let requests: Vec<SealRequest> = (0..records)
                    .map(|_| {
                        lamport += 1;
                        SealRequest::updates(lamport, template.clone())
                    })
                    .collect();
                let started = Instant::now();
                for chunk in requests.chunks(batch) {
                    let sealed = pool.seal_batch(&mut writer, chunk).expect("seal");
                    std::hint::black_box(sealed);
                }
                rates.push(records as f64 / started.elapsed().as_secs_f64());
            }
            let records_per_s = median(rates);
            let mb_per_s = records_per_s * (payload / records) as f64 / 1e6;
            eprintln!(
                "seal {per_record:>4} updates/record, {threads} pool threads: {records_per_s:>10.0} records/s {mb_per_s:>8.1} MB/s"
            );
            rows.push(json!({
                "updates_per_record": per_record, "pool_threads": threads,
                "records_per_s": records_per_s.round() as u64, "updates_per_s": (records_per_s * per_record as f64).round() as u64,
                "payload_mb_per_s": (mb_per_s * 10.0).round() / 10.0, "records": records,
            }));
        }
    }
    rows
}

fn bench_verify(capsule: &TestCapsule, quick: bool) -> Vec<Value> {
    let mut rows = Vec::new();
    for per_record in [1usize, 10, 100] {
        let n = if quick { 500 } else { 4000 };
        let (mut writer, genesis) = start_writer(capsule, 7);
        let mut records = vec![genesis];
        for i in 0..n {
            records.push(
                writer
                    .seal_updates(2 + i as u64, &[], &updates(per_record, i as u64))
                    .expect("seal"),
            );
        }
        for (mode, batch) in [("single", false), ("batch", true)] {
            let mut rates = Vec::new();
            for _ in 0..REPEATS {
                let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
                let started = Instant::now();
                if batch {
                    for chunk in records.chunks(256) {
                        for result in verifier.verify_batch(chunk, Validity::At(1_800_000_000)) {
                            result.expect("verifies");
                        }
                    }
                } else {
                    for record in &records {
                        verifier
                            .verify(record, Validity::At(1_800_000_000))
                            .expect("verifies");
                    }
                }
                rates.push(records.len() as f64 / started.elapsed().as_secs_f64());
            }
            let records_per_s = median(rates);
            eprintln!(
                "verify {per_record:>4} updates/record, {mode:>6}: {records_per_s:>10.0} records/s"
            );
            rows.push(json!({"updates_per_record": per_record, "mode": mode, "records_per_s": records_per_s.round() as u64}));
        }
    }
    rows
}

fn bench_append(capsule: &TestCapsule, dir: &std::path::Path, quick: bool) -> Vec<Value> {
    let mut rows = Vec::new();
    let configs: [(&str, Durability, usize); 4] = [
        ("always", Durability::Always, 1),
        ("batch", Durability::Batch, 1),
        ("batch", Durability::Batch, 4),
        ("never", Durability::Never, 1),
    ];
    for (name, durability, appenders) in configs {
        let per_appender = if quick { 100 } else { 500 };
        let path = dir.join(format!("append-{name}-{appenders}"));
        let _ = std::fs::remove_dir_all(&path);
        let store =
            DirStore::create(&path, &capsule.metadata, StoreOptions::default()).expect("create");
        let chains: Vec<Vec<SealedRecord>> = (0..appenders)
            .map(|a| {
                let (mut writer, genesis) = start_writer(capsule, 1000 + a as u64);
                store
                    .append(&[genesis], Durability::Never)
                    .expect("genesis");
                (0..per_appender)
                    .map(|i| {
                        writer
                            .seal_updates(2 + i as u64, &[], &updates(10, i as u64))
                            .expect("seal")
                    })
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chains
                .iter()
                .map(|records| {
                    let store = &store;
                    scope.spawn(move || {
                        let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                        for record in records {
                            let t = Instant::now();
                            store
                                .append(std::slice::from_ref(record), durability)
                                .expect("append");
                            histogram
                                .record(t.elapsed().as_nanos() as u64)
                                .expect("record");
                        }
                        histogram
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let elapsed = started.elapsed();
        let mut all = Histogram::<u64>::new(3).expect("histogram");
        for h in &histograms {
            all.add(h).expect("add");
        }
        let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        let appends_per_s = (appenders * per_appender) as f64 / elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "append {name:>6} x{appenders}: p50 {:>8.1} us p99 {:>8.1} us, {appends_per_s:>8.0} appends/s",
            us(0.5),
            us(0.99)
        );
        rows.push(json!({
            "policy": name, "concurrent_appenders": appenders, "appends": appenders * per_appender,
            "records_per_append": 1, "p50_us": us(0.5), "p99_us": us(0.99), "max_us": us(1.0),
            "appends_per_s": appends_per_s.round() as u64,
        }));
        drop(store);
        let _ = std::fs::remove_dir_all(&path);
    }
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench-results/capsule.json".into());
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("psl-capsule-bench"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let capsule = TestCapsule::new("capsule-bench", 1);
    let started = Instant::now();
    let seal = bench_seal(&capsule, quick);
    let verify = bench_verify(&capsule, quick);
    let append = bench_append(&capsule, &dir, quick);
    let result = json!({
        "benchmark": "capsule", "quick": quick, "repeats": REPEATS, "value_bytes": VALUE_BYTES,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "append_dir": dir.display().to_string(),
        "seal": seal, "verify": verify, "append": append,
    });
    if let Some(parent) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result).expect("json"))
        .expect("write results");
    print_markdown(&result);
    eprintln!("wrote {out} in {:?}", started.elapsed().max(Duration::ZERO));
}

fn print_markdown(result: &Value) {
    println!("| updates/record | pool threads | records/s | updates/s | payload MB/s |");
    println!("|---:|---:|---:|---:|---:|");
    for row in result["seal"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} |",
            row["updates_per_record"],
            row["pool_threads"],
            row["records_per_s"],
            row["updates_per_s"],
            row["payload_mb_per_s"]
        );
    }
    println!();
    println!("| updates/record | signature check | records/s |");
    println!("|---:|---|---:|");
    for row in result["verify"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} |",
            row["updates_per_record"],
            row["mode"].as_str().unwrap_or(""),
            row["records_per_s"]
        );
    }
    println!();
    println!("| policy | concurrent appenders | p50 µs | p99 µs | appends/s |");
    println!("|---|---:|---:|---:|---:|");
    for row in result["append"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} |",
            row["policy"].as_str().unwrap_or(""),
            row["concurrent_appenders"],
            row["p50_us"].as_f64().unwrap_or(0.0),
            row["p99_us"].as_f64().unwrap_or(0.0),
            row["appends_per_s"]
        );
    }
}

//! Append latency and throughput of 1 KiB records: JetStreamStore on a three-server R3 cluster
//! on loopback (JetStream's default sync and `sync_interval: always`) against DirStore with
//! `Durability::Always`, in the same run. Every append is one record, acknowledged before the
//! next (the flush path of a worker); `threads` writers append concurrently, each its own chain.
//!
//! Usage: `nats-store-bench [--records N] [--repetitions R] [--threads 1,4] [--out bench-results/nats-store.json]`
//! Configurations are interleaved and repeated R times (the shared VM's disk latency drifts by
//! an order of magnitude over minutes); the summary gives medians over the repetitions.
//! (needs `nats-server` on PATH or in `$PSL_NATS_SERVER`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow_like::{Context, Result};
use hdrhistogram::Histogram;
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, SealedRecord, Update};
use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_nats::{JetStreamOptions, JetStreamStore, NatsConnection, NatsOptions};
use psl_store::{DirStore, Durability, RecordStore, StoreOptions};

/// A minimal `anyhow` stand-in: this binary has no other dependencies.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, String>;
    pub trait Context<T> {
        fn context(self, what: &str) -> Result<T>;
    }
    impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
        fn context(self, what: &str) -> Result<T> {
            self.map_err(|error| format!("{what}: {error}"))
        }
    }
}

const VALUE_BYTES: usize = 1024;

struct Args {
    records: usize,
    repetitions: usize,
    threads: Vec<usize>,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        records: 2000,
        repetitions: 3,
        threads: vec![1, 4],
        out: "bench-results/nats-store.json".to_string(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().context("--records")?,
            "--repetitions" => args.repetitions = value.parse().context("--repetitions")?,
            "--threads" => {
                args.threads = value
                    .split(',')
                    .map(|part| part.parse::<usize>().context("--threads"))
                    .collect::<Result<_>>()?;
            }
            "--out" => args.out = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// `threads` chains of `records / threads` records each (genesis first), sealed up front.
fn chains(
    capsule: &TestCapsule,
    threads: usize,
    records: usize,
    seed: u64,
) -> Vec<Vec<SealedRecord>> {
    (0..threads)
        .map(|thread| {
            let (keys, certificate) = capsule.writer(seed.wrapping_add(thread as u64));
            let (mut writer, genesis) = CapsuleWriter::start(
                &capsule.metadata,
                &capsule.data_key,
                keys,
                &certificate,
                1,
                &[],
            )
            .map_err(|error| error.to_string())
            .unwrap_or_else(|error| fail(&error));
            let mut out = vec![genesis];
            for i in 0..records / threads {
                let update = Update::put(format!("key-{i}"), vec![i as u8; VALUE_BYTES]);
                let record = writer
                    .seal_updates(2 + i as u64, &[], &[update])
                    .unwrap_or_else(|error| fail(&error.to_string()));
                out.push(record);
            }
            out
        })
        .collect()
}

fn fail(message: &str) -> ! {
    eprintln!("nats-store-bench: {message}");
    std::process::exit(1)
}

struct Measured {
    histogram: Histogram<u64>,
    records: u64,
    elapsed: Duration,
}

/// Appends every chain from its own thread, one record per call; genesis records are appended
/// before the clock starts.
fn run(store: Arc<dyn RecordStore>, chains: Vec<Vec<SealedRecord>>) -> Result<Measured> {
    for chain in &chains {
        store
            .append(&chain[..1], Durability::Always)
            .context("append genesis")?;
    }
    let started = Instant::now();
    let handles: Vec<_> = chains
        .into_iter()
        .map(|chain| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
                for record in &chain[1..] {
                    let start = Instant::now();
                    store
                        .append(std::slice::from_ref(record), Durability::Always)
                        .context("append")?;
                    let micros = start.elapsed().as_micros().max(1) as u64;
                    histogram.record(micros.min(60_000_000)).context("record")?;
                }
                Ok(histogram)
            })
        })
        .collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    for handle in handles {
        let part = handle
            .join()
            .map_err(|_| "appender panicked".to_string())??;
        histogram.add(part).context("merge")?;
    }
    let elapsed = started.elapsed();
    Ok(Measured {
        records: histogram.len(),
        histogram,
        elapsed,
    })
}

fn row(store: &str, threads: usize, record_bytes: usize, measured: &Measured) -> serde_json::Value {
    let h = &measured.histogram;
    let throughput = measured.records as f64 / measured.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{store:<44} threads {threads}  p50 {:>7} us  p99 {:>7} us  mean {:>9.1} us  {:>8.0} appends/s",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.mean(),
        throughput
    );
    serde_json::json!({
        "store": store,
        "threads": threads,
        "records": measured.records,
        "record_bytes": record_bytes,
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
        "mean_us": h.mean(),
        "appends_per_s": throughput,
        "elapsed_s": measured.elapsed.as_secs_f64(),
    })
}

struct Target {
    label: &'static str,
    /// `None`: DirStore; `Some(cluster)`: JetStream R3 on that cluster.
    cluster: Option<(NatsCluster, NatsConnection)>,
}

fn jetstream_target(label: &'static str, sync_always: bool) -> Result<Target> {
    let cluster = NatsCluster::start_with(ClusterOptions {
        servers: 3,
        sync_always,
        ..ClusterOptions::default()
    })
    .context("start a 3-server nats cluster")?;
    let mut options = NatsOptions::with_servers(cluster.urls());
    options.request_timeout = Duration::from_secs(10);
    let conn = NatsConnection::connect(options).context("connect")?;
    Ok(Target {
        label,
        cluster: Some((cluster, conn)),
    })
}

fn run_target(
    target: &Target,
    threads: usize,
    records: usize,
    seed: u64,
) -> Result<(usize, Measured)> {
    // A fresh capsule per run, so every run starts from an empty store.
    let capsule = TestCapsule::new(&format!("bench-{seed}"), seed);
    let chains = chains(&capsule, threads, records, seed);
    let record_bytes = chains[0][1].len();
    match &target.cluster {
        None => {
            let dir = tempfile::tempdir().context("tempdir")?;
            let store = DirStore::create(dir.path(), &capsule.metadata, StoreOptions::default())
                .context("create DirStore")?;
            Ok((record_bytes, run(Arc::new(store), chains)?))
        }
        Some((_, conn)) => {
            let (store, _) = JetStreamStore::open_or_create(
                conn,
                &capsule.metadata,
                JetStreamOptions {
                    replicas: 3,
                    ..JetStreamOptions::default()
                },
            )
            .context("open stream")?;
            Ok((record_bytes, run(Arc::new(store), chains)?))
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    if let Err(error) = real_main() {
        fail(&error);
    }
}

fn real_main() -> Result<()> {
    let args = parse_args()?;
    let mut rows = Vec::new();
    let mut seed = 1000u64;
    let server = std::process::Command::new(
        psl_nats::testing::server_binary().ok_or("nats-server not found")?,
    )
    .arg("--version")
    .output()
    .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    .unwrap_or_default();
    println!(
        "{server}; {} records of {VALUE_BYTES} B values per run",
        args.records
    );

    let targets = vec![
        Target {
            label: "DirStore (Always: fdatasync per append)",
            cluster: None,
        },
        jetstream_target("JetStream R3 (default sync)", false)?,
        jetstream_target("JetStream R3 (sync_interval: always)", true)?,
    ];
    for repetition in 0..args.repetitions {
        println!("repetition {}", repetition + 1);
        for &threads in &args.threads {
            for target in &targets {
                seed += 100;
                let (record_bytes, measured) = run_target(target, threads, args.records, seed)?;
                let mut row = row(target.label, threads, record_bytes, &measured);
                row["repetition"] = serde_json::json!(repetition + 1);
                rows.push(row);
            }
        }
    }
    let mut summary = Vec::new();
    println!("medians over {} repetitions:", args.repetitions);
    for &threads in &args.threads {
        for target in &targets {
            let mine: Vec<&serde_json::Value> = rows
                .iter()
                .filter(|row| row["store"] == target.label && row["threads"] == threads)
                .collect();
            let pick = |key: &str| {
                let mut values: Vec<f64> =
                    mine.iter().filter_map(|row| row[key].as_f64()).collect();
                median(&mut values)
            };
            let (p50, p99, rate) = (pick("p50_us"), pick("p99_us"), pick("appends_per_s"));
            println!(
                "{:<44} threads {threads}  p50 {p50:>7.0} us  p99 {p99:>7.0} us  {rate:>8.0} appends/s",
                target.label
            );
            summary.push(serde_json::json!({
                "store": target.label,
                "threads": threads,
                "median_p50_us": p50,
                "median_p99_us": p99,
                "median_appends_per_s": rate,
            }));
        }
    }
    let report = serde_json::json!({
        "benchmark": "record store append: 1 KiB records, one record per append call, acknowledged before the next",
        "server": server,
        "cluster": "3 nats-server processes on loopback, stream R3, file storage",
        "machine": "2 vCPU shared VM (numbers vary 10-30% run to run)",
        "repetitions": args.repetitions,
        "records_per_run": args.records,
        "summary": summary,
        "rows": rows,
    });
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent).context("create output directory")?;
    }
    let text = serde_json::to_string_pretty(&report).context("json")?;
    std::fs::write(&args.out, text + "\n").context("write results")?;
    println!("wrote {}", args.out);
    Ok(())
}

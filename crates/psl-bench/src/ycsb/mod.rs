//! A YCSB core-workload generator and driver against any [`psl_runtime::State`].
//!
//! Written from the definitions of YCSB's `CoreWorkload` (Cooper et al., SoCC 2010, and the
//! properties documented with YCSB): workloads A-F and custom proportions; uniform, zipfian
//! (scrambled, YCSB's default), plain (unscrambled) zipfian, latest and hotspot request
//! distributions; `recordcount`, `operationcount`, `fieldcount`, `fieldlength`,
//! `readallfields`, `writeallfields`, `insertorder`, scan lengths; a load phase and a run
//! phase; `threads` threads, each with its own random stream derived from one seed and its own
//! copy of the key chooser; one HDR latency histogram per operation type.
//!
//! Mapping to the PSL key-value API ([`psl_runtime::Session`]), one session per thread per
//! phase (like one YCSB `DB` instance per client thread), finished at the end of the phase:
//!
//! | YCSB op | Session calls |
//! |---|---|
//! | insert | `put(key, record)` |
//! | read | `get(key)`, decode; all fields, or one field when `readallfields=false` |
//! | update | `writeallfields=true`: `put(key, new record)`; otherwise `get` + replace one field + `put` (a plain key-value store has no per-field update) |
//! | read-modify-write | `get` (read), then the update above; timed as one operation |
//! | scan | `len` `get`s of the records with ordinals `start..start+len` (see below) |
//!
//! **Scan deviation.** YCSB scans `len` records in key order from the start key, which needs a
//! range scan. The `State` interface offers only `scan_prefix`, which is not a range scan from
//! a key, and this driver does not extend the interface. Workload E therefore reads `len`
//! records by consecutive insertion ordinal from the chosen start ordinal (stopping at the newest
//! acknowledged insert). It touches the same number of records as YCSB's scan, but as point
//! reads: a store with an efficient range iterator would do better on a real scan.

pub mod cli;
pub mod generator;
pub mod record;
pub mod rng;
pub mod wasm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use psl_runtime::{Session, State};
use serde::Serialize;

use generator::{Hotspot, InsertSequence, ScrambledZipfian, SkewedLatest, Zipfian};
use record::{InsertOrder, Record, field_name, key_name};
use rng::SplitMix64;

/// Operation types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Op {
    /// Read one record.
    Read,
    /// Update one record.
    Update,
    /// Insert a new record.
    Insert,
    /// Scan a run of records.
    Scan,
    /// Read a record, then update it.
    ReadModifyWrite,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 5] = [
        Op::Read,
        Op::Update,
        Op::Insert,
        Op::Scan,
        Op::ReadModifyWrite,
    ];

    /// YCSB's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "READ",
            Op::Update => "UPDATE",
            Op::Insert => "INSERT",
            Op::Scan => "SCAN",
            Op::ReadModifyWrite => "READ-MODIFY-WRITE",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Operation mix (YCSB `*proportion`); need not sum to 1 (YCSB normalises too).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Proportions {
    /// readproportion
    pub read: f64,
    /// updateproportion
    pub update: f64,
    /// insertproportion
    pub insert: f64,
    /// scanproportion
    pub scan: f64,
    /// readmodifywriteproportion
    pub read_modify_write: f64,
}

impl Proportions {
    fn weight(&self, op: Op) -> f64 {
        match op {
            Op::Read => self.read,
            Op::Update => self.update,
            Op::Insert => self.insert,
            Op::Scan => self.scan,
            Op::ReadModifyWrite => self.read_modify_write,
        }
    }

    /// Draws an operation (YCSB `DiscreteGenerator`: uniform point in the summed weights).
    pub fn choose(&self, rng: &mut SplitMix64) -> Op {
        let total: f64 = Op::ALL.iter().map(|op| self.weight(*op)).sum();
        let mut point = rng.next_f64() * total;
        for op in Op::ALL {
            let w = self.weight(op);
            if point < w {
                return op;
            }
            point -= w;
        }
        // Rounding at the top end: the last op with a weight.
        *Op::ALL
            .iter()
            .rev()
            .find(|op| self.weight(**op) > 0.0)
            .unwrap_or(&Op::Read)
    }
}

/// Request distribution (YCSB `requestdistribution`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Uniform over the loaded records.
    Uniform,
    /// YCSB's `zipfian`: the scrambled zipfian over the loaded plus expected inserted records.
    Zipfian,
    /// Zipfian without scrambling: ordinal 0 hottest (not a YCSB option; for comparison).
    PlainZipfian,
    /// Zipfian back from the newest insert.
    Latest,
    /// `op_fraction` of the requests on the first `data_fraction` of the records.
    Hotspot {
        /// hotspotdatafraction
        data_fraction: f64,
        /// hotspotopnfraction
        op_fraction: f64,
    },
}

impl Distribution {
    /// Parses `uniform`, `zipfian`, `plainzipfian`, `latest`, `hotspot` (0.2/0.8 by default).
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "uniform" => Self::Uniform,
            "zipfian" | "scrambledzipfian" => Self::Zipfian,
            "plainzipfian" => Self::PlainZipfian,
            "latest" => Self::Latest,
            "hotspot" => Self::Hotspot {
                data_fraction: 0.2,
                op_fraction: 0.8,
            },
            other => bail!(
                "unknown distribution {other:?} (uniform, zipfian, plainzipfian, latest, hotspot)"
            ),
        })
    }
}

/// Everything that defines a run.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Workload name (`a`..`f` or `custom`).
    pub workload: String,
    /// Records loaded.
    pub record_count: u64,
    /// Operations in the run phase (all threads together).
    pub operation_count: u64,
    /// Client threads.
    pub threads: usize,
    /// Fields per record.
    pub field_count: usize,
    /// Bytes per field.
    pub field_length: usize,
    /// Operation mix.
    pub proportions: Proportions,
    /// Key chooser for read/update/scan/read-modify-write.
    pub distribution: Distribution,
    /// Reads return every field (else one random field).
    pub read_all_fields: bool,
    /// Updates write every field (else one random field).
    pub write_all_fields: bool,
    /// Key order of inserts.
    pub insert_order: InsertOrder,
    /// Digits the key number is zero-padded to (YCSB `zeropadding`, default 1).
    pub zero_padding: usize,
    /// Shortest scan.
    pub min_scan_length: u64,
    /// Longest scan (scan length uniform in `min..=max`).
    pub max_scan_length: u64,
    /// Seed of every random stream.
    pub seed: u64,
    /// Run the load phase first (off to run against an already loaded store).
    pub load: bool,
    /// YCSB `maxexecutiontime`: the run phase stops after this many seconds even if
    /// `operation_count` operations are not done (each thread checks between operations).
    pub max_execution_time_s: Option<f64>,
    /// Native run phase: finish the session (flush: seal, append, multicast) and open a new
    /// one after every this many operations, inside the timed operation that ends it, as an
    /// invocation of a function does; 0 = one session per thread for the whole phase.
    pub ops_per_session: u64,
}

impl Config {
    /// YCSB's workload files `workloada`..`workloadf` with YCSB's defaults for the rest
    /// (recordcount 1000, operationcount 1000 as in the files; 10 fields of 100 bytes).
    pub fn preset(workload: &str) -> anyhow::Result<Self> {
        let p = |read, update, insert, scan, read_modify_write| Proportions {
            read,
            update,
            insert,
            scan,
            read_modify_write,
        };
        let name = workload.to_ascii_lowercase();
        let (proportions, distribution) = match name.as_str() {
            "a" => (p(0.5, 0.5, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "b" => (p(0.95, 0.05, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "c" => (p(1.0, 0.0, 0.0, 0.0, 0.0), Distribution::Zipfian),
            "d" => (p(0.95, 0.0, 0.05, 0.0, 0.0), Distribution::Latest),
            "e" => (p(0.0, 0.0, 0.05, 0.95, 0.0), Distribution::Zipfian),
            "f" => (p(0.5, 0.0, 0.0, 0.0, 0.5), Distribution::Zipfian),
            // CoreWorkload's own defaults: read 0.95, update 0.05, uniform.
            "custom" => (p(0.95, 0.05, 0.0, 0.0, 0.0), Distribution::Uniform),
            other => bail!("unknown workload {other:?} (a, b, c, d, e, f, custom)"),
        };
        Ok(Self {
            workload: name,
            record_count: 1000,
            operation_count: 1000,
            threads: 1,
            field_count: 10,
            field_length: 100,
            proportions,
            distribution,
            read_all_fields: true,
            write_all_fields: false,
            insert_order: InsertOrder::Hashed,
            zero_padding: 1,
            min_scan_length: 1,
            max_scan_length: 100,
            seed: 0x5EED,
            load: true,
            max_execution_time_s: None,
            ops_per_session: 0,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.record_count >= 1, "recordcount must be at least 1");
        anyhow::ensure!(self.threads >= 1, "threads must be at least 1");
        anyhow::ensure!(self.field_count >= 1, "fieldcount must be at least 1");
        anyhow::ensure!(
            1 <= self.min_scan_length && self.min_scan_length <= self.max_scan_length,
            "scan lengths must satisfy 1 <= min <= max"
        );
        let p = &self.proportions;
        let weights = [p.read, p.update, p.insert, p.scan, p.read_modify_write];
        anyhow::ensure!(
            weights.iter().all(|w| *w >= 0.0 && w.is_finite()) && weights.iter().sum::<f64>() > 0.0,
            "proportions must be non-negative with a positive sum"
        );
        Ok(())
    }
}

/// The key chooser of one thread (YCSB `CoreWorkload.keychooser`).
#[derive(Clone, Debug)]
enum KeyChooser {
    Uniform { count: u64 },
    Scrambled(ScrambledZipfian),
    Plain(Zipfian),
    Latest(SkewedLatest),
    Hotspot(Hotspot),
}

impl KeyChooser {
    fn new(config: &Config) -> Self {
        let records = config.record_count;
        // YCSB sizes the zipfian key space for the inserts it expects (twice the insert share
        // of the operations), so that the popular keys do not move as records are added; draws
        // beyond the newest record are redrawn.
        let total: f64 = Op::ALL
            .iter()
            .map(|op| config.proportions.weight(*op))
            .sum();
        let expected_new =
            (config.operation_count as f64 * config.proportions.insert / total * 2.0) as u64;
        match config.distribution {
            Distribution::Uniform => Self::Uniform { count: records },
            Distribution::Zipfian => {
                Self::Scrambled(ScrambledZipfian::new(0, records + expected_new - 1))
            }
            Distribution::PlainZipfian => Self::Plain(Zipfian::new(0, records + expected_new - 1)),
            Distribution::Latest => Self::Latest(SkewedLatest::new(records - 1)),
            Distribution::Hotspot {
                data_fraction,
                op_fraction,
            } => Self::Hotspot(Hotspot::new(0, records - 1, data_fraction, op_fraction)),
        }
    }

    /// YCSB `nextKeynum`: a key ordinal no newer than the newest acknowledged insert.
    fn next(&mut self, rng: &mut SplitMix64, inserts: &InsertSequence) -> u64 {
        loop {
            let last = inserts.last();
            let ordinal = match self {
                Self::Uniform { count } => rng.below(*count),
                Self::Scrambled(g) => g.next(rng),
                Self::Plain(g) => g.next(rng),
                Self::Latest(g) => g.next(rng, last),
                Self::Hotspot(g) => g.next(rng),
            };
            if ordinal <= last {
                return ordinal;
            }
        }
    }
}

/// Latency summary of one operation type in one phase (nanoseconds).
#[derive(Clone, Debug, Serialize)]
pub struct OpStats {
    /// YCSB's name of the operation.
    pub op: &'static str,
    /// Operations done.
    pub count: u64,
    /// Operations that failed: a backend error, or a read of a key that was not there.
    pub failed: u64,
    /// Mean latency.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 95th percentile.
    pub p95_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Maximum.
    pub max_ns: u64,
}

/// One phase (load or run).
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// `load` or `run`.
    pub phase: &'static str,
    /// Operations done.
    pub operations: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Wall time of the phase.
    pub elapsed_s: f64,
    /// Operations per second over the phase.
    pub throughput_ops_s: f64,
    /// Per operation type, only those that ran.
    pub ops: Vec<OpStats>,
    /// `wasm-*` targets: one entry (`INVOKE`) for the function invocations, each carrying
    /// `ops_per_invoke` operations (latency of a whole invocation, including generating and
    /// encoding its operations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocations: Option<OpStats>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Backend name.
    pub target: String,
    /// The configuration.
    pub config: Config,
    /// Serialized record size in bytes.
    pub record_bytes: usize,
    /// Load then run.
    pub phases: Vec<PhaseReport>,
    /// `wasm-*` targets: how the run phase invoked the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmInfo>,
}

/// How a `wasm-*` run invoked the `ycsb` guest.
#[derive(Clone, Debug, Serialize)]
pub struct WasmInfo {
    /// BLAKE3 hash of the guest module.
    pub module: String,
    /// YCSB operations per function invocation.
    pub ops_per_invoke: usize,
    /// Platforms (runtimes), one per worker; client thread `i` uses platform `i % platforms`.
    pub platforms: usize,
}

impl Report {
    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.phase == name)
    }

    /// The header of the Markdown summary table.
    pub fn markdown_header() -> &'static str {
        "| workload | target | threads | records | ops | load ops/s | run ops/s | op | p50 µs | p95 µs | p99 µs | p99.9 µs | max µs | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    /// The summary rows (one per operation type of the run phase).
    pub fn markdown(&self) -> String {
        let load = self
            .phase("load")
            .map_or("-".to_string(), |p| format!("{:.0}", p.throughput_ops_s));
        let Some(run) = self.phase("run") else {
            return String::new();
        };
        let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
        run.ops
            .iter()
            .chain(&run.invocations)
            .map(|o| {
                format!(
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                    self.config.workload.to_uppercase(),
                    self.target,
                    self.config.threads,
                    self.config.record_count,
                    run.operations,
                    load,
                    run.throughput_ops_s,
                    o.op,
                    us(o.p50_ns),
                    us(o.p95_ns),
                    us(o.p99_ns),
                    us(o.p999_ns),
                    us(o.max_ns),
                    o.failed
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Per-thread measurements.
struct Tally {
    histograms: Vec<Histogram<u64>>,
    failed: [u64; 5],
    /// Whole function invocations (`wasm-*` targets).
    invokes: Histogram<u64>,
    invokes_failed: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        let histograms = Op::ALL
            .iter()
            .map(|_| Histogram::new_with_bounds(1, 3_600_000_000_000, 3))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            histograms,
            failed: [0; 5],
            invokes: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?,
            invokes_failed: 0,
        })
    }

    fn record(&mut self, op: Op, started: Instant, ok: bool) {
        self.record_ns(op, started.elapsed().as_nanos() as u64, ok);
    }

    fn record_ns(&mut self, op: Op, ns: u64, ok: bool) {
        let ns = ns.clamp(1, 3_600_000_000_000);
        // The value is within the histogram's bounds by construction.
        let _ = self.histograms[op.index()].record(ns);
        if !ok {
            self.failed[op.index()] += 1;
        }
    }

    fn record_invoke(&mut self, ns: u64, ok: bool) {
        let _ = self.invokes.record(ns.clamp(1, 3_600_000_000_000));
        if !ok {
            self.invokes_failed += 1;
        }
    }

    fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            mine.add(theirs)?;
        }
        for (mine, theirs) in self.failed.iter_mut().zip(other.failed) {
            *mine += theirs;
        }
        self.invokes.add(&other.invokes)?;
        self.invokes_failed += other.invokes_failed;
        Ok(())
    }

    fn report(&self, phase: &'static str, elapsed_s: f64) -> PhaseReport {
        let stats = |op: &'static str, h: &Histogram<u64>, failed: u64| OpStats {
            op,
            count: h.len(),
            failed,
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.50),
            p95_ns: h.value_at_quantile(0.95),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        };
        let ops: Vec<OpStats> = Op::ALL
            .iter()
            .zip(&self.histograms)
            .filter(|(_, h)| !h.is_empty())
            .map(|(op, h)| stats(op.name(), h, self.failed[op.index()]))
            .collect();
        let invocations =
            (!self.invokes.is_empty()).then(|| stats("INVOKE", &self.invokes, self.invokes_failed));
        let operations = ops.iter().map(|o| o.count).sum();
        PhaseReport {
            phase,
            operations,
            failed: self.failed.iter().sum(),
            elapsed_s,
            throughput_ops_s: operations as f64 / elapsed_s.max(1e-9),
            ops,
            invocations,
        }
    }
}

/// One client thread: its stream, key chooser and session.
struct Client<'a> {
    config: &'a Config,
    rng: SplitMix64,
    chooser: KeyChooser,
    inserts: &'a InsertSequence,
    session: Box<dyn Session>,
    /// Opens the next session of this thread (with `config.ops_per_session`).
    new_session: &'a (dyn Fn(usize) -> Box<dyn Session> + Sync),
    /// This client's thread index.
    thread: usize,
    /// Operations done in `session`.
    in_session: u64,
    /// `wasm-*` targets in the run phase: operations go to the guest instead of `session`.
    wasm: Option<WasmClient<'a>>,
}

/// The run-phase state of a client thread that sends its operations to the `ycsb` guest.
struct WasmClient<'a> {
    target: &'a wasm::WasmTarget,
    thread: usize,
    batch: wasm::Batch,
    /// The operations in `batch`, in order.
    ops: Vec<Op>,
    /// Insert ordinals in `batch`, acknowledged once the invocation returns.
    inserting: Vec<u64>,
    /// When the first operation of `batch` started.
    started: Option<Instant>,
    /// The first invocation failure, reported once.
    reported: bool,
}

impl Client<'_> {
    fn key(&self, ordinal: u64) -> Vec<u8> {
        key_name(ordinal, self.config.insert_order, self.config.zero_padding).into_bytes()
    }

    fn insert(&mut self, ordinal: u64) -> bool {
        let key = self.key(ordinal);
        let record = Record::random(
            &mut self.rng,
            self.config.field_count,
            self.config.field_length,
        );
        self.session.put(&key, &record.encode()).is_ok()
    }

    /// Reads record `ordinal`: all fields or one; `false` if missing, malformed or failed.
    fn read(&mut self, ordinal: u64) -> bool {
        let key = self.key(ordinal);
        let one_field = (!self.config.read_all_fields)
            .then(|| field_name(self.rng.below(self.config.field_count as u64) as usize));
        match self.session.get(&key) {
            Ok(Some(bytes)) => match Record::decode(&bytes) {
                Some(record) => match one_field {
                    Some(name) => record.field(name.as_bytes()).is_some(),
                    None => record.fields.len() == self.config.field_count,
                },
                None => false,
            },
            _ => false,
        }
    }

    fn update(&mut self, ordinal: u64) -> bool {
        let key = self.key(ordinal);
        let (count, length) = (self.config.field_count, self.config.field_length);
        if self.config.write_all_fields {
            let record = Record::random(&mut self.rng, count, length);
            return self.session.put(&key, &record.encode()).is_ok();
        }
        let name = field_name(self.rng.below(count as u64) as usize);
        let value = record::random_bytes(&mut self.rng, length);
        let Ok(Some(bytes)) = self.session.get(&key) else {
            return false;
        };
        let Some(mut record) = Record::decode(&bytes) else {
            return false;
        };
        record.set(name.into_bytes(), value);
        self.session.put(&key, &record.encode()).is_ok()
    }

    fn scan(&mut self, start: u64) -> bool {
        let length = self
            .rng
            .inclusive(self.config.min_scan_length, self.config.max_scan_length);
        let last = self.inserts.last();
        let mut ok = true;
        for ordinal in start..start.saturating_add(length).min(last.saturating_add(1)) {
            ok &= self.read(ordinal);
        }
        ok
    }

    /// Like [`Client::operation`], but encodes the operation into the guest batch (drawing the
    /// same random values in the same order as the native methods) and invokes the guest once
    /// the batch holds `ops_per_invoke` operations.
    fn wasm_operation(&mut self, tally: &mut Tally) {
        let op = self.config.proportions.choose(&mut self.rng);
        let started = Instant::now();
        let Some(checkpoint) = self.wasm.as_ref().map(|w| w.batch.checkpoint()) else {
            return;
        };
        let encoded = self.encode(op);
        let Some(wasm) = self.wasm.as_mut() else {
            return;
        };
        if let Err(e) = encoded {
            // Only a key, value or scan beyond the wire format's bounds gets here: the
            // operation fails and leaves the batch as it was.
            if !wasm.reported {
                eprintln!("ycsb wasm: cannot encode {}: {e:#}", op.name());
                wasm.reported = true;
            }
            wasm.batch.rollback(checkpoint);
            tally.record(op, started, false);
            return;
        }
        wasm.started.get_or_insert(started);
        wasm.ops.push(op);
        if wasm.ops.len() >= wasm.target.ops_per_invoke {
            self.wasm_invoke(tally);
        }
    }

    fn encode(&mut self, op: Op) -> anyhow::Result<()> {
        let (count, length) = (self.config.field_count, self.config.field_length);
        let read_field = |client: &mut Self| {
            (!client.config.read_all_fields).then(|| client.rng.below(count as u64) as usize)
        };
        match op {
            Op::Read => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                let key = self.key(k);
                let field = read_field(self);
                self.batch()?.read(&key, field)
            }
            Op::Update => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                let key = self.key(k);
                self.encode_update(&key, None)
            }
            Op::ReadModifyWrite => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                let key = self.key(k);
                let field = read_field(self);
                self.encode_update(&key, Some(field))
            }
            Op::Scan => {
                let start = self.chooser.next(&mut self.rng, self.inserts);
                let len = self
                    .rng
                    .inclusive(self.config.min_scan_length, self.config.max_scan_length);
                let last = self.inserts.last();
                let keys: Vec<Vec<u8>> = (start
                    ..start.saturating_add(len).min(last.saturating_add(1)))
                    .map(|ordinal| self.key(ordinal))
                    .collect();
                self.batch()?.read_keys(&keys)
            }
            Op::Insert => {
                let ordinal = self.inserts.next();
                let key = self.key(ordinal);
                let record = Record::random(&mut self.rng, count, length).encode();
                let wasm = self.wasm.as_mut().context("no wasm client")?;
                // Acknowledged once the invocation returns (or now, if it cannot be encoded:
                // an insert that never happens must not hold back the newest acknowledged one).
                wasm.inserting.push(ordinal);
                let put = wasm.batch.put(&key, &record);
                if put.is_err() {
                    wasm.inserting.pop();
                    self.inserts.acknowledge(ordinal);
                }
                put
            }
        }
    }

    /// An update (`read_first: None`) or a read-modify-write reading `read_first`'s field.
    fn encode_update(
        &mut self,
        key: &[u8],
        read_first: Option<Option<usize>>,
    ) -> anyhow::Result<()> {
        let (count, length) = (self.config.field_count, self.config.field_length);
        if self.config.write_all_fields {
            let record = Record::random(&mut self.rng, count, length).encode();
            let batch = self.batch()?;
            return match read_first {
                // With writeallfields a read-modify-write is two wire operations, READ then
                // PUT; `wasm_invoke` folds their two statuses into one.
                Some(field) => {
                    batch.read(key, field)?;
                    batch.put(key, &record)
                }
                None => batch.put(key, &record),
            };
        }
        let field = self.rng.below(count as u64) as usize;
        let value = record::random_bytes(&mut self.rng, length);
        let batch = self.batch()?;
        match read_first {
            Some(read_field) => batch.read_modify_write(key, read_field, field, &value),
            None => batch.update(key, field, &value),
        }
    }

    fn batch(&mut self) -> anyhow::Result<&mut wasm::Batch> {
        Ok(&mut self.wasm.as_mut().context("no wasm client")?.batch)
    }

    /// Adds an insert of record `ordinal` to the batch (load phase through invocations).
    fn wasm_insert(&mut self, ordinal: u64, tally: &mut Tally) {
        let key = self.key(ordinal);
        let record = Record::random(
            &mut self.rng,
            self.config.field_count,
            self.config.field_length,
        );
        let started = Instant::now();
        let Some(wasm) = self.wasm.as_mut() else {
            return;
        };
        if let Err(e) = wasm.batch.put(&key, &record.encode()) {
            if !wasm.reported {
                eprintln!("ycsb wasm: cannot encode an insert: {e:#}");
                wasm.reported = true;
            }
            tally.record(Op::Insert, started, false);
            return;
        }
        wasm.started.get_or_insert(started);
        wasm.ops.push(Op::Insert);
        if wasm.ops.len() >= wasm.target.ops_per_invoke {
            self.wasm_invoke(tally);
        }
    }

    /// Invokes the guest on the pending batch (if any) and records its operations.
    fn wasm_invoke(&mut self, tally: &mut Tally) {
        let Some(wasm) = self.wasm.as_mut() else {
            return;
        };
        if wasm.ops.is_empty() {
            return;
        }
        let wire_ops = wasm.batch.len();
        let input = wasm.batch.take();
        let reply = wasm.target.invoke(wasm.thread, input, wire_ops);
        let started = wasm.started.take().unwrap_or_else(Instant::now);
        let ns = started.elapsed().as_nanos() as u64;
        for ordinal in wasm.inserting.drain(..) {
            self.inserts.acknowledge(ordinal);
        }
        let ops = std::mem::take(&mut wasm.ops);
        let per_op = ns / ops.len() as u64;
        tally.record_invoke(ns, reply.is_ok());
        match reply {
            Ok(reply) => {
                // A read-modify-write with writeallfields is two wire operations (READ, PUT).
                let mut statuses = reply.statuses.iter();
                let rmw_pair = self.config.write_all_fields;
                for op in ops {
                    let mut ok = statuses.next() == Some(&wasm::status::OK);
                    if rmw_pair && op == Op::ReadModifyWrite {
                        ok &= statuses.next() == Some(&wasm::status::OK);
                    }
                    tally.record_ns(op, per_op, ok);
                }
            }
            Err(e) => {
                if !wasm.reported {
                    eprintln!("ycsb wasm: invocation failed: {e:#}");
                    wasm.reported = true;
                }
                for op in ops {
                    tally.record_ns(op, per_op, false);
                }
            }
        }
    }

    fn operation(&mut self, tally: &mut Tally) {
        if self.wasm.is_some() {
            return self.wasm_operation(tally);
        }
        let op = self.config.proportions.choose(&mut self.rng);
        let started = Instant::now();
        let ok = match op {
            Op::Read => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                self.read(k)
            }
            Op::Update => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                self.update(k)
            }
            Op::ReadModifyWrite => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                self.read(k) & self.update(k)
            }
            Op::Scan => {
                let k = self.chooser.next(&mut self.rng, self.inserts);
                self.scan(k)
            }
            Op::Insert => {
                let ordinal = self.inserts.next();
                let ok = self.insert(ordinal);
                self.inserts.acknowledge(ordinal);
                ok
            }
        };
        let mut ok = ok;
        if self.config.ops_per_session > 0 {
            self.in_session += 1;
            if self.in_session >= self.config.ops_per_session {
                ok &= self.session.finish().is_ok();
                self.session = (self.new_session)(self.thread);
                self.in_session = 0;
            }
        }
        tally.record(op, started, ok);
    }
}

/// Opens a session for client thread `i` (to pin threads to workers).
pub type Sessions<'a> = dyn Fn(usize) -> Box<dyn Session> + Sync + 'a;

/// How a phase reaches the store: native sessions (`state.session()`, or `sessions` per
/// thread) or invocations of the `ycsb` guest (`wasm`).
#[derive(Clone, Copy, Default)]
struct Via<'a> {
    wasm: Option<&'a wasm::WasmTarget>,
    sessions: Option<&'a Sessions<'a>>,
}

/// Runs `phase` on `config.threads` threads, each with its own client, and merges the tallies.
fn run_phase<S: State + ?Sized>(
    state: &S,
    config: &Config,
    inserts: &InsertSequence,
    chooser: &KeyChooser,
    phase: &'static str,
    via: Via<'_>,
    body: &(dyn Fn(&mut Client<'_>, &mut Tally, usize) + Sync),
) -> anyhow::Result<PhaseReport> {
    let Via { wasm, sessions } = via;
    let started = Instant::now();
    let any = |_thread: usize| state.session();
    let new_session: &Sessions<'_> = sessions.unwrap_or(&any);
    let tallies = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.threads)
            .map(|index| {
                let chooser = chooser.clone();
                scope.spawn(move || -> anyhow::Result<Tally> {
                    let stream = if phase == "load" { 0 } else { 1 << 32 };
                    let wasm = match wasm {
                        Some(target) => Some(WasmClient {
                            target,
                            thread: index,
                            batch: wasm::Batch::new(config.field_count)?,
                            ops: Vec::new(),
                            inserting: Vec::new(),
                            started: None,
                            reported: false,
                        }),
                        None => None,
                    };
                    let mut client = Client {
                        config,
                        rng: SplitMix64::for_thread(config.seed, stream | index as u64),
                        chooser,
                        inserts,
                        session: new_session(index),
                        new_session,
                        thread: index,
                        in_session: 0,
                        wasm,
                    };
                    let mut tally = Tally::new()?;
                    body(&mut client, &mut tally, index);
                    // The last, partial batch.
                    client.wasm_invoke(&mut tally);
                    client
                        .session
                        .finish()
                        .with_context(|| format!("finishing the {phase} session"))?;
                    Ok(tally)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a {phase} thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = Tally::new()?;
    for tally in &tallies {
        total.merge(tally)?;
    }
    Ok(total.report(phase, elapsed))
}

/// Operations thread `index` of `threads` does out of `total` (YCSB: an even split, the
/// remainder to the first threads).
fn share(total: u64, threads: usize, index: usize) -> u64 {
    let threads = threads as u64;
    total / threads + u64::from((index as u64) < total % threads)
}

/// Loads (unless `config.load` is off) and runs the workload against `state`.
pub fn run<S: State + ?Sized>(state: &S, config: &Config, target: &str) -> anyhow::Result<Report> {
    run_with_barrier(state, config, target, &|| Ok(()))
}

/// Like [`run`], with `barrier` called between the load and run phases: for eventually
/// consistent targets it waits until every replica has the loaded records (as separate YCSB
/// load and run invocations would see them), and is not timed.
pub fn run_with_barrier<S: State + ?Sized>(
    state: &S,
    config: &Config,
    target: &str,
    barrier: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    run_via(state, config, target, barrier, None, None)
}

/// Like [`run_with_barrier`], with the run phase's operations sent to the `ycsb` guest through
/// `wasm` (when given) instead of native sessions, and the run phase's native sessions opened
/// by `sessions` (thread index to session; default: `state.session()`). The load phase is
/// native on `state`: it is not timed against the targets' goals, and it loads the same
/// records either way.
pub fn run_via<S: State + ?Sized>(
    state: &S,
    config: &Config,
    target: &str,
    barrier: &dyn Fn() -> anyhow::Result<()>,
    wasm: Option<&wasm::WasmTarget>,
    sessions: Option<&Sessions<'_>>,
) -> anyhow::Result<Report> {
    config.validate()?;
    let inserts = InsertSequence::new(config.record_count);
    let chooser = KeyChooser::new(config);
    let mut phases = Vec::new();
    if config.load {
        let next = Arc::new(AtomicU64::new(0));
        let load = move |client: &mut Client<'_>, tally: &mut Tally, _index: usize| loop {
            let ordinal = next.fetch_add(1, Ordering::Relaxed);
            if ordinal >= client.config.record_count {
                break;
            }
            if client.wasm.is_some() {
                client.wasm_insert(ordinal, tally);
                continue;
            }
            let started = Instant::now();
            let ok = client.insert(ordinal);
            tally.record(Op::Insert, started, ok);
        };
        // Without a state in this process (a cluster behind a gateway), the load goes through
        // invocations of the guest too.
        let load_via = match wasm {
            Some(target) if target.remote() => Via {
                wasm: Some(target),
                sessions: None,
            },
            _ => Via::default(),
        };
        phases.push(run_phase(
            state, config, &inserts, &chooser, "load", load_via, &load,
        )?);
        barrier()?;
    }
    let operations = config.operation_count;
    let threads = config.threads;
    let limit = config
        .max_execution_time_s
        .map(|s| std::time::Duration::from_secs_f64(s.max(0.0)));
    let work = move |client: &mut Client<'_>, tally: &mut Tally, index: usize| {
        let started = Instant::now();
        for done in 0..share(operations, threads, index) {
            if let Some(limit) = limit
                && done % 64 == 0
                && started.elapsed() >= limit
            {
                break;
            }
            client.operation(tally);
        }
    };
    phases.push(run_phase(
        state,
        config,
        &inserts,
        &chooser,
        "run",
        Via { wasm, sessions },
        &work,
    )?);
    let record_bytes = Record::random(
        &mut SplitMix64::new(0),
        config.field_count,
        config.field_length,
    )
    .encode()
    .len();
    Ok(Report {
        target: target.to_string(),
        config: config.clone(),
        record_bytes,
        phases,
        wasm: wasm.map(|w| WasmInfo {
            module: w.module.clone(),
            ops_per_invoke: w.ops_per_invoke,
            platforms: w.platforms(),
        }),
    })
}

#[cfg(test)]
mod tests;

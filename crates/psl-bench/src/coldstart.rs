//! Cold start of the embedded cluster, and what attestation and key provisioning cost in it:
//! the prepare phase (owner attests the manager, provisions the owner secret), one worker's
//! enrollment (mutual attestation, certificate, data key), a whole `SclCluster::start`, and a
//! worker restart (enrollment plus replay of the store). Simulated TEE (no hardware here).

use std::time::Instant;

use hdrhistogram::Histogram;
use psl_node::scl::SclCluster;
use psl_node::trust::{ManagerTrust, SimTrust};

/// Percentiles of one measured step, microseconds.
#[derive(Debug, serde::Serialize)]
pub struct Step {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub samples: u64,
    /// p50, p99 in microseconds.
    pub latency_us: [f64; 2],
}

fn step(name: &str, histogram: &Histogram<u64>) -> Step {
    Step {
        name: name.into(),
        samples: histogram.len(),
        latency_us: [
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
        ],
    }
}

fn params() -> psl_capsule::CreationParams {
    psl_capsule::CreationParams {
        created_s: 1_700_000_000,
        salt: [7; 16],
        record_bytes_max: 1 << 22,
    }
}

/// Runs `reps` repetitions of each step with `workers` workers per cluster.
pub fn run(workers: usize, reps: u64) -> anyhow::Result<Vec<Step>> {
    let new = || Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3);
    let (mut prepare, mut enroll, mut start, mut restart) = (new()?, new()?, new()?, new()?);
    for _ in 0..reps {
        let trust = SimTrust::generate()?;
        let began = Instant::now();
        let (mut manager, metadata) = ManagerTrust::prepare(trust, "bench", params())?;
        prepare.record(began.elapsed().as_nanos() as u64)?;
        for _ in 0..workers {
            let began = Instant::now();
            let parts = manager.enroll_worker(metadata.id())?;
            enroll.record(began.elapsed().as_nanos() as u64)?;
            drop(parts);
        }
        let dir = tempfile::tempdir()?;
        let began = Instant::now();
        let cluster = SclCluster::start(&dir.path().join("capsule"), workers)?;
        start.record(began.elapsed().as_nanos() as u64)?;
        let began = Instant::now();
        cluster.restart_worker(0)?;
        restart.record(began.elapsed().as_nanos() as u64)?;
    }
    Ok(vec![
        step(
            "prepare phase (owner attests manager, provisions secret)",
            &prepare,
        ),
        step(
            "enroll one worker (mutual attestation, certificate, data key)",
            &enroll,
        ),
        step(
            &format!(
                "SclCluster::start, {workers} workers (all of the above + store + genesis records)"
            ),
            &start,
        ),
        step("restart one worker (enroll + replay the store)", &restart),
    ])
}

/// A Markdown table of the steps.
pub fn markdown(steps: &[Step]) -> String {
    let mut out = String::from("| step | samples | p50 (us) | p99 (us) |\n|---|---:|---:|---:|\n");
    for s in steps {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} |\n",
            s.name, s.samples, s.latency_us[0], s.latency_us[1]
        ));
    }
    out
}

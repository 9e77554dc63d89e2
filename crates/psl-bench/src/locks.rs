//! Lock benchmark on the embedded SCL cluster: acquire+release latency of a write lock without
//! contention and with `threads` sessions (on different workers) contending for one lock, each
//! critical section writing one key (so every release flushes a sealed, fsynced record).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use psl_node::scl::SclCluster;
use psl_runtime::{LockMode, State};

/// Latency percentiles of one scenario, microseconds.
#[derive(Debug, serde::Serialize)]
pub struct LockScenario {
    /// What was measured.
    pub name: String,
    /// Sessions contending.
    pub threads: usize,
    /// Acquire+release pairs measured.
    pub pairs: u64,
    /// Pairs per second, all threads together.
    pub pairs_per_s: f64,
    /// p50, p99, p99.9 of one acquire+write+release, microseconds.
    pub latency_us: [f64; 3],
}

fn scenario(
    cluster: &SclCluster,
    name: &str,
    threads: usize,
    per_thread: u64,
    write: bool,
) -> anyhow::Result<LockScenario> {
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        60_000_000_000,
        3,
    )?));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (cluster, histogram) = (cluster.clone(), Arc::clone(&histogram));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut session = cluster.worker(t).session();
                for i in 0..per_thread {
                    let begin = Instant::now();
                    session.lock(b"bench-lock", LockMode::Write, Duration::from_secs(30))?;
                    if write {
                        session.put(b"bench-key", &i.to_le_bytes())?;
                    }
                    session.unlock(b"bench-lock")?;
                    let ns = u64::try_from(begin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    histogram
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .record(ns.max(1))?;
                }
                session.finish()?;
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a lock thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let pairs = per_thread * threads as u64;
    Ok(LockScenario {
        name: name.to_string(),
        threads,
        pairs,
        pairs_per_s: pairs as f64 / elapsed,
        latency_us: [us(0.5), us(0.99), us(0.999)],
    })
}

/// Runs the scenarios on a fresh `workers`-worker cluster.
pub fn run(workers: usize, per_thread: u64) -> anyhow::Result<Vec<LockScenario>> {
    let dir = tempfile::tempdir()?;
    let cluster = SclCluster::start(&dir.path().join("capsule"), workers)?;
    Ok(vec![
        scenario(&cluster, "uncontended, no write", 1, per_thread, false)?,
        scenario(
            &cluster,
            "uncontended, one write (flush + fsync at release)",
            1,
            per_thread,
            true,
        )?,
        scenario(&cluster, "contended, one write", workers, per_thread, true)?,
    ])
}

/// A Markdown table of the scenarios.
pub fn markdown(scenarios: &[LockScenario]) -> String {
    let mut out = String::from(
        "| scenario | sessions | pairs/s | p50 us | p99 us | p99.9 us |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for s in scenarios {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            s.name, s.threads, s.pairs_per_s, s.latency_us[0], s.latency_us[1], s.latency_us[2]
        ));
    }
    out
}

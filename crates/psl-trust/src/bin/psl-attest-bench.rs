//! Simulated attestation and key provisioning latency per worker.
//!
//! `cargo run --release -p psl-trust --bin psl-attest-bench -- [workers] [output.json]`
//! (defaults: 1000 workers, `bench-results/attest.json`). One worker's provisioning is the whole
//! sans-IO exchange in one process: manager challenge (manager evidence), worker request (the
//! worker verifies the manager, then its own evidence), manager enroll (verify, policy,
//! certificate, HPKE Auth seal) and worker accept (certificate check, HPKE open). No network.
//! Seeds are deterministic (benchmark only; real callers draw them from a CSPRNG).

use std::time::Instant;

use psl_capsule::{CapsuleMetadata, CreationParams};
use psl_trust::{
    BinaryIdentity, DistributorConfig, FunctionHash, KeyDistributor, ManagerEndpoint, Measurement,
    OwnerSecret, Platform, Policy, SimRootKey, SimTee, WorkerEnrollment, sim_measurement,
};

fn seed(label: &str, n: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("psl-attest-bench");
    hasher.update(label.as_bytes());
    hasher.update(&n.to_le_bytes());
    *hasher.finalize().as_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workers: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let output = args
        .next()
        .unwrap_or_else(|| "bench-results/attest.json".to_string());

    let root = SimRootKey::from_seed(&seed("root", 0));
    let manager_binary = BinaryIdentity::named("psl-manager", "bench");
    let worker_binary = BinaryIdentity::named("psl-worker", "bench");
    let function = FunctionHash::of_module(b"bench function");
    let sim = |bytes: [u8; 32]| Measurement::new(Platform::Sim, &bytes).ok_or("measurement");
    let policy = Policy::dev_sim(
        root.public_key(),
        sim(sim_measurement(&manager_binary, None))?,
        [(
            function,
            sim(sim_measurement(&worker_binary, Some(&function)))?,
        )],
    );
    let secret = OwnerSecret::from_bytes(seed("secret", 0));
    let metadata = CapsuleMetadata::new(
        secret.owner_key().public_key(),
        "bench",
        CreationParams {
            created_s: 1_800_000_000,
            salt: [1; 16],
            record_bytes_max: 1 << 20,
        },
    )?;
    let mut distributor = KeyDistributor::new(
        policy.clone(),
        DistributorConfig::default(),
        ManagerEndpoint::new(&seed("manager", 0)),
        secret.owner_key(),
        metadata.clone(),
        secret.data_key(&metadata.id()),
    );
    let manager_tee = SimTee::new(&root, manager_binary, None);
    let worker_tee = SimTee::new(&root, worker_binary, Some(function));
    let now = 1_800_000_000;

    let mut total = Vec::new();
    let mut phases = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut grant_bytes = 0usize;
    let mut request_bytes = 0usize;
    for n in 0..workers + 50 {
        let start = Instant::now();
        let challenge = distributor.challenge(&manager_tee, seed("nonce", n), now)?;
        let t1 = Instant::now();
        let worker = WorkerEnrollment::new(
            policy.clone(),
            Some(metadata.id()),
            &seed("channel", n),
            &seed("writer", n),
            Some(function),
        );
        let (request, pending) = worker.request(&worker_tee, &challenge, now)?;
        let t2 = Instant::now();
        let (grant, _) = distributor.enroll(&request, now, seed("entropy", n))?;
        let t3 = Instant::now();
        let provisioned = pending.accept(&grant, now)?;
        let t4 = Instant::now();
        std::hint::black_box(&provisioned);
        if n >= 50 {
            // The first 50 are warm-up.
            let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
            total.push(us(start, t4));
            phases[0].push(us(start, t1));
            phases[1].push(us(t1, t2));
            phases[2].push(us(t2, t3));
            phases[3].push(us(t3, t4));
            grant_bytes = grant.len();
            request_bytes = request.len();
        }
    }
    total.sort_by(f64::total_cmp);
    for phase in &mut phases {
        phase.sort_by(f64::total_cmp);
    }
    let names = [
        "manager challenge (manager sim evidence)",
        "worker request (verify manager, worker sim evidence)",
        "manager enroll (verify worker, policy, certificate, HPKE seal)",
        "worker accept (certificate check, HPKE open)",
    ];
    println!("sim attestation + key provisioning, {workers} workers, one thread, in process:");
    println!(
        "  per worker: p50 {:.1} us, p99 {:.1} us, mean {:.1} us",
        percentile(&total, 0.5),
        percentile(&total, 0.99),
        total.iter().sum::<f64>() / total.len().max(1) as f64
    );
    let mut phase_json = Vec::new();
    for (name, phase) in names.iter().zip(&phases) {
        println!("  {name}: p50 {:.1} us", percentile(phase, 0.5));
        phase_json.push(serde_json::json!({
            "phase": name,
            "p50_us": percentile(phase, 0.5),
            "p99_us": percentile(phase, 0.99),
        }));
    }
    println!("  request {request_bytes} bytes, grant {grant_bytes} bytes (JSON)");
    let json = serde_json::json!({
        "benchmark": "sim attestation + key provisioning per worker",
        "workers": workers,
        "threads": 1,
        "transport": "none (in-process sans-IO calls)",
        "per_worker_us": {
            "p50": percentile(&total, 0.5),
            "p90": percentile(&total, 0.9),
            "p99": percentile(&total, 0.99),
            "max": total.last().copied().unwrap_or(0.0),
            "mean": total.iter().sum::<f64>() / total.len().max(1) as f64,
        },
        "phases": phase_json,
        "request_bytes": request_bytes,
        "grant_bytes": grant_bytes,
    });
    if let Some(parent) = std::path::Path::new(&output).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&output, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("wrote {output}");
    Ok(())
}

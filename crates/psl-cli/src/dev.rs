//! `psl dev` (the embedded platform with a demo and an HTTP API) and `psl run` (one shot).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use psl_node::Platform;
use psl_node::scl::{RoundRobin, SclCluster};
use psl_runtime::{Outcome, RuntimeConfig};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Extra modules to deploy, each named after its file stem.
    modules: Vec<PathBuf>,
    /// Address to serve the HTTP API on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Directory holding the example modules (built by `cargo xtask guests`).
    #[arg(long, env = "PSL_EXAMPLES", default_value = "guests/out")]
    examples: PathBuf,
    /// Skip the end-to-end demo of the examples.
    #[arg(long)]
    no_demo: bool,
    /// Stop after the demo instead of serving.
    #[arg(long)]
    exit_after_demo: bool,
    /// Directory for the compiled-module cache (default: none, compile on every start).
    #[arg(long, env = "PSL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Workers (each with its own replica of the state) in this process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Directory for the DataCapsule the workers write (must not exist yet; default: a
    /// temporary directory removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the generated trust policy (for `psl attest --policy`; default: in the
    /// temporary directory).
    #[arg(long)]
    policy_out: Option<PathBuf>,
}

const EXAMPLES: [&str; 3] = ["hello", "counter", "bank"];

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("  {spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(80));
    bar
}

fn deploy_file(platform: &Platform, name: &str, path: &Path) -> anyhow::Result<()> {
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bar = spinner(format!("compiling {name} ({} KiB)", wasm.len() / 1024));
    let started = Instant::now();
    let deployed = platform.deploy(name, &wasm);
    bar.finish_and_clear();
    let id = deployed.with_context(|| format!("deploying {}", path.display()))?;
    println!(
        "  {name:<8} {}  compiled in {} ms",
        id.short(),
        started.elapsed().as_millis()
    );
    Ok(())
}

fn output_of(outcome: Outcome, what: &str) -> anyhow::Result<String> {
    let output = outcome.result.with_context(|| format!("{what} failed"))?;
    Ok(String::from_utf8_lossy(&output).into_owned())
}

fn demo(platform: &Arc<Platform>) -> anyhow::Result<()> {
    println!("demo (every call below runs a WebAssembly function on the JIT runtime):");
    let outcome = platform.invoke("hello", b"PSL".to_vec())?;
    let took = outcome.elapsed;
    println!(
        "  hello(\"PSL\")                 -> {}   ({} us)",
        output_of(outcome, "hello")?,
        took.as_micros()
    );

    let (threads, per_thread) = (4u64, 25u64);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let platform = Arc::clone(platform);
            std::thread::spawn(move || -> anyhow::Result<()> {
                for _ in 0..per_thread {
                    output_of(
                        platform.invoke("counter", b"demo-counter".to_vec())?,
                        "counter",
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a counter thread panicked"))??;
    }
    let value = output_of(
        platform.invoke("counter", b"demo-counter".to_vec())?,
        "counter",
    )?;
    let expected = threads * per_thread + 1;
    let verdict = if value == expected.to_string() {
        "exact"
    } else {
        "WRONG"
    };
    println!(
        "  counter x {} from {threads} threads -> {value} ({verdict}; {} ms)",
        threads * per_thread + 1,
        started.elapsed().as_millis()
    );
    if verdict != "exact" {
        bail!("counter ended at {value}, expected {expected}");
    }

    let (accounts, balance) = (16u64, 1000u64);
    output_of(
        platform.invoke("bank", format!("open {accounts} {balance}").into_bytes())?,
        "bank open",
    )?;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|seed| {
            let platform = Arc::clone(platform);
            std::thread::spawn(move || -> anyhow::Result<String> {
                output_of(
                    platform.invoke("bank", format!("transfer {} 250", seed + 1).into_bytes())?,
                    "bank transfer",
                )
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a bank thread panicked"))??;
    }
    let total = output_of(platform.invoke("bank", b"total".to_vec())?, "bank total")?;
    let expected = accounts * balance;
    let verdict = if total == expected.to_string() {
        "kept"
    } else {
        "BROKEN"
    };
    println!(
        "  bank: {} concurrent transfers  -> total {total} (invariant {verdict}; {} ms)",
        threads * 250,
        started.elapsed().as_millis()
    );
    if verdict != "kept" {
        bail!("bank total is {total}, expected {expected}");
    }
    Ok(())
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let config = RuntimeConfig {
        cache_dir: args.cache_dir.clone(),
        ..RuntimeConfig::default()
    };
    let temp = tempfile::tempdir()?;
    let capsule_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("capsule"));
    let workers = args.workers.clamp(1, 64);
    let trust = psl_node::trust::SimTrust::generate()?;
    let policy_path = args
        .policy_out
        .clone()
        .unwrap_or_else(|| temp.path().join("policy.json"));
    std::fs::write(&policy_path, trust.policy.to_json())
        .with_context(|| format!("writing {}", policy_path.display()))?;
    println!("{}", trust.banner());
    let started = Instant::now();
    let cluster =
        SclCluster::start_with_trust(&capsule_dir, workers, psl_node::scl::LEASE_MS, trust)
            .with_context(|| {
                format!(
                    "starting the cluster with its DataCapsule in {}",
                    capsule_dir.display()
                )
            })?;
    let gate_cluster = cluster.clone();
    let platform = Arc::new(
        Platform::new(config, Arc::new(RoundRobin(cluster.clone())))?.with_gate(Arc::new(
            move |module: &[u8]| {
                gate_cluster
                    .check_function(module)
                    .map_err(|e| e.to_string())
            },
        )),
    );
    println!(
        "PSL dev platform: embedded, {workers} worker(s), each with a replica of the state; updates are \
         sealed, signed and appended to the DataCapsule at {}",
        capsule_dir.display()
    );
    println!(
        "  trust: the owner attested the manager ({}) and provisioned the owner secret; {} worker(s) \
         attested and got certificates and the data key ({} ms)",
        cluster.manager_claims(),
        cluster.enrolled(),
        started.elapsed().as_millis()
    );
    println!(
        "  policy: {} (check the manager: psl attest --policy {0})",
        policy_path.display()
    );
    let mut examples_found = 0;
    if args.examples.is_dir() {
        println!("deploying examples from {}", args.examples.display());
        for name in EXAMPLES {
            let path = args.examples.join(format!("{name}.wasm"));
            if path.is_file() {
                deploy_file(&platform, name, &path)?;
                examples_found += 1;
            }
        }
    }
    for path in &args.modules {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("function")
            .to_lowercase();
        deploy_file(&platform, &name, path)?;
    }
    if !args.no_demo {
        if examples_found == EXAMPLES.len() {
            demo(&platform)?;
            let settled = cluster.settle(Duration::from_secs(10));
            let digests = cluster.digests();
            let same = settled && digests.windows(2).all(|d| d[0] == d[1]);
            println!(
                "  replicas: {} ({} workers, state digest {})",
                if same { "converged" } else { "NOT converged" },
                digests.len(),
                digests
                    .first()
                    .map(|d| d
                        .iter()
                        .take(6)
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>())
                    .unwrap_or_default()
            );
            if !same {
                bail!("replicas did not converge");
            }
        } else {
            println!(
                "examples not found in {} (build them with `cargo xtask guests`); skipping the demo",
                args.examples.display()
            );
        }
    }
    if args.exit_after_demo {
        return Ok(ExitCode::SUCCESS);
    }
    let attestor = cluster.clone();
    let metrics = cluster.clone();
    serve(
        platform,
        &args.listen,
        Arc::new(move |challenge: &[u8]| attestor.attest(challenge).map_err(|e| e.to_string())),
        Arc::new(move || metrics.render_metrics()),
    )
}

fn serve(
    platform: Arc<Platform>,
    listen: &str,
    attestor: psl_node::gateway::Attestor,
    metrics: psl_node::gateway::MetricsSource,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!(
            "serving on http://{} (Ctrl-C to stop)",
            listener.local_addr()?
        );
        println!(
            "  try: psl invoke hello world    or    curl -d world http://{listen}/invoke/hello"
        );
        axum::serve(
            listener,
            psl_node::gateway::router_with(platform, Some(attestor), Some(metrics)),
        )
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_once(
    module: &Path,
    input: Option<String>,
    deadline_ms: u64,
) -> anyhow::Result<ExitCode> {
    let mut config = RuntimeConfig::default();
    config.limits.invocation.execution_time_max = Duration::from_millis(deadline_ms);
    let platform = Platform::new(config, Arc::new(psl_node::LocalState::default()))?;
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let bar = spinner(format!("compiling {}", module.display()));
    let deployed = platform.deploy("main", &wasm);
    bar.finish_and_clear();
    deployed.with_context(|| format!("deploying {}", module.display()))?;
    let outcome = platform.invoke("main", input.unwrap_or_default().into_bytes())?;
    if !outcome.stdout.is_empty() {
        eprintln!(
            "--- stdout ---\n{}",
            String::from_utf8_lossy(&outcome.stdout)
        );
    }
    if !outcome.stderr.is_empty() {
        eprintln!(
            "--- stderr ---\n{}",
            String::from_utf8_lossy(&outcome.stderr)
        );
    }
    for line in &outcome.logs {
        eprintln!("[{:?}] {}", line.level, line.message);
    }
    eprintln!(
        "({} us, {} host calls)",
        outcome.elapsed.as_micros(),
        outcome.host_calls
    );
    match outcome.result {
        Ok(output) => {
            println!("{}", String::from_utf8_lossy(&output));
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error).context("the function failed"),
    }
}

//! The `psl-bench ycsb` command line: flags named after YCSB's properties.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use psl_runtime::State;

use super::record::InsertOrder;
use super::wasm::WasmTarget;
use super::{Config, Distribution, Report, run, run_via};

/// `psl-bench ycsb`: a YCSB core workload against a PSL state backend.
#[derive(clap::Args, Debug)]
pub struct YcsbArgs {
    /// Workload: a, b, c, d, e, f, or custom (with the proportion flags).
    #[arg(long, default_value = "a")]
    pub workload: String,
    /// Backend: `local` (psl-node's in-memory single-node LocalState), `scl` (the embedded
    /// SCL cluster with `--workers` replicas and a DataCapsule), or `wasm-local` / `wasm-scl`
    /// (the same stores, with the run phase's operations performed by the `ycsb` WebAssembly
    /// function, `--ops-per-invoke` operations per invocation). A comma-separated list runs
    /// each target in turn (each on a fresh store) and also writes a comparison table.
    #[arg(long, default_value = "local", value_delimiter = ',')]
    pub target: Vec<String>,
    /// Workers of the `scl` and `wasm-scl` targets.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// YCSB operations per function invocation of the `wasm-*` targets (1..=2048); a
    /// comma-separated list runs each value in turn.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub ops_per_invoke: Vec<usize>,
    /// Native targets: finish the session (flush) and open a new one after every this many
    /// run-phase operations, as a function invocation does (0: one session per thread for the
    /// whole phase, YCSB's one DB instance per client thread). A comma-separated list runs
    /// each value in turn.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    pub ops_per_session: Vec<u64>,
    /// The `psl` executable the `wasm-cluster` target starts nodes with (default: next to
    /// this one; build it with `cargo build --release -p psl-cli`).
    #[arg(long)]
    pub psl_bin: Option<PathBuf>,
    /// The `ycsb` guest module of the `wasm-*` targets.
    #[arg(long, default_value = "guests/out/ycsb.wasm")]
    pub wasm: PathBuf,
    /// Records loaded.
    #[arg(long, default_value_t = 1000)]
    pub recordcount: u64,
    /// Operations in the run phase.
    #[arg(long, default_value_t = 1000)]
    pub operationcount: u64,
    /// YCSB maxexecutiontime: stop the run phase after this many seconds.
    #[arg(long)]
    pub maxexecutiontime: Option<f64>,
    /// Client threads.
    #[arg(long, alias = "threadcount", default_value_t = 1)]
    pub threads: usize,
    /// Fields per record.
    #[arg(long, default_value_t = 10)]
    pub fieldcount: usize,
    /// Bytes per field.
    #[arg(long, default_value_t = 100)]
    pub fieldlength: usize,
    /// Override: uniform, zipfian (scrambled, YCSB's), plainzipfian, latest, hotspot.
    #[arg(long)]
    pub requestdistribution: Option<String>,
    /// Override readproportion.
    #[arg(long)]
    pub readproportion: Option<f64>,
    /// Override updateproportion.
    #[arg(long)]
    pub updateproportion: Option<f64>,
    /// Override insertproportion.
    #[arg(long)]
    pub insertproportion: Option<f64>,
    /// Override scanproportion.
    #[arg(long)]
    pub scanproportion: Option<f64>,
    /// Override readmodifywriteproportion.
    #[arg(long)]
    pub readmodifywriteproportion: Option<f64>,
    /// Reads return all fields (false: one random field).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub readallfields: bool,
    /// Updates write all fields (false: one random field, read-modify-write of the record).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub writeallfields: bool,
    /// hashed (YCSB default) or ordered.
    #[arg(long, default_value = "hashed")]
    pub insertorder: String,
    /// Zero-pad key numbers to this many digits.
    #[arg(long, default_value_t = 1)]
    pub zeropadding: usize,
    /// Shortest scan.
    #[arg(long, default_value_t = 1)]
    pub minscanlength: u64,
    /// Longest scan.
    #[arg(long, default_value_t = 100)]
    pub maxscanlength: u64,
    /// hotspotdatafraction (with --requestdistribution hotspot).
    #[arg(long, default_value_t = 0.2)]
    pub hotspotdatafraction: f64,
    /// hotspotopnfraction (with --requestdistribution hotspot).
    #[arg(long, default_value_t = 0.8)]
    pub hotspotopnfraction: f64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Directory for ycsb-<workload>-<target>.json and .md (and ycsb-<workload>-compare.* for
    /// several runs).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

impl YcsbArgs {
    /// The run configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::preset(&self.workload)?;
        config.record_count = self.recordcount;
        config.operation_count = self.operationcount;
        config.threads = self.threads;
        config.field_count = self.fieldcount;
        config.field_length = self.fieldlength;
        if let Some(name) = &self.requestdistribution {
            config.distribution = match Distribution::parse(name)? {
                Distribution::Hotspot { .. } => Distribution::Hotspot {
                    data_fraction: self.hotspotdatafraction,
                    op_fraction: self.hotspotopnfraction,
                },
                other => other,
            };
        }
        let p = &mut config.proportions;
        for (flag, slot) in [
            (self.readproportion, &mut p.read),
            (self.updateproportion, &mut p.update),
            (self.insertproportion, &mut p.insert),
            (self.scanproportion, &mut p.scan),
            (self.readmodifywriteproportion, &mut p.read_modify_write),
        ] {
            if let Some(value) = flag {
                *slot = value;
            }
        }
        config.read_all_fields = self.readallfields;
        config.write_all_fields = self.writeallfields;
        config.insert_order = match self.insertorder.as_str() {
            "hashed" => InsertOrder::Hashed,
            "ordered" => InsertOrder::Ordered,
            other => bail!("unknown insertorder {other:?} (hashed, ordered)"),
        };
        config.zero_padding = self.zeropadding;
        config.min_scan_length = self.minscanlength;
        config.max_scan_length = self.maxscanlength;
        config.seed = self.seed;
        config.max_execution_time_s = self.maxexecutiontime;
        Ok(config)
    }
}

/// One target: its store, built fresh for every run.
fn run_target(
    args: &YcsbArgs,
    config: &Config,
    target: &str,
    ops_per_invoke: usize,
) -> anyhow::Result<Report> {
    let wasm_target = |states: Vec<Arc<dyn State>>| -> anyhow::Result<WasmTarget> {
        let module = WasmTarget::read_module(&args.wasm)?;
        WasmTarget::new(&module, states, ops_per_invoke)
    };
    match target {
        "local" => {
            let name = match config.ops_per_session {
                0 => "local".to_string(),
                k => format!("local-s{k}"),
            };
            run(&psl_node::LocalState::default(), config, &name)
        }
        "wasm-local" => {
            let state = Arc::new(psl_node::LocalState::default());
            let wasm = wasm_target(vec![state.clone()])?;
            let name = format!("wasm-local-k{ops_per_invoke}");
            run_via(state.as_ref(), config, &name, &|| Ok(()), Some(&wasm), None)
        }
        "scl" | "wasm-scl" | "scl-nats" | "wasm-scl-nats" => {
            // The embedded SCL cluster: `workers` replicas in this process, records sealed,
            // signed and appended (fsync) to a DataCapsule in a temporary directory at every
            // flush; native sessions spread over the workers in turn, and for `wasm-scl` one
            // platform (runtime) per worker, client thread `i` invoking on worker `i % workers`.
            let dir = tempfile::tempdir()?;
            let on_nats = target.ends_with("-nats");
            // `*-nats`: the same workers, but records multicast through a real three-server
            // NATS cluster on loopback and kept in a JetStream stream with three replicas
            // (durable at JetStream's quorum acknowledgement).
            let _nats;
            let cluster = if on_nats {
                let nats = psl_nats::testing::NatsCluster::start(3)
                    .context("starting three nats-server processes (is nats-server installed?)")?;
                let connect = || {
                    psl_nats::NatsConnection::connect(psl_nats::NatsOptions::with_servers(
                        nats.urls(),
                    ))
                };
                let bus = Arc::new(psl_nats::NatsBus::new(connect()?));
                let store_conn = connect()?;
                let open = move |metadata: &psl_capsule::CapsuleMetadata| -> Result<
                    Arc<dyn psl_store::RecordStore>,
                    psl_node::scl::ClusterError,
                > {
                    let options = psl_nats::JetStreamOptions {
                        replicas: 3,
                        ..psl_nats::JetStreamOptions::default()
                    };
                    let (store, _) =
                        psl_nats::JetStreamStore::open_or_create(&store_conn, metadata, options)
                            .map_err(|e| psl_node::scl::ClusterError::Setup(e.to_string()))?;
                    Ok(Arc::new(store))
                };
                let cluster = psl_node::scl::SclCluster::start_with_store(
                    args.workers,
                    psl_node::scl::LEASE_MS,
                    psl_node::trust::SimTrust::generate()?,
                    bus,
                    &open,
                )
                .context("starting the SCL cluster on NATS")?;
                _nats = Some(nats);
                cluster
            } else {
                _nats = None;
                psl_node::scl::SclCluster::start(&dir.path().join("capsule"), args.workers)
                    .context("starting the SCL cluster")?
            };
            let suffix = if on_nats { "-nats" } else { "" };
            let settle = || {
                anyhow::ensure!(
                    cluster.settle(std::time::Duration::from_secs(600)),
                    "replicas did not converge after the load"
                );
                Ok(())
            };
            let native = psl_node::scl::RoundRobin(cluster.clone());
            if !target.starts_with("wasm-") {
                let name = match config.ops_per_session {
                    0 => format!("scl{}{suffix}", args.workers),
                    k => format!("scl{}{suffix}-s{k}", args.workers),
                };
                // Run-phase sessions of thread `i` on worker `i % workers`, like `wasm-scl`'s
                // invocations (with one session per thread this is what round robin gives).
                let workers = args.workers;
                let pinned = |thread: usize| cluster.worker(thread % workers).session();
                return run_via(&native, config, &name, &settle, None, Some(&pinned));
            }
            let states = (0..args.workers)
                .map(|i| Arc::new(cluster.worker(i)) as Arc<dyn State>)
                .collect();
            let wasm = wasm_target(states)?;
            let name = format!("wasm-scl{}{suffix}-k{ops_per_invoke}", args.workers);
            run_via(&native, config, &name, &settle, Some(&wasm), None)
        }
        "wasm-cluster" => run_cluster(args, config, ops_per_invoke),
        other => bail!(
            "unknown target {other:?} (local, scl, scl-nats, wasm-local, wasm-scl, \
             wasm-scl-nats, wasm-cluster)"
        ),
    }
}

/// Cluster mode: three `nats-server` processes, a manager and `--workers` worker processes
/// (`psl node`), the guest deployed on every worker; this process is the gateway (sealed
/// invocations over NATS to the workers' queue group). Every operation, the load included, is
/// an invocation; every invocation ends with a flush, durable at JetStream's quorum
/// acknowledgement (streams with three replicas).
fn run_cluster(args: &YcsbArgs, config: &Config, ops_per_invoke: usize) -> anyhow::Result<Report> {
    use psl_node::cluster::process::NodeProcess;
    let psl = match &args.psl_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("psl"),
    };
    anyhow::ensure!(
        psl.is_file(),
        "{} not found: build it with `cargo build --release -p psl-cli` (or pass --psl-bin)",
        psl.display()
    );
    let module = WasmTarget::read_module(&args.wasm)?;
    let wasm_path = std::fs::canonicalize(&args.wasm)?;
    let nats = psl_nats::testing::NatsCluster::start(3)
        .context("starting three nats-server processes (is nats-server installed?)")?;
    let dir = tempfile::tempdir()?;
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        "app = \"ycsb\"\nnats = [{}]\nsim_root_seed = \"{}\"\nreplicas = 3\n\n[worker]\nthreads = {}\nexecution_time_max_ms = 600000\n\n[worker.functions]\n{} = {:?}\n",
        urls.join(", "),
        hex::encode(seed),
        args.threads.max(1),
        super::wasm::FUNCTION,
        wasm_path.display().to_string(),
    );
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, &text)?;
    let wait = std::time::Duration::from_secs(120);
    let spawn = |role: &str, name: &str| {
        NodeProcess::spawn(
            &psl,
            role,
            &config_path,
            &[],
            &dir.path().join(format!("{name}.log")),
            wait,
        )
    };
    let _manager = spawn("manager", "manager")?;
    let _workers = (0..args.workers.max(1))
        .map(|i| spawn("worker", &format!("worker-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let node_config = psl_node::cluster::NodeConfig::parse(&text).map_err(anyhow::Error::msg)?;
    let gateway = psl_node::cluster::gateway::GatewayNode::start(
        "ycsb",
        node_config.sim_trust()?,
        node_config.bus("ycsb-bench")?,
        std::time::Duration::from_secs(600),
    )?;
    let wasm = WasmTarget::through_gateway(
        gateway,
        args.workers.max(1),
        psl_trust::FunctionHash::of_module(&module).to_string(),
        ops_per_invoke,
    )?;
    let name = format!("wasm-cluster{}-k{ops_per_invoke}", args.workers.max(1));
    // No state in this process: every operation goes through the workers.
    let unused = psl_node::LocalState::default();
    run_via(&unused, config, &name, &|| Ok(()), Some(&wasm), None)
}

fn write_files(out: &Path, stem: &str, json: &str, markdown: &str) -> anyhow::Result<()> {
    for (file, text) in [
        (format!("{stem}.json"), json),
        (format!("{stem}.md"), markdown),
    ] {
        let path = out.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs the command: each target (and, for `wasm-*`, each `--ops-per-invoke`), then the JSON
/// and Markdown files, then the summary on stdout.
pub fn main(args: YcsbArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut runs = Vec::new();
    for target in &args.target {
        // (operations per invocation, operations per native session) of each run.
        let variants: Vec<(usize, u64)> = if target.starts_with("wasm-") {
            args.ops_per_invoke.iter().map(|&k| (k, 0)).collect()
        } else {
            args.ops_per_session.iter().map(|&s| (1, s)).collect()
        };
        for (k, per_session) in variants {
            let config = Config {
                ops_per_session: per_session,
                ..config.clone()
            };
            eprintln!(
                "ycsb {}: target {target}{}",
                config.workload,
                if target.starts_with("wasm-") {
                    format!(", {k} op(s) per invocation")
                } else if per_session > 0 {
                    format!(", {per_session} op(s) per session")
                } else {
                    String::new()
                }
            );
            let report = run_target(&args, &config, target, k)?;
            let stem = format!("ycsb-{}-{}", config.workload, report.target);
            let markdown = format!("{}\n{}\n", Report::markdown_header(), report.markdown());
            write_files(
                &args.out,
                &stem,
                &serde_json::to_string_pretty(&report)?,
                &markdown,
            )?;
            for phase in &report.phases {
                eprintln!(
                    "{}: {} ops in {:.2} s = {:.0} ops/s, {} failed",
                    phase.phase,
                    phase.operations,
                    phase.elapsed_s,
                    phase.throughput_ops_s,
                    phase.failed
                );
            }
            runs.push(report);
        }
    }
    let rows: Vec<String> = runs.iter().map(Report::markdown).collect();
    let markdown = format!("{}\n{}\n", Report::markdown_header(), rows.join("\n"));
    if runs.len() > 1 {
        let stem = format!("ycsb-{}-compare", config.workload);
        write_files(
            &args.out,
            &stem,
            &serde_json::to_string_pretty(&runs)?,
            &markdown,
        )?;
    }
    println!("{markdown}");
    let failed: u64 = runs.iter().flat_map(|r| &r.phases).map(|p| p.failed).sum();
    anyhow::ensure!(failed == 0, "{failed} operation(s) failed; see the JSON");
    Ok(())
}

//! `psl node` (one role of cluster mode, in this process) and `psl up` (a local multi-process
//! cluster: three `nats-server` processes, a manager, N workers and a gateway on loopback).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use psl_nats::Bus;
use psl_node::cluster::gateway::GatewayNode;
use psl_node::cluster::manager::ManagerNode;
use psl_node::cluster::process::NodeProcess;
use psl_node::cluster::worker::{WorkerNode, WorkerOptions};
use psl_node::cluster::{NodeConfig, Role};
use psl_node::scl::ClusterError;

/// `psl node`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The role this process plays.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Configuration file (TOML; see docs/deploy.md). Flags and environment override it.
    #[arg(long, env = "PSL_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URLs, comma-separated.
    #[arg(long, env = "PSL_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// Application name.
    #[arg(long, env = "PSL_APP")]
    app: Option<String>,
    /// File holding the simulated TEE root's seed (hex).
    #[arg(long, env = "PSL_SIM_ROOT_FILE")]
    sim_root_file: Option<PathBuf>,
    /// Gateway: address to serve HTTP on.
    #[arg(long)]
    listen: Option<String>,
    /// Worker: a function to deploy, `name=module.wasm` (repeatable).
    #[arg(long = "function", value_parser = parse_function)]
    functions: Vec<(String, PathBuf)>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Manager,
    Worker,
    Gateway,
    Capsuledb,
}

fn parse_function(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected name=module.wasm, got {text:?}"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

impl NodeArgs {
    fn config(&self) -> anyhow::Result<(Role, NodeConfig)> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        if !self.nats.is_empty() {
            config.nats = self.nats.clone();
        }
        if let Some(app) = &self.app {
            config.app = app.clone();
        }
        if let Some(file) = &self.sim_root_file {
            config.sim_root_file = Some(file.clone());
            config.sim_root_seed = None;
        }
        if let Some(listen) = &self.listen {
            config.gateway.listen = listen.clone();
        }
        for (name, path) in &self.functions {
            config.worker.functions.insert(name.clone(), path.clone());
        }
        let role = match self.role {
            RoleArg::Manager => Role::Manager,
            RoleArg::Worker => Role::Worker,
            RoleArg::Gateway => Role::Gateway,
            RoleArg::Capsuledb => Role::Capsuledb,
        };
        Ok((role, config))
    }
}

/// Serves `/metrics` on `listen` when configured; the words the `ready` line says about it.
fn serve_metrics(
    listen: Option<&str>,
    source: psl_node::gateway::MetricsSource,
) -> anyhow::Result<String> {
    Ok(match listen {
        Some(listen) => {
            let address = psl_node::cluster::serve_metrics(listen, source)?;
            format!(", metrics on http://{address}/metrics")
        }
        None => String::new(),
    })
}

/// Blocks until Ctrl-C (SIGINT); SIGTERM and SIGKILL end the process as usual.
fn wait_for_ctrl_c() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

/// Runs one role until interrupted. Prints one `ready` line on stdout once serving.
pub fn node(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let (role, config) = args.config()?;
    let trust = config.sim_trust()?;
    eprintln!("{}", trust.banner());
    match role {
        Role::Manager => {
            let bus = config.bus("psl-manager")?;
            let store_conn = config.connect("psl-manager-store")?;
            let open = |metadata: &psl_capsule::CapsuleMetadata| {
                config.create_store(&store_conn, metadata)
            };
            let policy = trust.policy.clone();
            let node = ManagerNode::start(
                &config.app,
                trust,
                bus as Arc<dyn Bus>,
                config.lease_ms,
                &open,
            )?;
            let node = Arc::new(node);
            let source = Arc::clone(&node);
            let metrics = serve_metrics(
                config.manager.metrics_listen.as_deref(),
                Arc::new(move || source.render_metrics()),
            )?;
            if let Some(path) = &config.manager.policy_out {
                std::fs::write(path, policy.to_json())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!(
                "ready: manager of app {} (capsule {}), measurement {}{metrics}",
                config.app,
                node.metadata().id(),
                node.claims().measurement
            );
            wait_for_ctrl_c()?;
        }
        Role::Worker => {
            let bus = config.bus("psl-worker")?;
            let store_conn = config.connect("psl-worker-store")?;
            let open =
                |metadata: &psl_capsule::CapsuleMetadata| config.open_store(&store_conn, metadata);
            let options = WorkerOptions {
                app: config.app.clone(),
                functions: config
                    .worker
                    .functions
                    .iter()
                    .map(|(n, p)| (n.clone(), p.clone()))
                    .collect(),
                threads: config.worker.threads,
                runtime: config.runtime(),
                catch_up_max: psl_node::cluster::worker::CATCH_UP_MAX,
            };
            let node = Arc::new(WorkerNode::start(
                options,
                trust,
                bus as Arc<dyn Bus>,
                &open,
            )?);
            let source = Arc::clone(&node);
            let metrics = serve_metrics(
                config.worker.metrics_listen.as_deref(),
                Arc::new(move || source.render_metrics()),
            )?;
            let names: Vec<String> = node.platform().list().into_iter().map(|l| l.name).collect();
            println!(
                "ready: worker {} of app {}, functions {}{metrics}",
                node.writer(),
                config.app,
                names.join(",")
            );
            wait_for_ctrl_c()?;
        }
        Role::Gateway => {
            let bus = config.bus("psl-gateway")?;
            let node = GatewayNode::start(
                &config.app,
                trust,
                bus as Arc<dyn Bus>,
                Duration::from_millis(config.gateway.timeout_ms.max(1)),
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let listen = config.gateway.listen.clone();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                println!("ready: gateway on http://{}", listener.local_addr()?);
                axum::serve(listener, node.router())
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
                anyhow::Ok(())
            })?;
        }
        Role::Capsuledb => {
            return Err(ClusterError::Setup(
                "the capsuledb role is not built yet (CapsuleDB is a later issue); run \
                 manager, worker and gateway nodes"
                    .into(),
            )
            .into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `psl up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Address the gateway serves HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory holding the example modules (built by `cargo xtask guests`).
    #[arg(long, env = "PSL_EXAMPLES", default_value = "guests/out")]
    examples: PathBuf,
    /// Directory for the configuration, seed and logs (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the counter and bank examples through the gateway, print the results, and stop.
    #[arg(long)]
    check: bool,
}

/// Starts `psl node --role <role>` (this executable) and waits for its `ready` line.
fn spawn_node(dir: &Path, config: &Path, name: &str, role: &str) -> anyhow::Result<NodeProcess> {
    Ok(NodeProcess::spawn(
        &std::env::current_exe()?,
        role,
        config,
        &[],
        &dir.join(format!("{name}.log")),
        Duration::from_secs(60),
    )?)
}

fn post(url: &str, body: &str) -> anyhow::Result<String> {
    let mut response = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)?;
    let text = response.body_mut().read_to_string()?;
    if response.status() != 200 {
        bail!("{url}: {} {text}", response.status());
    }
    Ok(text)
}

/// Runs the local multi-process cluster until Ctrl-C (or, with `--check`, runs the examples
/// once and stops).
pub fn up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let temp = tempfile::tempdir()?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let nats =
        psl_nats::testing::NatsCluster::start(3).context("starting three nats-server processes")?;
    println!("NATS: 3 servers at {}", nats.urls().join(","));
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let seed_file = dir.join("sim-root.hex");
    std::fs::write(&seed_file, hex::encode(seed))?;
    let mut functions = String::new();
    for name in ["hello", "counter", "bank", "ycsb"] {
        let path = args.examples.join(format!("{name}.wasm"));
        if path.is_file() {
            let path = std::fs::canonicalize(&path)?;
            functions.push_str(&format!("{name} = {:?}\n", path.display().to_string()));
        }
    }
    if functions.is_empty() {
        println!(
            "no example modules in {} (build them with `cargo xtask guests`); workers start with no functions",
            args.examples.display()
        );
    }
    let config = dir.join("node.toml");
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "app = \"psl\"\nnats = [{}]\nsim_root_file = {:?}\nreplicas = 3\n\n[manager]\npolicy_out = {:?}\nmetrics_listen = \"127.0.0.1:0\"\n\n[gateway]\nlisten = {:?}\n\n[worker]\nmetrics_listen = \"127.0.0.1:0\"\n\n[worker.functions]\n{functions}",
            urls.join(", "),
            seed_file.display().to_string(),
            dir.join("policy.json").display().to_string(),
            args.listen,
        ),
    )?;
    let mut nodes = Vec::new();
    let manager = spawn_node(&dir, &config, "manager", "manager")?;
    println!("{}", manager.ready);
    nodes.push(manager);
    for i in 0..args.nodes.max(1) {
        let worker = spawn_node(&dir, &config, &format!("worker-{i}"), "worker")?;
        println!("{}", worker.ready);
        nodes.push(worker);
    }
    let gateway = spawn_node(&dir, &config, "gateway", "gateway")?;
    println!("{}", gateway.ready);
    nodes.push(gateway);
    println!(
        "cluster up in {:.1} s: 3 nats-server, 1 manager, {} workers, 1 gateway (config and logs in {})",
        started.elapsed().as_secs_f64(),
        args.nodes.max(1),
        dir.display()
    );
    let base = format!("http://{}", args.listen);
    if args.check {
        println!("counter: {}", post(&format!("{base}/invoke/counter"), "c")?);
        println!("counter: {}", post(&format!("{base}/invoke/counter"), "c")?);
        println!(
            "bank: {}",
            post(&format!("{base}/invoke/bank"), "open 4 100")?
        );
        println!(
            "bank: {}",
            post(&format!("{base}/invoke/bank"), "transfer 1 25")?
        );
        println!("bank: {}", post(&format!("{base}/invoke/bank"), "total")?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("  try: curl -d c {base}/invoke/counter    (Ctrl-C stops every process)");
    wait_for_ctrl_c()?;
    drop(nodes);
    Ok(ExitCode::SUCCESS)
}

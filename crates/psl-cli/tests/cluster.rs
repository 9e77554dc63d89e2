//! Cluster mode with real processes: three `nats-server` processes, a manager, workers and a
//! gateway, each a `psl node` process, on loopback. Invocations go through the gateway's HTTP
//! API. Faults are real: SIGKILL of a worker and of a NATS server under load, SIGSTOP of a
//! lock holder past its lease. Skipped when `nats-server` is missing, unless
//! `PSL_REQUIRE_NATS=1` (set by `.ci/run`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_node::cluster::process::NodeProcess;

/// The tests here each run three NATS servers and five node processes: one at a time, so that
/// two cores are not shared by three clusters (timeouts would measure the machine, not PSL).
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guest(name: &str) -> PathBuf {
    let path = root().join("guests/out").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask guests` first",
        path.display()
    );
    path
}

struct Cluster {
    nats: NatsCluster,
    dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
    gateway_listen: String,
    next_log: u32,
}

impl Cluster {
    /// Three NATS servers and a configuration; no nodes yet.
    fn new(test: &str, lease_ms: u64) -> Option<Self> {
        let nats = NatsCluster::start_or_skip(
            test,
            ClusterOptions {
                servers: 3,
                ..ClusterOptions::default()
            },
        )?;
        let dir = tempfile::tempdir().unwrap();
        let listen = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().to_string()
        };
        let urls: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "app = \"t\"\nnats = [{}]\nsim_root_seed = \"{}\"\nreplicas = 3\nlease_ms = {lease_ms}\n\n[gateway]\nlisten = \"{listen}\"\ntimeout_ms = 10000\n\n[worker]\nthreads = 3\nmetrics_listen = \"127.0.0.1:0\"\n",
                urls.join(", "),
                "ab".repeat(32),
            ),
        )
        .unwrap();
        Some(Cluster {
            nats,
            dir,
            config,
            url: format!("http://{listen}"),
            gateway_listen: listen,
            next_log: 0,
        })
    }

    /// Starts `psl node --role <role>` with extra flags; waits for its `ready` line.
    fn node(&mut self, role: &str, args: &[String]) -> NodeProcess {
        self.next_log += 1;
        let log = self
            .dir
            .path()
            .join(format!("{role}-{}.log", self.next_log));
        NodeProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_psl")),
            role,
            &self.config,
            args,
            &log,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn worker(&mut self, functions: &[(&str, &str)]) -> NodeProcess {
        let args: Vec<String> = functions
            .iter()
            .flat_map(|(name, module)| {
                [
                    "--function".to_string(),
                    format!("{name}={}", guest(module).display()),
                ]
            })
            .collect();
        self.node("worker", &args)
    }

    fn gateway(&mut self) -> NodeProcess {
        let listen = self.gateway_listen.clone();
        self.node("gateway", &["--listen".into(), listen])
    }
}

/// Waits until the worker whose `ready` line is `ready` applied every record in the store (its
/// metrics say `psl_replication_lag_records 0`): then it has seen every verdict, and restarted
/// if one refused its writes.
fn wait_caught_up(worker: &NodeProcess) {
    let url = worker
        .ready
        .split("metrics on ")
        .nth(1)
        .expect("the worker serves metrics")
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if text.lines().any(|l| l == "psl_replication_lag_records 0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never caught up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs an invocation; the status and body.
fn invoke(url: &str, function: &str, input: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    match agent
        .post(format!("{url}/invoke/{function}"))
        .send(input.as_bytes())
    {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

impl Cluster {
    /// Prints every node's log.
    fn print_logs(&self) {
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                eprintln!(
                    "==== {}\n{}",
                    entry.path().display(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // PSL_TEST_LOGS=1 keeps what the nodes said in passing runs too.
        if std::env::var("PSL_TEST_LOGS").is_ok_and(|v| v == "1") {
            self.print_logs();
        }
    }
}

/// [`ok`], printing every node's log first when it fails.
fn ok_or_logs(cluster: &Cluster, function: &str, input: &str) -> String {
    let (status, body) = invoke(&cluster.url, function, input);
    if status != 200 {
        cluster.print_logs();
        panic!("{function}({input}): {status} {body}");
    }
    body
}

fn ok(url: &str, function: &str, input: &str) -> String {
    let (status, body) = invoke(url, function, input);
    assert_eq!(status, 200, "{function}({input}): {body}");
    body
}

/// Invokes until it succeeds or fails with something other than "lock not granted in time"
/// (an invocation that never got its lock wrote nothing, so retrying it is safe).
fn retry_lock_timeouts(url: &str, function: &str, input: &str) -> (u16, String) {
    for _ in 0..30 {
        let (status, body) = invoke(url, function, input);
        if !body.contains("not granted in time") {
            return (status, body);
        }
    }
    panic!("{function}({input}): lock timeouts did not stop");
}

#[test]
fn counter_and_bank_through_the_gateway_survive_killed_workers_and_nats_servers() {
    let _one = one_at_a_time();
    let Some(mut cluster) = Cluster::new(
        "counter_and_bank_through_the_gateway_survive_killed_workers_and_nats_servers",
        10_000,
    ) else {
        return;
    };
    let functions = [("counter", "counter"), ("bank", "bank")];
    let _manager = cluster.node("manager", &[]);
    let mut workers: Vec<NodeProcess> = (0..3).map(|_| cluster.worker(&functions)).collect();
    let _gateway = cluster.gateway();
    let url = cluster.url.clone();
    assert_eq!(ok(&url, "bank", "open 6 500"), "6 accounts");
    assert_eq!(ok(&url, "counter", "c"), "1");
    // Load: 3 clients, each increments and transfers. Counted: acknowledged increments, and
    // increments whose outcome is unknown (the worker died with the request).
    let acked = Arc::new(AtomicU64::new(1));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3u64)
        .map(|client| {
            let (url, acked, unknown, done, slowest_ms) = (
                url.clone(),
                Arc::clone(&acked),
                Arc::clone(&unknown),
                Arc::clone(&done),
                Arc::clone(&slowest_ms),
            );
            std::thread::spawn(move || {
                for i in 0..30 {
                    let started = Instant::now();
                    let (status, body) = retry_lock_timeouts(&url, "counter", "c");
                    if done.load(Ordering::SeqCst) >= 45 {
                        let ms = started.elapsed().as_millis() as u64;
                        slowest_ms.fetch_max(ms, Ordering::SeqCst);
                    }
                    if status == 200 {
                        acked.fetch_add(1, Ordering::SeqCst);
                    } else {
                        eprintln!("counter: {status} {body}");
                        unknown.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, body) = retry_lock_timeouts(
                        &url,
                        "bank",
                        &format!("transfer {} 3", client * 100 + i),
                    );
                    if status != 200 {
                        eprintln!("bank: {status} {body}");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A worker dies mid-load (SIGKILL) and a new one starts in its place.
    wait_for(20);
    workers[0].kill();
    eprintln!("worker 0 killed");
    workers[0] = cluster.worker(&functions);
    // A NATS server dies mid-load (SIGKILL): a minority of the JetStream cluster, and the
    // leader of the capsule's stream (the harder case: appends wait for a new leader).
    wait_for(45);
    let leader = cluster.nats.stream_leader("PSL_").unwrap_or(1);
    cluster.nats.kill(leader).unwrap();
    let killed_at = done.load(Ordering::SeqCst);
    eprintln!("nats-server {leader} (the stream leader) killed after {killed_at} iterations");
    for client in clients {
        client.join().unwrap();
    }
    let served_after = done.load(Ordering::SeqCst) - killed_at;
    assert!(
        served_after > 0,
        "nothing served after the NATS server died"
    );
    eprintln!(
        "{served_after} iterations after the NATS kill; slowest increment then {} ms",
        slowest_ms.load(Ordering::SeqCst)
    );
    let acked = acked.load(Ordering::SeqCst);
    let unknown = unknown.load(Ordering::SeqCst);
    // No acknowledged increment lost, none applied twice (unknown ones may or may not count).
    let last: u64 = ok(&url, "counter", "c").parse().unwrap();
    eprintln!("acked {acked}, unknown {unknown}, final {last}");
    assert!(
        last > acked && last <= acked + unknown + 1,
        "counter {last} after {acked} acknowledged and {unknown} unknown increments"
    );
    // The total is kept; every worker answers with the same state (ask each one enough times
    // to reach all).
    for _ in 0..7 {
        let total = ok(&url, "bank", "total");
        if total != "3000" {
            eprintln!("balances:\n{}", ok(&url, "bank", "balances"));
            ok_or_logs(&cluster, "bank", "no-such-command");
            panic!("bank total {total}, not 3000");
        }
    }
}

#[test]
fn a_lock_holder_stopped_past_its_lease_is_fenced() {
    let _one = one_at_a_time();
    let Some(mut cluster) = Cluster::new("a_lock_holder_stopped_past_its_lease_is_fenced", 1_500)
    else {
        return;
    };
    let _manager = cluster.node("manager", &[]);
    // Only worker A serves `slow` (the counter, with a slow critical section); B serves
    // `counter`. Both increment the same key under the same lock.
    let worker_a = cluster.worker(&[("slow", "counter")]);
    let _worker_b = cluster.worker(&[("counter", "counter")]);
    let _gateway = cluster.gateway();
    let url = cluster.url.clone();
    for expected in 1..=3 {
        assert_eq!(ok(&url, "counter", "c"), expected.to_string());
    }
    // A takes the lock and stays in its critical section; it is stopped there.
    let slow = {
        let url = url.clone();
        std::thread::spawn(move || invoke(&url, "slow", "c slow 20000000"))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(worker_a.signal("-STOP").unwrap());
    // B waits for the lock; it is granted once A's lease (1.5 s) passed.
    let started = Instant::now();
    assert_eq!(ok(&url, "counter", "c"), "4");
    eprintln!("granted to B after {:?}", started.elapsed());
    // A resumes: its late write must be refused, its invocation must fail.
    assert!(worker_a.signal("-CONT").unwrap());
    let (status, body) = slow.join().unwrap();
    eprintln!("the stopped holder's invocation: {status} {body}");
    assert_ne!(
        status, 200,
        "the stopped holder's increment succeeded: {body}"
    );
    assert_eq!(ok_or_logs(&cluster, "counter", "c"), "5");
    // A has applied the expiry verdict (and, if its replica held writes under the expired
    // grant, restarted as a new incarnation) before it serves again.
    wait_caught_up(&worker_a);
    // A (a new incarnation, if it restarted) sees exactly B's increments.
    assert_eq!(ok_or_logs(&cluster, "slow", "c"), "6");
    assert_eq!(ok_or_logs(&cluster, "counter", "c"), "7");
    // `psl deploy` through the cluster gateway reaches the running workers.
    let psl = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_psl"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let hello = guest("hello");
    let deployed = psl(&[
        "deploy",
        "greeter",
        hello.to_str().unwrap(),
        "--server",
        &url,
    ]);
    assert!(deployed.starts_with("deployed greeter"), "{deployed}");
    assert_eq!(
        psl(&["invoke", "greeter", "Ada", "--server", &url]).trim(),
        "Hello, Ada!"
    );
    assert!(psl(&["functions", "--server", &url]).contains("greeter"));
}

#[test]
fn psl_up_starts_a_cluster_of_processes_and_runs_the_examples() {
    let _one = one_at_a_time();
    if psl_nats::testing::server_binary().is_none() {
        // Same rule as the other cluster tests: skip without a server unless CI requires it.
        assert!(
            std::env::var("PSL_REQUIRE_NATS").is_ok_and(|v| v != "1")
                || std::env::var("PSL_REQUIRE_NATS").is_err(),
            "nats-server is required (PSL_REQUIRE_NATS=1)"
        );
        eprintln!(
            "SKIP psl_up_starts_a_cluster_of_processes_and_runs_the_examples: no nats-server"
        );
        return;
    }
    let listen = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().to_string()
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_psl"))
        .args([
            "up",
            "--nodes",
            "2",
            "--check",
            "--listen",
            &listen,
            "--examples",
        ])
        .arg(root().join("guests/out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "psl up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "ready: manager",
        "ready: gateway",
        "counter: 1",
        "counter: 2",
        "bank: 4 accounts",
        "bank: 400",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert_eq!(stdout.matches("ready: worker").count(), 2, "{stdout}");
}

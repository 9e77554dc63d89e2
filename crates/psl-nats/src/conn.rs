//! [`NatsConnection`]: one NATS client with the tokio runtime that drives it, shared by the
//! record store and the bus.
//!
//! Threading: the connection owns a small multi-threaded tokio runtime (`runtime_threads`
//! workers, named `psl-nats`) on which the async-nats client and every operation of this crate
//! run. The synchronous APIs ([`crate::JetStreamStore`], [`crate::NatsBus`]) hand each operation
//! to that runtime and wait for it on a std channel ([`NatsConnection::run`]); they never call
//! `block_on`, so they may be called from any thread, including a thread of another tokio
//! runtime (where they block that worker thread for the duration: prefer `spawn_blocking`).
//! Dropping the last clone of the connection shuts the runtime down in the background.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::NatsError;

/// Largest message this crate sends or accepts, whatever a server advertises (NATS's own
/// recommended maximum of `max_payload`).
pub const PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most servers in one connection's server list.
pub const SERVERS_MAX: usize = 64;

/// Options of a [`NatsConnection`]. `Default` gives loopback defaults suitable for tests.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port`), tried in order on connect and reconnect; servers the
    /// cluster advertises are added by the client.
    pub servers: Vec<String>,
    /// The client name the server shows in its monitoring.
    pub name: String,
    /// Timeout of the initial connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one request: a JetStream API call, a publish acknowledgement, a bus request
    /// without its own timeout.
    pub request_timeout: Duration,
    /// Reconnect attempts after a connection loss before the client gives up (`None`: forever).
    pub max_reconnects: Option<usize>,
    /// Messages buffered per subscription inside the client; when a subscriber falls this far
    /// behind, the client drops messages for it and counts a slow consumer.
    pub subscription_capacity: usize,
    /// Commands (publishes, subscriptions) buffered towards the server; publishers wait when it
    /// is full (back-pressure).
    pub client_capacity: usize,
    /// User name and password, if the server requires them.
    pub user_password: Option<(String, String)>,
    /// A token, if the server requires one.
    pub token: Option<String>,
    /// Require TLS.
    pub require_tls: bool,
    /// PEM file of CA certificates to trust for the server's certificate.
    pub tls_root_certificates: Option<PathBuf>,
    /// PEM certificate and key for TLS client authentication.
    pub tls_client_certificate: Option<(PathBuf, PathBuf)>,
    /// Worker threads of the connection's runtime.
    pub runtime_threads: usize,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            servers: vec!["nats://127.0.0.1:4222".to_string()],
            name: "psl".to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_reconnects: None,
            subscription_capacity: 4096,
            client_capacity: 2048,
            user_password: None,
            token: None,
            require_tls: false,
            tls_root_certificates: None,
            tls_client_certificate: None,
            runtime_threads: 2,
        }
    }
}

impl NatsOptions {
    /// Default options for these servers.
    pub fn with_servers(servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        NatsOptions {
            servers: servers.into_iter().map(Into::into).collect(),
            ..NatsOptions::default()
        }
    }
}

/// Connection events counted since connect (reported by the client's event callback).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections established (the first one and every reconnect).
    pub connects: AtomicU64,
    /// Connection losses.
    pub disconnects: AtomicU64,
    /// Slow-consumer events: messages the client dropped for a subscriber that fell behind.
    pub slow_consumers: AtomicU64,
    /// Errors the server reported.
    pub server_errors: AtomicU64,
}

struct Shared {
    // Dropped last: `Runtime::drop` would block, which is not allowed inside another runtime,
    // so the runtime is shut down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: async_nats::Client,
    options: NatsOptions,
    stats: Arc<ConnectionStats>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A NATS client and the runtime that drives it. Cheap to clone (shared). See the module docs
/// for the threading.
#[derive(Clone)]
pub struct NatsConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnection")
            .field("servers", &self.shared.options.servers)
            .field("state", &self.shared.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsConnection {
    /// Starts the runtime and connects. Fails if no server answers within
    /// `options.connect_timeout`; once connected, the client reconnects by itself.
    pub fn connect(options: NatsOptions) -> Result<Self, NatsError> {
        if options.servers.is_empty() || options.servers.len() > SERVERS_MAX {
            return Err(NatsError::InvalidOption(format!(
                "between 1 and {SERVERS_MAX} servers required, got {}",
                options.servers.len()
            )));
        }
        if options.runtime_threads == 0 || options.runtime_threads > 64 {
            return Err(NatsError::InvalidOption(
                "runtime_threads must be in 1..=64".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.runtime_threads)
            .thread_name("psl-nats")
            .enable_all()
            .build()
            .map_err(NatsError::Runtime)?;
        let handle = runtime.handle().clone();
        let stats = Arc::new(ConnectionStats::default());
        let connect = connect_client(options.clone(), Arc::clone(&stats));
        let client = run_on(&handle, connect)??;
        Ok(NatsConnection {
            shared: Arc::new(Shared {
                runtime: Some(runtime),
                handle,
                client,
                options,
                stats,
            }),
        })
    }

    /// The async-nats client (for async callers on [`Self::handle`]).
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// The runtime the client runs on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.shared.handle
    }

    /// The options the connection was made with.
    pub fn options(&self) -> &NatsOptions {
        &self.shared.options
    }

    /// Connection event counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.shared.stats
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The largest message (payload plus headers) the current server accepts, capped at
    /// [`PAYLOAD_BYTES_MAX`] (the server's figure is not trusted to bound memory).
    pub fn max_payload(&self) -> usize {
        self.shared.client.max_payload().min(PAYLOAD_BYTES_MAX)
    }

    /// Runs `future` on the connection's runtime and waits for its output on this thread.
    pub fn run<F>(&self, future: F) -> Result<F::Output, NatsError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.shared.handle, future)
    }
}

/// Spawns `future` on `handle` and waits for it on a std channel (never `block_on`, so this works
/// from inside another runtime too).
fn run_on<F>(handle: &tokio::runtime::Handle, future: F) -> Result<F::Output, NatsError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let output = future.await;
        let _ = sender.send(output);
    });
    receiver.recv().map_err(|_| NatsError::RuntimeGone)
}

async fn connect_client(
    options: NatsOptions,
    stats: Arc<ConnectionStats>,
) -> Result<async_nats::Client, NatsError> {
    let servers_text = options.servers.join(",");
    let connect_error = |detail: String| NatsError::Connect {
        servers: servers_text.clone(),
        detail,
    };
    let mut addresses = Vec::with_capacity(options.servers.len());
    for server in &options.servers {
        let address: async_nats::ServerAddr = server
            .parse()
            .map_err(|error| NatsError::InvalidOption(format!("server {server:?}: {error}")))?;
        addresses.push(address);
    }
    let mut connect = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.request_timeout))
        .max_reconnects(options.max_reconnects)
        .subscription_capacity(options.subscription_capacity.max(1))
        .client_capacity(options.client_capacity.max(1))
        .reconnect_delay_callback(|attempts| {
            // 0, 50, 100, ... ms, at most 2 s: fast on loopback, gentle on a dead cluster.
            let step = u64::try_from(attempts).unwrap_or(u64::MAX);
            Duration::from_millis(step.saturating_mul(50).min(2000))
        })
        .event_callback(move |event| {
            let stats = Arc::clone(&stats);
            async move { note_event(&stats, &event) }
        });
    if let Some((user, password)) = &options.user_password {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if options.require_tls {
        connect = connect.require_tls(true);
    }
    if let Some(path) = &options.tls_root_certificates {
        connect = connect.add_root_certificates(path.clone());
    }
    if let Some((cert, key)) = &options.tls_client_certificate {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    // The client's own connection timeout covers one attempt per server; bound the whole.
    let total = options
        .connect_timeout
        .saturating_mul(u32::try_from(addresses.len()).unwrap_or(u32::MAX))
        .saturating_add(Duration::from_secs(1));
    match tokio::time::timeout(total, connect.connect(addresses)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(connect_error(error.to_string())),
        Err(_) => Err(connect_error(format!("timed out after {total:?}"))),
    }
}

fn note_event(stats: &ConnectionStats, event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("NATS connected");
        }
        async_nats::Event::Disconnected => {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("NATS disconnected; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sid, "NATS slow consumer: messages dropped for a subscriber");
        }
        async_nats::Event::ServerError(error) => {
            stats.server_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "NATS server error");
        }
        other => tracing::info!(event = %other, "NATS event"),
    }
}

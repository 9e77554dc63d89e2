//! The gateway node: HTTP in, sealed invocations out to the workers' queue group.
//!
//! The gateway enrolls like a worker (attested; it receives the data key, so it can seal
//! invocations for the workers and open their answers) but never writes to the capsule.
//! `POST /invoke/{name}` returns the function's output; errors are JSON `{"error", "kind"}`
//! with 404 unknown function (no worker serves it), 413 a limit, 422 the function failed,
//! 503 busy, 504 deadline or timeout. `GET /health`, `GET /metrics` (Prometheus text), and
//! `POST /attest` (forwarded to the manager). `PUT /functions/{name}` (body: the module) goes
//! to the manager, which validates it, checks it against the policy, keeps it for workers that
//! start later and sends it to the running ones; it answers once one worker serves it.
//! `GET /functions` lists what was deployed that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use psl_nats::{Bus, BusError};

use super::link::{BusLink, Sent};
use super::wire::{self, Invocation, InvokeStatus, decode_answer};
use crate::gateway::{BODY_BYTES_MAX, CHALLENGE_BYTES_MAX};
use crate::platform::LATENCY_BUCKETS_S;
use crate::scl::ClusterError;
use crate::trust::SimTrust;

/// Why an invocation got no answer from a worker.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No worker serves this function.
    #[error("no worker serves a function named {0:?}")]
    NoWorkers(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The input does not fit in one bus message.
    #[error("input too large: {0}")]
    TooLarge(String),
    /// The answer did not authenticate or decode, or the bus failed.
    #[error("{0}")]
    Unavailable(String),
}

const STATUSES: [(&str, InvokeStatus); 9] = [
    ("ok", InvokeStatus::Ok),
    ("unknown_function", InvokeStatus::UnknownFunction),
    ("function_failed", InvokeStatus::FunctionFailed),
    ("deadline_exceeded", InvokeStatus::DeadlineExceeded),
    ("limit_exceeded", InvokeStatus::LimitExceeded),
    ("busy", InvokeStatus::Busy),
    ("state_unavailable", InvokeStatus::StateUnavailable),
    ("internal", InvokeStatus::Internal),
    ("refused", InvokeStatus::Refused),
];

#[derive(Default)]
struct Metrics {
    outcomes: [AtomicU64; 9],
    unanswered: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Invocations a gateway has in flight at most; more are answered 503 `busy` at once.
pub const IN_FLIGHT_MAX: usize = 1024;

/// An invocation ready to send, or answered without a worker.
enum Prepared {
    Send {
        subject: String,
        sent: Sent,
        sealed: Bytes,
    },
    Answer((InvokeStatus, Vec<u8>)),
}

/// A running gateway node.
pub struct GatewayNode {
    link: BusLink,
    app: String,
    timeout: Duration,
    metrics: Metrics,
    in_flight: Arc<tokio::sync::Semaphore>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl GatewayNode {
    /// Enrolls with the manager of `app`; invocations wait at most `timeout` for an answer.
    pub fn start(
        app: &str,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
        timeout: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let link = BusLink::new(bus, app, trust);
        link.enroll_parts()?;
        Ok(Arc::new(GatewayNode {
            link,
            app: app.to_string(),
            timeout,
            metrics: Metrics::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX)),
        }))
    }

    /// Invokes `function` on some worker: its status and output (or error message).
    pub fn invoke(
        &self,
        function: &str,
        input: Vec<u8>,
    ) -> Result<(InvokeStatus, Vec<u8>), GatewayError> {
        let started = Instant::now();
        let result = match self.prepare(function, input) {
            Ok(Prepared::Send {
                subject,
                sent,
                sealed,
            }) => {
                let reply = self.link.bus().request(&subject, sealed, self.timeout);
                self.finish(function, &sent, reply)
            }
            Ok(Prepared::Answer(answer)) => Ok(answer),
            Err(e) => Err(e),
        };
        self.record(started, &result);
        result
    }

    /// [`Self::invoke`] without blocking a thread while the worker runs it.
    pub async fn invoke_async(
        &self,
        function: &str,
        input: Vec<u8>,
    ) -> Result<(InvokeStatus, Vec<u8>), GatewayError> {
        let started = Instant::now();
        let result = match self.prepare(function, input) {
            Ok(Prepared::Send {
                subject,
                sent,
                sealed,
            }) => {
                let reply = self
                    .link
                    .bus()
                    .request_async(&subject, sealed, self.timeout)
                    .await;
                self.finish(function, &sent, reply)
            }
            Ok(Prepared::Answer(answer)) => Ok(answer),
            Err(e) => Err(e),
        };
        self.record(started, &result);
        result
    }

    fn record(&self, started: Instant, result: &Result<(InvokeStatus, Vec<u8>), GatewayError>) {
        let elapsed = started.elapsed();
        let m = &self.metrics;
        match result {
            Ok((status, _)) => {
                if let Some(i) = STATUSES.iter().position(|(_, s)| s == status) {
                    m.outcomes[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                m.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|b| seconds <= *b) {
            m.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        m.count.fetch_add(1, Ordering::Relaxed);
        m.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Seals the invocation (or answers at once: an invalid name).
    fn prepare(&self, function: &str, input: Vec<u8>) -> Result<Prepared, GatewayError> {
        let Some(subject) = wire::invoke_subject(&self.app, function) else {
            return Ok(Prepared::Answer((
                InvokeStatus::UnknownFunction,
                b"invalid function name: use 1-64 of a-z, 0-9, '-', '_'".to_vec(),
            )));
        };
        let call = Invocation {
            function: function.to_string(),
            sent_ms: now_ms(),
            input,
        };
        let (sent, sealed) = self
            .link
            .seal_request(&call.encode())
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        Ok(Prepared::Send {
            subject,
            sent,
            sealed: Bytes::from(sealed),
        })
    }

    /// Opens and decodes a worker's answer to the request `sent`.
    fn finish(
        &self,
        function: &str,
        sent: &Sent,
        reply: Result<psl_nats::BusMessage, BusError>,
    ) -> Result<(InvokeStatus, Vec<u8>), GatewayError> {
        let reply = reply.map_err(|e| match e {
            BusError::NoResponders(_) => GatewayError::NoWorkers(function.to_string()),
            BusError::Timeout { timeout, .. } => GatewayError::Timeout(timeout),
            BusError::TooLarge { .. } => GatewayError::TooLarge(e.to_string()),
            other => GatewayError::Unavailable(other.to_string()),
        })?;
        let plain = self
            .link
            .open_reply(sent, &reply.payload)
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        let (status, body) =
            decode_answer(&plain).map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        Ok((status, body.to_vec()))
    }

    /// Deploys a module under `name` through the manager (see the module docs).
    pub fn deploy(
        &self,
        name: &str,
        module: Vec<u8>,
    ) -> Result<super::wire::ManagerReply, psl_runtime::StateError> {
        self.link.deploy(name, module)
    }

    /// Forwards a prepare challenge to the manager; its offer.
    pub fn attest(&self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        let reply = self
            .link
            .bus()
            .request(
                &wire::attest_subject(&self.app),
                Bytes::copy_from_slice(challenge),
                Duration::from_secs(5),
            )
            .map_err(|e| e.to_string())?;
        match reply.payload.split_first() {
            Some((&wire::enroll::OK, offer)) => Ok(offer.to_vec()),
            Some((_, reason)) => Err(String::from_utf8_lossy(reason).into_owned()),
            None => Err("empty answer".into()),
        }
    }

    /// Prometheus text: invocations by outcome, unanswered ones, latency histogram.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let m = &self.metrics;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP psl_gateway_invocations_total Invocations answered by a worker, by outcome."
        );
        let _ = writeln!(out, "# TYPE psl_gateway_invocations_total counter");
        for (i, (name, _)) in STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "psl_gateway_invocations_total{{outcome=\"{name}\"}} {}",
                m.outcomes[i].load(Ordering::Relaxed)
            );
        }
        crate::metrics::metric(
            &mut out,
            "psl_gateway_unanswered_total",
            "counter",
            "Invocations no worker answered (none serving, timeout, bus failure).",
            m.unanswered.load(Ordering::Relaxed) as f64,
        );
        let _ = writeln!(
            out,
            "# HELP psl_gateway_latency_seconds Invocation latency seen by the gateway."
        );
        let _ = writeln!(out, "# TYPE psl_gateway_latency_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += m.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "psl_gateway_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = m.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "psl_gateway_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "psl_gateway_latency_seconds_sum {}",
            m.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "psl_gateway_latency_seconds_count {count}");
        out
    }

    /// The HTTP router.
    pub fn router(self: &Arc<Self>) -> Router {
        let metrics = Arc::clone(self);
        let attest = Arc::clone(self);
        Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route(
                "/metrics",
                get(move || {
                    let node = Arc::clone(&metrics);
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4")],
                            node.render_metrics(),
                        )
                    }
                }),
            )
            .route("/functions", get(list))
            .route("/functions/{name}", put(deploy))
            .route("/invoke/{name}", post(invoke))
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(Arc::clone(self))
            .merge(
                Router::new()
                    .route(
                        "/attest",
                        post(move |body: Bytes| {
                            let node = Arc::clone(&attest);
                            async move {
                                match tokio::task::spawn_blocking(move || node.attest(&body)).await
                                {
                                    Ok(Ok(offer)) => (
                                        StatusCode::OK,
                                        [("content-type", "application/json")],
                                        offer,
                                    )
                                        .into_response(),
                                    Ok(Err(e)) => {
                                        error(StatusCode::BAD_GATEWAY, "attest_failed", e)
                                    }
                                    Err(e) => error(
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                        "internal",
                                        e.to_string(),
                                    ),
                                }
                            }
                        }),
                    )
                    .layer(DefaultBodyLimit::max(CHALLENGE_BYTES_MAX)),
            )
    }
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": message, "kind": kind });
    (status, axum::Json(body)).into_response()
}

async fn deploy(
    State(node): State<Arc<GatewayNode>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let max = node.link.bus().max_payload().saturating_sub(1024);
    if body.len() > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "module_too_large",
            format!("modules deployed over NATS are at most {max} bytes"),
        );
    }
    let result = tokio::task::spawn_blocking(move || {
        node.link.deploy(&name, body.to_vec()).map(|r| (name, r))
    })
    .await;
    match result {
        Ok(Ok((name, super::wire::ManagerReply::Deployed { id, served }))) => {
            axum::Json(serde_json::json!({ "name": name, "id": id, "served": served }))
                .into_response()
        }
        Ok(Ok((_, super::wire::ManagerReply::Error { kind, message }))) => {
            let (status, kind) = match kind {
                super::wire::ErrorKind::BadModule => (StatusCode::BAD_REQUEST, "bad_module"),
                super::wire::ErrorKind::NotAllowed => {
                    (StatusCode::FORBIDDEN, "function_not_allowed")
                }
                super::wire::ErrorKind::Limit => (StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            error(status, kind, message)
        }
        Ok(Ok((_, other))) => error(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            format!("unexpected answer {other:?}"),
        ),
        Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, "unavailable", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn list(State(node): State<Arc<GatewayNode>>) -> Response {
    match tokio::task::spawn_blocking(move || node.link.list_functions()).await {
        Ok(Ok(list)) => {
            let list: Vec<_> = list
                .into_iter()
                .map(|(name, id)| serde_json::json!({ "name": name, "kind": format!("wasm:{id}") }))
                .collect();
            axum::Json(list).into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, "unavailable", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn invoke(
    State(node): State<Arc<GatewayNode>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(permit) = Arc::clone(&node.in_flight).try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{IN_FLIGHT_MAX} invocations in flight"),
        );
    };
    let result = node.invoke_async(&name, body.to_vec()).await;
    drop(permit);
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => {
            let (status, kind) = match &e {
                GatewayError::NoWorkers(_) => (StatusCode::NOT_FOUND, "unknown_function"),
                GatewayError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                GatewayError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded"),
                GatewayError::Unavailable(_) => (StatusCode::BAD_GATEWAY, "unavailable"),
            };
            return error(status, kind, e.to_string());
        }
    };
    let message = || String::from_utf8_lossy(&body).into_owned();
    match status {
        InvokeStatus::Ok => (StatusCode::OK, body).into_response(),
        InvokeStatus::UnknownFunction => {
            error(StatusCode::NOT_FOUND, "unknown_function", message())
        }
        InvokeStatus::FunctionFailed => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "function_failed",
            message(),
        ),
        InvokeStatus::DeadlineExceeded => {
            error(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded", message())
        }
        InvokeStatus::LimitExceeded => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", message())
        }
        InvokeStatus::Busy => error(StatusCode::SERVICE_UNAVAILABLE, "busy", message()),
        InvokeStatus::StateUnavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            message(),
        ),
        InvokeStatus::Internal => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message()),
        InvokeStatus::Refused => error(StatusCode::BAD_REQUEST, "refused", message()),
    }
}

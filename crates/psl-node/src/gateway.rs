//! The HTTP API of a node: deploy, list and invoke functions.
//!
//! `PUT /functions/{name}` (body: module bytes), `GET /functions`, `POST /invoke/{name}` (body:
//! input; response: output), `GET /health`. Errors carry a JSON body `{"error", "kind"}` and a
//! status that says what went wrong: 404 unknown function, 400 bad module or name, 413 a limit,
//! 422 the function failed, 503 busy, 504 deadline, 403 a function the policy does not allow.
//! `GET /metrics`: Prometheus text (invocations by outcome, latency histogram, and the
//! cluster's records sealed/verified/rejected, replication lag and lock waits when given).
//! `POST /attest` (when the node has a manager) answers a prepare challenge with attestation
//! evidence. Invocations run on blocking threads.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use psl_runtime::{DeployError, InvokeError};

use crate::platform::{Platform, PlatformError};

/// Largest request body (a module or an input).
pub const BODY_BYTES_MAX: usize = 32 << 20;

/// Answers a client's prepare challenge with the manager's attestation evidence (`psl attest`).
pub type Attestor = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Largest attestation challenge.
pub const CHALLENGE_BYTES_MAX: usize = 4096;

/// More series for `GET /metrics` (Prometheus text format), e.g. the SCL cluster's.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// The router over a platform.
pub fn router(platform: Arc<Platform>) -> Router {
    router_with(platform, None, None)
}

/// The router over a platform, with `POST /attest` when an attestor is given (body: a prepare
/// challenge; response: the manager's offer, JSON).
pub fn router_with(
    platform: Arc<Platform>,
    attestor: Option<Attestor>,
    metrics: Option<MetricsSource>,
) -> Router {
    let source = Arc::clone(&platform);
    let metrics_route = get(move || {
        let (source, metrics) = (Arc::clone(&source), metrics.clone());
        async move {
            let mut text = source.metrics().render();
            if let Some(metrics) = metrics {
                text.push_str(&metrics());
            }
            ([("content-type", "text/plain; version=0.0.4")], text)
        }
    });
    let mut router = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", metrics_route)
        .route("/functions", get(list))
        .route("/functions/{name}", put(deploy))
        .route("/invoke/{name}", post(invoke))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(platform);
    if let Some(attestor) = attestor {
        router = router.merge(
            Router::new()
                .route("/attest", post(attest))
                .layer(DefaultBodyLimit::max(CHALLENGE_BYTES_MAX))
                .with_state(attestor),
        );
    }
    router
}

async fn attest(State(attestor): State<Attestor>, body: Bytes) -> Response {
    let result = tokio::task::spawn_blocking(move || attestor(&body)).await;
    match result {
        Ok(Ok(offer)) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            offer,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_challenge", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": message, "kind": kind });
    (status, axum::Json(body)).into_response()
}

fn platform_error(e: PlatformError) -> Response {
    match &e {
        PlatformError::UnknownFunction(_) => {
            error(StatusCode::NOT_FOUND, "unknown_function", e.to_string())
        }
        PlatformError::BadName(_) => error(StatusCode::BAD_REQUEST, "bad_name", e.to_string()),
        PlatformError::NotAllowed(_) => {
            error(StatusCode::FORBIDDEN, "function_not_allowed", e.to_string())
        }
        PlatformError::Deploy(DeployError::TooLarge { .. }) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "module_too_large",
            e.to_string(),
        ),
        PlatformError::Deploy(DeployError::CompilerBusy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "compiler_busy",
            e.to_string(),
        ),
        PlatformError::Deploy(_) => error(StatusCode::BAD_REQUEST, "bad_module", e.to_string()),
        PlatformError::Runtime(_) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

fn invoke_error(e: &InvokeError) -> Response {
    let (status, kind) = match e {
        InvokeError::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        InvokeError::Limit { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded"),
        InvokeError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        InvokeError::State(_) => (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable"),
        InvokeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "function_failed"),
    };
    error(status, kind, e.to_string())
}

async fn list(State(platform): State<Arc<Platform>>) -> Response {
    axum::Json(platform.list()).into_response()
}

async fn deploy(
    State(platform): State<Arc<Platform>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let result =
        tokio::task::spawn_blocking(move || platform.deploy(&name, &body).map(|id| (name, id)))
            .await;
    match result {
        Ok(Ok((name, id))) => {
            axum::Json(serde_json::json!({ "name": name, "id": id.to_hex() })).into_response()
        }
        Ok(Err(e)) => platform_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn invoke(
    State(platform): State<Arc<Platform>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let result = tokio::task::spawn_blocking(move || platform.invoke(&name, body.to_vec())).await;
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return platform_error(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    match outcome.result {
        Ok(output) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-psl-elapsed-us",
                HeaderValue::from(outcome.elapsed.as_micros() as u64),
            );
            headers.insert("x-psl-host-calls", HeaderValue::from(outcome.host_calls));
            (StatusCode::OK, headers, output).into_response()
        }
        Err(e) => invoke_error(&e),
    }
}

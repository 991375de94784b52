//! cd-service's HTTP surface: `POST /promote` (deploy an already built image to an environment,
//! checked against the manifest repository's `conveyor.yaml`), `POST /replay` (redeploy or roll
//! back to an earlier event's image), `GET /history` (what was deployed, newest first),
//! `GET /environments` (every app and environment: policy, pin, what runs there),
//! `GET /outcomes` (what happened to the latest events, skips included), and the operator's
//! `GET /healthz`, `GET /readyz` and `GET /metrics`. A promotion or replay is traced from its
//! request (continuing an incoming `traceparent`) and linked to the trace of the build it
//! deploys; its answer carries the trace id. `POST` calls need the API token
//! (`Authorization: Bearer`), checked before the body is read. Errors are JSON
//! `{ "error": <stable code>, "message": <text> }`, also for unknown routes and methods.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::jetstream;
use axum::{
    extract::{rejection::JsonRejection, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use conveyor_api::{
    cd::{EnvironmentStatus, HistoryQuery, OutcomesQuery, PromoteAccepted, PromoteRequest, Readiness, ReplayRequest},
    ApiError,
};
use tokio::sync::Mutex;
use tracing::{field::Empty, Instrument};

use crate::{gitops::ManifestRepo, manifest_config, metrics::Metrics, outcomes::Recent, promote, replay, trust::Trust};
use conveyor_proto::Secret;

pub struct HttpState {
    pub js: jetstream::Context,
    /// Which events are trusted, and the key promotions and replays are signed with.
    pub trust: Arc<Trust>,
    /// The token `POST` calls need; `None` only with `--allow-unauthenticated-api`.
    pub api_token: Option<Secret>,
    pub repo: Arc<Mutex<ManifestRepo>>,
    pub recent: Arc<Recent>,
    pub metrics: Arc<Metrics>,
    /// The durable consumer, for its lag.
    pub consumer: jetstream::consumer::PullConsumer,
    /// False once the consume loop has stopped.
    pub consuming: Arc<AtomicBool>,
    /// When `GET /environments` last fetched the manifest repository.
    pub last_read_sync: std::sync::Mutex<Option<std::time::Instant>>,
}

/// `GET /environments` fetches at most this often, however many consoles poll it: each fetch
/// holds the repository the consumer deploys through.
const READ_SYNC_EVERY: Duration = Duration::from_secs(2);

pub fn router(state: Arc<HttpState>) -> Router {
    let actions = Router::new()
        .route("/promote", post(promote_handler))
        .route("/replay", post(replay_handler))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(actions)
        .route("/outcomes", get(outcomes_handler))
        .route("/history", get(history_handler))
        .route("/environments", get(environments_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(404, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(405, "method_not_allowed", "this route does not take that method") })
        .with_state(state)
}

/// Refuses a call without the API token (`401 unauthorized`), before its body is read.
async fn require_token(State(state): State<Arc<HttpState>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(token) = &state.api_token else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(conveyor_proto::bearer_token);
    match given {
        Some(g) if token.matches(g) => next.run(req).await,
        Some(_) => ApiError::new(401, "unauthorized", "the API token does not match").into_response(),
        None => {
            ApiError::new(401, "unauthorized", "this call needs `Authorization: Bearer <API token>` (CONVEYOR_API_TOKEN)").into_response()
        }
    }
}

async fn outcomes_handler(State(state): State<Arc<HttpState>>, Query(q): Query<OutcomesQuery>) -> Response {
    Json(state.recent.list(q.limit.unwrap_or(100).min(1000), q.outcome.as_deref())).into_response()
}

/// Runs a request that publishes a deploy in a server span (continuing an incoming
/// `traceparent`) and records its answer there.
async fn traced(
    name: &'static str,
    route: &'static str,
    headers: &HeaderMap,
    handle: impl std::future::Future<Output = Response>,
) -> Response {
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    conveyor_telemetry::context::continue_from_http(&span, headers);
    if let Some(t) = conveyor_telemetry::context::trace_id(&span) {
        span.record("trace_id", t.as_str());
    }
    let response = handle.instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

fn current_trace_id() -> Option<String> {
    conveyor_telemetry::context::trace_id(&tracing::Span::current())
}

async fn promote_handler(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Json<PromoteRequest>, JsonRejection>,
) -> Response {
    traced("promote", "/promote", &headers, async { promote_request(state, body).await.into_response() }).await
}

/// A JSON body, or the `invalid_request` error saying what is wrong with it.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|r| ApiError::new(r.status().as_u16(), "invalid_request", r.body_text()))
}

async fn promote_request(state: Arc<HttpState>, req: Result<Json<PromoteRequest>, JsonRejection>) -> Result<Response, ApiError> {
    let req = body(req)?;
    // The environment must exist for the app in the manifest repository as last synced.
    let known = {
        let repo = state.repo.lock().await;
        match manifest_config::load(repo.work_tree()) {
            Ok(Some(c)) => c.apps.get(&req.app).map(|a| a.environments.contains_key(&req.environment)).ok_or("unknown_app"),
            Ok(None) => Ok(req.environment == manifest_config::DEFAULT_ENV),
            Err(e) => return Err(ApiError::new(409, "invalid_manifest_config", e)),
        }
    };
    match known {
        Err(code) => return Err(ApiError::new(404, code, format!("app {:?} is not in {}", req.app, manifest_config::FILE))),
        Ok(false) => {
            return Err(ApiError::new(404, "unknown_environment", format!("app {:?} has no environment {:?}", req.app, req.environment)))
        }
        Ok(true) => {}
    }
    let by = req.requested_by.as_deref().unwrap_or("api");
    let (sequence, event) = promote::promote(&state.js, &state.trust, &req.app, &req.environment, &req.tag, by).await?;
    tracing::info!(app = %req.app, env = %req.environment, tag = %req.tag, %by, sequence, "promotion queued");
    let accepted = PromoteAccepted { event_id: event.event_id, sequence, image: event.image.reference(), trace_id: current_trace_id() };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// `GET /history?app=web&env=staging&limit=20`: deployments newest first, with the stream
/// sequence of each event still in the stream.
async fn history_handler(State(state): State<Arc<HttpState>>, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    conveyor_proto::validate::app_name(&q.app).map_err(|e| ApiError::new(422, "invalid_request", e.to_string()))?;
    let mut deployments = {
        let repo = state.repo.lock().await;
        tokio::task::block_in_place(|| repo.sync()).map_err(|e| ApiError::new(503, "repo_unavailable", e.to_string()))?;
        repo.deployments(&q.app, q.env.as_deref(), q.limit.unwrap_or(50).min(1000))
    };
    let events =
        replay::app_events(&state.js, &state.trust, &q.app).await.map_err(|e| ApiError::new(503, "stream_unavailable", e.to_string()))?;
    if deployments.is_empty() && events.is_empty() {
        return Err(ApiError::new(404, "unknown_app", format!("nothing was ever deployed or built for app {:?}", q.app)));
    }
    for d in &mut deployments {
        d.sequence = events.iter().find(|(_, e)| e.event_id == d.event_id).map(|(s, _)| *s);
    }
    Ok(Json(deployments).into_response())
}

/// `GET /environments`: every environment of every app in `conveyor.yaml` (without one, every
/// app Conveyor deployed, in `default`), with its policy, its pin and the newest deployment, as
/// of a fetch at most [`READ_SYNC_EVERY`] old.
async fn environments_handler(State(state): State<Arc<HttpState>>) -> Result<Response, ApiError> {
    let repo = state.repo.lock().await;
    let due = {
        let mut last = state.last_read_sync.lock().expect("never held across a panic");
        let due = last.is_none_or(|t| t.elapsed() >= READ_SYNC_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    };
    if due {
        tokio::task::block_in_place(|| repo.sync()).map_err(|e| ApiError::new(503, "repo_unavailable", e.to_string()))?;
    }
    let config = manifest_config::load(repo.work_tree()).map_err(|e| ApiError::new(409, "invalid_manifest_config", e))?;
    let current = |app: &str, env: &str| repo.deployments(app, Some(env), 1).into_iter().next();
    let list: Vec<EnvironmentStatus> = match config {
        Some(config) => config
            .apps
            .iter()
            .flat_map(|(app, a)| {
                a.environments.iter().map(move |(env, e)| EnvironmentStatus {
                    app: app.clone(),
                    environment: env.clone(),
                    policy: match e.policy {
                        manifest_config::Policy::Auto => "auto",
                        manifest_config::Policy::Manual => "manual",
                    }
                    .into(),
                    pinned: e.pinned.clone(),
                    current: None,
                })
            })
            .collect(),
        None => repo
            .deployed_apps()
            .into_iter()
            .map(|app| EnvironmentStatus {
                app,
                environment: manifest_config::DEFAULT_ENV.into(),
                policy: "auto".into(),
                pinned: None,
                current: None,
            })
            .collect(),
    };
    let list: Vec<EnvironmentStatus> =
        list.into_iter().map(|s| EnvironmentStatus { current: current(&s.app, &s.environment), ..s }).collect();
    Ok(Json(list).into_response())
}

async fn replay_handler(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    traced("replay", "/replay", &headers, async { replay_request(state, body).await.into_response() }).await
}

async fn replay_request(state: Arc<HttpState>, b: Result<Json<ReplayRequest>, JsonRejection>) -> Result<Response, ApiError> {
    let b = body(b)?;
    let invalid = |m: String| ApiError::new(422, "invalid_request", m);
    let target = match (b.to.as_deref(), b.sequence, b.tag) {
        (Some("previous"), None, None) => replay::Target::Previous,
        (None, Some(seq), None) => replay::Target::Sequence(seq),
        (None, None, Some(tag)) => replay::Target::Tag(tag),
        (Some(other), None, None) => return Err(invalid(format!("`to` must be \"previous\", not {other:?}"))),
        _ => return Err(invalid("give exactly one of `to: previous`, `sequence` or `tag`".into())),
    };
    let req = replay::Request {
        app: b.app,
        target,
        environment: b.environment,
        into: b.into,
        requested_by: b.requested_by.unwrap_or_else(|| "api".into()),
        dry_run: b.dry_run,
    };
    let mut plan = replay::replay(&state.js, &state.trust, &state.repo, req).await?;
    plan.trace_id = current_trace_id();
    if plan.diff.is_none() {
        tracing::info!(app = %plan.app, env = %plan.environment, image = %plan.image, kind = plan.kind.as_str(), of_sequence = plan.of_sequence, "replay queued");
    }
    let status = if plan.diff.is_some() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(plan)).into_response())
}

/// Ready when NATS is connected and the consume loop runs.
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let mut failing = Vec::new();
    if state.js.client().connection_state() != async_nats::connection::State::Connected {
        failing.push("nats: not connected");
    }
    if !state.consuming.load(Ordering::Relaxed) {
        failing.push("consumer: stopped");
    }
    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready: failing.is_empty(), failing: failing.into_iter().map(String::from).collect() })).into_response()
}

/// Prometheus metrics; the consumer's lag is read from JetStream at each scrape.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let mut consumer = state.consumer.clone();
    match tokio::time::timeout(Duration::from_secs(2), consumer.info()).await {
        Ok(Ok(info)) => {
            state.metrics.consumer_pending.set(info.num_pending as i64);
            state.metrics.consumer_ack_pending.set(info.num_ack_pending as i64);
            state.metrics.consumer_redelivered.set(info.num_redelivered as i64);
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "consumer info not read for /metrics"),
        Err(_) => tracing::debug!("consumer info not read for /metrics: timed out"),
    }
    ([(header::CONTENT_TYPE, conveyor_telemetry::metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}

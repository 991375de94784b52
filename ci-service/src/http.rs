//! The HTTP surface: webhook intake (`POST /hooks/push`, every format; it verifies, queues and
//! answers 202 at once, it never builds) and the build API (`GET/POST /builds`,
//! `GET /builds/{id}`, `GET /builds/{id}/logs` as text or Server-Sent Events,
//! `POST /builds/{id}/cancel`, `POST /builds/{id}/retry`), and the operator's endpoints
//! (`GET /healthz`, `GET /readyz`, `GET /metrics`). Each request that can start work opens the
//! `receive` span that roots (or, given a `traceparent`, continues) the push's trace, and its
//! answer carries the trace id.
//! Errors are JSON `{ "error": <stable code>, "message": <text> }`; no input makes it panic.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use conveyor_api::{
    cd::Readiness,
    ci::{BuildQueued, Cancelling, NotBuilt},
    ApiError,
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use time::OffsetDateTime;

use conveyor_telemetry::context::RequestSpan;

use crate::{
    logs::LogItem,
    queue::{Control, Job, Queue},
    records::{BuildRecord, BuildState},
    webhook::{self, generic::GenericPush, Intake, IntakeError, PushRequest, Source},
    AppState,
};

/// Webhook bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hooks/push", post(hook))
        .route("/builds", get(list_builds).post(manual_build))
        .route("/builds/{id}", get(get_build))
        .route("/builds/{id}/logs", get(build_logs))
        .route("/builds/{id}/cancel", post(cancel_build))
        .route("/builds/{id}/retry", post(retry_build))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error answer (`conveyor_api::ApiError`) from a status.
fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status.as_u16(), code, message)
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        let (status, code) = match &e {
            IntakeError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IntakeError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            IntakeError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            IntakeError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            IntakeError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload"),
        };
        api_error(status, code, e.to_string())
    }
}

/// A body that could not be read: too large, or cut off.
fn body_error(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        api_error(r.status(), "body_too_large", format!("the body is larger than {MAX_BODY_BYTES} bytes"))
    } else {
        api_error(r.status(), "bad_request", r.body_text())
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", format!("{e}; retry later"))
}

/// Records the answer on the request's span (and ends it) and in the metrics.
fn answered(state: &AppState, span: RequestSpan, result: Result<(Response, &'static str), ApiError>) -> Response {
    let (response, outcome, error) = match result {
        Ok((r, outcome)) => (r, outcome, None),
        Err(e) => {
            let code = e.code;
            (e.into_response(), code, Some(code))
        }
    };
    span.end(response.status().as_u16(), error);
    state.metrics.webhook(outcome);
    response
}

/// `POST /hooks/push`: in the `receive` span that roots the push's trace (or continues the
/// caller's `traceparent`).
async fn hook(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut span = RequestSpan::start("receive", "/hooks/push", &headers);
    let result = async {
        let body = body.map_err(body_error)?;
        let push = match webhook::intake(&headers, &body, &state.secrets)? {
            Intake::Pong => return Ok(((StatusCode::OK, Json(NotBuilt::Pong { pong: true })).into_response(), "pong")),
            Intake::Ignore(ignored) => return Ok(((StatusCode::OK, Json(NotBuilt::Ignored { ignored })).into_response(), "ignored")),
            Intake::Build(push) => push,
        };
        let msg_id = Queue::push_msg_id(&push);
        enqueue(&state, push, &msg_id, &mut span).await
    }
    .await;
    answered(&state, span, result)
}

/// Queues a build and answers 202 with its number (200 with the first one's for a duplicate).
/// The job carries the request span's trace context.
async fn enqueue(state: &AppState, push: PushRequest, msg_id: &str, span: &mut RequestSpan) -> Result<(Response, &'static str), ApiError> {
    span.set("conveyor.app", push.app.clone());
    span.set("vcs.ref.head.revision", push.commit.clone());
    let queued_at = OffsetDateTime::now_utc();
    let traceparent = span.traceparent();
    let queued = state.queue.enqueue_build(&push, queued_at, msg_id, traceparent.as_deref()).await.map_err(unavailable)?;
    span.set("conveyor.build.id", queued.id as i64);
    let trace_id = span.trace_id();
    let location = format!("/builds/{}", queued.id);
    if queued.duplicate {
        tracing::info!(build.id = queued.id, app = %push.app, commit = %push.commit, trace_id = trace_id.unwrap_or("-"), "push already queued (duplicate)");
        let body = BuildQueued { build_id: queued.id, duplicate: true, status_url: location.clone(), trace_id: trace_id.map(String::from) };
        return Ok(((StatusCode::OK, [(header::LOCATION, location)], Json(body)).into_response(), "duplicate"));
    }
    // One round trip: the job is the queued build (its record is written by the worker that
    // takes it; until then `GET` reads the job), and running builds of the same branch notice
    // the newer job themselves.
    tracing::info!(build.id = queued.id, app = %push.app, commit = %push.commit, git_ref = %push.git_ref, trace_id = trace_id.unwrap_or("-"), "push queued");
    let report = crate::status::Report { build_id: queued.id, phase: crate::status::Phase::Queued, push, detail: None };
    state.statuses.report(state, report);
    let body = BuildQueued { build_id: queued.id, duplicate: false, status_url: location.clone(), trace_id: trace_id.map(String::from) };
    Ok(((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body)).into_response(), "queued"))
}

/// `POST /builds` `{repo_url, ref, commit, app?}`: a manual build, always a new one.
/// Checks `Authorization: Bearer <token>` when the service has an API token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.api_token else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(conveyor_proto::bearer_token);
    match given {
        Some(g) if token.matches(g) => Ok(()),
        Some(_) => Err(api_error(StatusCode::UNAUTHORIZED, "unauthorized", "the API token does not match")),
        None => Err(api_error(StatusCode::UNAUTHORIZED, "unauthorized", "this call needs `Authorization: Bearer <API token>`")),
    }
}

async fn manual_build(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut span = RequestSpan::start("receive", "/builds", &headers);
    let result = async {
        authorize(&state, &headers)?;
        let body = body.map_err(body_error)?;
        let push: GenericPush = webhook::parse_json(&body).map_err(ApiError::from)?;
        let push = match push.into_intake(Source::Manual, &state.secrets)? {
            Intake::Build(push) => push,
            Intake::Ignore(reason) => return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "nothing_to_build", reason)),
            Intake::Pong => unreachable!("a generic push is never a ping"),
        };
        enqueue(&state, push, &format!("manual-{}", uuid::Uuid::now_v7()), &mut span).await
    }
    .await;
    answered(&state, span, result)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_builds(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(50).min(1000);
    let mut records = state.records.list(limit).await.map_err(unavailable)?;
    // Queued builds have no record yet: they are the newest jobs still in the queue.
    let known: std::collections::HashSet<u64> = records.iter().map(|r| r.id).collect();
    for (id, job, trace_id) in state.queue.newest_jobs(limit).await.map_err(unavailable)? {
        if let Job::Build { push, queued_at } = job {
            if !known.contains(&id) && state.records.get(id).await.map_err(unavailable)?.is_none() {
                records.push(BuildRecord::queued(id, &push, queued_at, trace_id));
            }
        }
    }
    records.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
    records.truncate(limit);
    Ok(Json(records).into_response())
}

fn not_found(id: &str) -> ApiError {
    api_error(StatusCode::NOT_FOUND, "build_not_found", format!("no build with id {id:?}"))
}

async fn record(state: &AppState, id: &str) -> Result<BuildRecord, ApiError> {
    // Build numbers are JetStream sequences: they start at 1.
    let n: u64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| not_found(id))?;
    if let Some(rec) = state.records.get(n).await.map_err(unavailable)? {
        return Ok(rec);
    }
    // Just queued, its record not written yet: the job in the queue says what it is.
    match state.queue.job(n).await.map_err(unavailable)? {
        Some((Job::Build { push, queued_at }, trace_id)) => Ok(BuildRecord::queued(n, &push, queued_at, trace_id)),
        _ => Err(not_found(id)),
    }
}

async fn get_build(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(record(&state, &id).await?).into_response())
}

/// The log as text, or with `Accept: text/event-stream` as Server-Sent Events that follow the
/// build until it ends (`event: end`, data: the end state).
async fn build_logs(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let rec = record(&state, &id).await?;
    let sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if !sse {
        let text = state.logs.read(rec.id).await.map_err(unavailable)?;
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let items = state.logs.follow(rec.id).await.map_err(unavailable)?;
    Ok(Sse::new(sse_events(state.clone(), rec.id, items)).keep_alive(KeepAlive::default()).into_response())
}

fn sse_events(
    state: Arc<AppState>,
    id: u64,
    items: impl Stream<Item = Result<LogItem, crate::logs::LogError>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let items = Box::pin(items);
    futures::stream::unfold((items, state, false), move |(mut items, state, done)| async move {
        if done {
            return None;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(2), items.next()).await {
                Ok(Some(Ok(LogItem::Lines(text)))) => {
                    let data = text.trim_end_matches('\n').replace('\r', "");
                    return Some((Ok(Event::default().event("log").data(data)), (items, state, false)));
                }
                Ok(Some(Ok(LogItem::End(end)))) => {
                    // A retry may continue the log after an end marker: end only when the record did.
                    if build_ended(&state, id).await {
                        return Some((Ok(Event::default().event("end").data(end)), (items, state, true)));
                    }
                }
                Ok(Some(Err(e))) => {
                    return Some((Ok(Event::default().event("error").data(e.to_string())), (items, state, true)));
                }
                Ok(None) => return None,
                // Quiet: a build whose worker died may never write its end marker.
                Err(_) if build_ended(&state, id).await => {
                    let end =
                        state.records.get(id).await.ok().flatten().map(|r| format!("{:?}", r.state).to_lowercase()).unwrap_or_default();
                    return Some((Ok(Event::default().event("end").data(end)), (items, state, true)));
                }
                Err(_) => {}
            }
        }
    })
}

async fn build_ended(state: &AppState, id: u64) -> bool {
    matches!(state.records.get(id).await, Ok(Some(r)) if r.state.is_finished())
}

async fn cancel_build(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let mut rec = record(&state, &id).await?;
    if rec.state.is_finished() {
        return Err(api_error(StatusCode::CONFLICT, "already_finished", format!("build {id} already ended ({:?})", rec.state)));
    }
    if rec.push_started() {
        return Err(api_error(
            StatusCode::CONFLICT,
            "push_started",
            format!("build {id} is pushing its image and can no longer be cancelled"),
        ));
    }
    let reason = "cancelled by request".to_string();
    if rec.state == BuildState::Queued {
        rec.finish(BuildState::Cancelled, Some(reason.clone()));
        state.records.put(&rec).await.map_err(unavailable)?;
    }
    // Wherever it runs, its replica stops it (a queued one is skipped when picked up).
    state.queue.control(&Control::Cancel { build: rec.id, reason }).await.map_err(unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(Cancelling { build_id: rec.id, cancelling: true })).into_response())
}

async fn retry_build(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut span = RequestSpan::start("receive", "/builds/{id}/retry", &headers);
    let result = retry(&state, &id, &headers, &mut span).await;
    answered(&state, span, result)
}

/// Queues the push and publish of a build that failed there; the retry runs in this request's
/// trace.
async fn retry(state: &AppState, id: &str, headers: &HeaderMap, span: &mut RequestSpan) -> Result<(Response, &'static str), ApiError> {
    authorize(state, headers)?;
    let mut rec = record(state, id).await?;
    let retryable = rec.state == BuildState::Failed && matches!(rec.failed_step(), Some("push" | "publish")) && rec.repository.is_some();
    if !retryable {
        return Err(api_error(
            StatusCode::CONFLICT,
            "not_retryable",
            format!(
                "build {id} did not fail at push or publish (state {:?}, failed step {:?}); start a new build with POST /builds",
                rec.state,
                rec.failed_step()
            ),
        ));
    }
    span.set("conveyor.app", rec.push.app.clone());
    span.set("vcs.ref.head.revision", rec.push.commit.clone());
    span.set("conveyor.build.id", rec.id as i64);
    rec.state = BuildState::Queued;
    rec.reason = None;
    rec.finished_at = None;
    state.records.put(&rec).await.map_err(unavailable)?;
    state.queue.enqueue_retry(rec.id, rec.attempts, span.traceparent().as_deref()).await.map_err(unavailable)?;
    let location = format!("/builds/{}", rec.id);
    let body =
        BuildQueued { build_id: rec.id, duplicate: false, status_url: location.clone(), trace_id: span.trace_id().map(String::from) };
    Ok(((StatusCode::ACCEPTED, [(header::LOCATION, location.clone())], Json(body)).into_response(), "retry_queued"))
}

/// Ready when NATS is connected and, for a replica that builds, the Docker Engine answers.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut failing = Vec::new();
    if !state.queue.connected() {
        failing.push("nats: not connected".to_string());
    }
    if state.config.workers > 0 {
        match tokio::time::timeout(Duration::from_secs(2), state.docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failing.push(format!("docker: {e}")),
            Err(_) => failing.push("docker: no answer within 2 s".to_string()),
        }
    }
    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready: failing.is_empty(), failing })).into_response()
}

/// Prometheus metrics; the queue figures are read from JetStream at each scrape.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.queue.depth()).await {
        Ok(Ok((jobs, pending, ack_pending, redelivered))) => {
            state.metrics.queue_jobs.set(jobs as i64);
            state.metrics.queue_pending.set(pending as i64);
            state.metrics.queue_ack_pending.set(ack_pending as i64);
            state.metrics.queue_redelivered.set(redelivered as i64);
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "queue depth not read for /metrics"),
        Err(_) => tracing::debug!("queue depth not read for /metrics: timed out"),
    }
    ([(header::CONTENT_TYPE, conveyor_telemetry::metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}

//! The HTTP surface: the push endpoint (`POST /hooks/push`) and the build API
//! (`GET /builds`, `GET /builds/{id}`, `GET /builds/{id}/logs`, `GET /healthz`).
//! Errors are JSON `{ "error": <stable code>, "message": <text> }`; no input makes it panic.

use std::sync::Arc;

use axum::{
    extract::{rejection::JsonRejection, DefaultBodyLimit, Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::error::TrySendError;

use crate::{
    build::BuildJob,
    webhook::generic::{GenericPush, Intake},
    AppState,
};

/// Webhook bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hooks/push", post(push))
        .route("/builds", get(list_builds))
        .route("/builds/{id}", get(get_build))
        .route("/builds/{id}/logs", get(build_logs))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An API error: HTTP status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload"),
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => (r.status(), "body_too_large"),
            _ => (r.status(), "bad_request"),
        };
        ApiError::new(status, code, r.body_text())
    }
}

async fn push(State(state): State<Arc<AppState>>, body: Result<Json<GenericPush>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let intake = body.into_intake().map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_push", e.to_string()))?;
    let push = match intake {
        Intake::Ignore(reason) => return Ok((StatusCode::OK, Json(json!({ "ignored": reason }))).into_response()),
        Intake::Build(push) => push,
    };
    let id = state.builds.create(&push);
    tracing::info!(build.id = %id, app = %push.app, commit = %push.commit, branch = %push.branch, "push accepted");
    match state.queue.try_send(BuildJob { id: id.clone(), push }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            state.builds.finish(&id, Err("refused: the build queue is full".into()));
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", "the build queue is full; retry later"));
        }
        Err(TrySendError::Closed(_)) => {
            state.builds.finish(&id, Err("refused: the service is shutting down".into()));
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the service is shutting down"));
        }
    }
    let location = format!("/builds/{id}");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location.clone())], Json(json!({ "build_id": id, "status_url": location })))
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_builds(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> impl IntoResponse {
    Json(state.builds.list(q.limit.unwrap_or(50).min(1000)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "build_not_found", format!("no build with id {id:?}"))
}

async fn get_build(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    state.builds.get(&id).map(Json).ok_or_else(|| not_found(&id))
}

async fn build_logs(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let mut lines = state.builds.logs(&id).ok_or_else(|| not_found(&id))?;
    lines.push(String::new());
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines.join("\n")))
}

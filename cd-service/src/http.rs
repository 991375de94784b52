//! cd-service's HTTP surface: `POST /promote` (deploy an already built image to an environment,
//! checked against the manifest repository's `conveyor.yaml`), `GET /outcomes` (what happened to
//! the latest events, skips included) and `GET /healthz`. Errors are JSON
//! `{ "error": <stable code>, "message": <text> }`.

use std::sync::Arc;

use async_nats::jetstream;
use axum::{
    extract::{rejection::JsonRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::{
    gitops::ManifestRepo,
    manifest_config,
    outcomes::Recent,
    promote::{self, PromoteError},
};

pub struct HttpState {
    pub js: jetstream::Context,
    pub repo: Arc<Mutex<ManifestRepo>>,
    pub recent: Arc<Recent>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/promote", post(promote_handler))
        .route("/outcomes", get(outcomes_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub app: String,
    pub environment: String,
    pub tag: String,
    #[serde(default)]
    pub requested_by: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OutcomesQuery {
    limit: Option<usize>,
    outcome: Option<String>,
}

async fn outcomes_handler(State(state): State<Arc<HttpState>>, Query(q): Query<OutcomesQuery>) -> Response {
    Json(state.recent.list(q.limit.unwrap_or(100).min(1000), q.outcome.as_deref())).into_response()
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": code, "message": message.into() }))).into_response()
}

async fn promote_handler(State(state): State<Arc<HttpState>>, body: Result<Json<PromoteRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(r) => return error(r.status(), "invalid_request", r.body_text()),
    };
    // The environment must exist for the app in the manifest repository as last synced.
    let known = {
        let repo = state.repo.lock().await;
        match manifest_config::load(repo.work_tree()) {
            Ok(Some(c)) => c.apps.get(&req.app).map(|a| a.environments.contains_key(&req.environment)).ok_or("unknown_app"),
            Ok(None) => Ok(req.environment == manifest_config::DEFAULT_ENV),
            Err(e) => return error(StatusCode::CONFLICT, "invalid_manifest_config", e),
        }
    };
    match known {
        Err(code) => return error(StatusCode::NOT_FOUND, code, format!("app {:?} is not in {}", req.app, manifest_config::FILE)),
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_environment",
                format!("app {:?} has no environment {:?}", req.app, req.environment),
            )
        }
        Ok(true) => {}
    }
    let by = req.requested_by.as_deref().unwrap_or("api");
    match promote::promote(&state.js, &req.app, &req.environment, &req.tag, by).await {
        Ok((sequence, event)) => {
            tracing::info!(app = %req.app, env = %req.environment, tag = %req.tag, %by, sequence, "promotion queued");
            (StatusCode::ACCEPTED, Json(json!({ "event_id": event.event_id, "sequence": sequence, "image": event.image.reference() })))
                .into_response()
        }
        Err(PromoteError::Invalid(m)) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m),
        Err(e @ PromoteError::UnknownTag { .. }) => error(StatusCode::NOT_FOUND, "unknown_tag", e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "stream_unavailable", e.to_string()),
    }
}

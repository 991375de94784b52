//! A forge's commit-status API for tests, as the forges' public API docs give it (no forge can
//! run here): GitHub `POST /repos/{owner}/{repo}/statuses/{sha}` (`Authorization: Bearer` or
//! `token`, a `User-Agent`, states `error|failure|pending|success`, 201), GitLab
//! `POST /api/v4/projects/{id}/statuses/{sha}` (`PRIVATE-TOKEN`, states
//! `pending|running|success|failed|canceled|skipped`, `name`/`context`, 400 for a transition to
//! the state the status already has), Gitea/Forgejo `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`
//! (`Authorization: token`, states `pending|success|error|failure|warning`). Served under
//! `/github`, `/gitlab` and `/gitea` of one loopback port. It records every request (method,
//! path, headers, JSON body, answer) and can be told to be down (503) or to take a new token.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode},
    response::IntoResponse,
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};

/// One request as the forge saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `github`, `gitlab` or `gitea`.
    pub forge: String,
    pub method: String,
    pub path: String,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// What it answered.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    token: String,
    requests: Vec<Recorded>,
    /// Answer 503 to this many more requests.
    down_for: usize,
    /// Answer 503 to everything.
    down: bool,
    /// GitLab: the last state of each (project, sha, name).
    gitlab_states: HashMap<(String, String, String), String>,
}

pub struct TestForge {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
    _server: tokio::task::JoinHandle<()>,
}

impl TestForge {
    /// Serves on a free loopback port, accepting `token`.
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner { token: token.to_string(), ..Default::default() }));
        let app = Router::new()
            .route("/github/repos/{owner}/{repo}/statuses/{sha}", post(github))
            .route("/gitea/api/v1/repos/{owner}/{repo}/statuses/{sha}", post(gitea))
            .route("/gitlab/api/v4/projects/{id}/statuses/{sha}", post(gitlab))
            .fallback(|method: Method, uri: axum::http::Uri| async move {
                (StatusCode::NOT_FOUND, Json(json!({"message": format!("Not Found: {method} {uri}")})))
            })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the test forge");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, inner, _server: server }
    }

    /// The API base URL of `forge` (`github`, `gitlab`, `gitea`) as a secrets file names it.
    pub fn api_url(&self, forge: &str) -> String {
        match forge {
            "gitlab" => format!("http://127.0.0.1:{}/gitlab/api/v4", self.port),
            "gitea" => format!("http://127.0.0.1:{}/gitea/api/v1", self.port),
            _ => format!("http://127.0.0.1:{}/github", self.port),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The requests it accepted (2xx).
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| (200..300).contains(&r.status)).collect()
    }

    /// Answers 503 to the next `n` requests.
    pub fn fail_next(&self, n: usize) {
        self.inner.lock().unwrap().down_for = n;
    }

    /// Down (503 to everything) or up again.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Accepts only `token` from now on (a rotation: the old one is refused).
    pub fn set_token(&self, token: &str) {
        self.inner.lock().unwrap().token = token.to_string();
    }

    /// Waits until `done` holds for the accepted requests (within `secs`), returning them.
    pub async fn wait_accepted(&self, what: &str, secs: u64, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let accepted = self.accepted();
            if done(&accepted) {
                return accepted;
            }
            if std::time::Instant::now() > deadline {
                panic!("the forge never got {what}; requests: {:#?}", self.requests());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn headers_of(h: &HeaderMap) -> HashMap<String, String> {
    h.iter().map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string())).collect()
}

/// Records the request, applies "down", checks the JSON body; `Err` is the answer.
fn intake(inner: &Arc<Mutex<Inner>>, forge: &str, path: String, headers: &HeaderMap, body: &Bytes) -> Result<Value, (StatusCode, Value)> {
    let mut i = inner.lock().unwrap();
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let record = Recorded {
        forge: forge.into(),
        method: "POST".into(),
        path,
        headers: headers_of(headers),
        body: parsed.as_ref().cloned().unwrap_or(Value::Null),
        status: 0,
    };
    i.requests.push(record);
    if i.down || i.down_for > 0 {
        i.down_for = i.down_for.saturating_sub(1);
        return Err((StatusCode::SERVICE_UNAVAILABLE, json!({"message": "Service Unavailable"})));
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, json!({"message": "expected application/json"})));
    }
    parsed.map_err(|e| (StatusCode::BAD_REQUEST, json!({"message": format!("Problems parsing JSON: {e}")})))
}

fn answer(inner: &Arc<Mutex<Inner>>, result: Result<(StatusCode, Value), (StatusCode, Value)>) -> axum::response::Response {
    let (status, body) = result.unwrap_or_else(|e| e);
    if let Some(last) = inner.lock().unwrap().requests.last_mut() {
        last.status = status.as_u16();
    }
    (status, Json(body)).into_response()
}

fn is_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn github(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = format!("/repos/{owner}/{repo}/statuses/{sha}");
    let result = (|| {
        let body = intake(&inner, "github", path, &headers, &body)?;
        let token = inner.lock().unwrap().token.clone();
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth != format!("Bearer {token}") && auth != format!("token {token}") {
            return Err((StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials", "status": "401"})));
        }
        if headers.get("user-agent").is_none() {
            return Err((
                StatusCode::FORBIDDEN,
                json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
            ));
        }
        let state = body["state"].as_str().unwrap_or("");
        if !["error", "failure", "pending", "success"].contains(&state) || !is_sha(&sha) {
            return Err((StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Validation Failed", "status": "422"})));
        }
        Ok((StatusCode::CREATED, json!({"state": state, "context": body.get("context").cloned().unwrap_or(json!("default"))})))
    })();
    answer(&inner, result)
}

async fn gitea(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = format!("/api/v1/repos/{owner}/{repo}/statuses/{sha}");
    let result = (|| {
        let body = intake(&inner, "gitea", path, &headers, &body)?;
        let token = inner.lock().unwrap().token.clone();
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth != format!("token {token}") && auth != format!("Bearer {token}") {
            return Err((StatusCode::UNAUTHORIZED, json!({"message": "token is required"})));
        }
        let state = body["state"].as_str().unwrap_or("");
        if !["pending", "success", "error", "failure", "warning"].contains(&state) {
            return Err((StatusCode::UNPROCESSABLE_ENTITY, json!({"message": format!("invalid state {state:?}")})));
        }
        Ok((StatusCode::CREATED, json!({"status": state, "context": body["context"]})))
    })();
    answer(&inner, result)
}

async fn gitlab(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((id, sha)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = format!("/api/v4/projects/{id}/statuses/{sha}");
    let result = (|| {
        let body = intake(&inner, "gitlab", path, &headers, &body)?;
        let mut i = inner.lock().unwrap();
        if headers.get("private-token").and_then(|v| v.to_str().ok()) != Some(i.token.as_str()) {
            return Err((StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"})));
        }
        let state = body["state"].as_str().unwrap_or("").to_string();
        if !["pending", "running", "success", "failed", "canceled", "skipped"].contains(&state.as_str()) {
            return Err((StatusCode::BAD_REQUEST, json!({"error": "state does not have a valid value"})));
        }
        let name = body["name"].as_str().or(body["context"].as_str()).unwrap_or("default").to_string();
        let key = (id.clone(), sha.clone(), name.clone());
        if i.gitlab_states.get(&key) == Some(&state) {
            return Err((StatusCode::BAD_REQUEST, json!({"message": format!("Cannot transition status via :{state} from :{state}")})));
        }
        i.gitlab_states.insert(key, state.clone());
        Ok((StatusCode::CREATED, json!({"status": state, "name": name, "sha": sha})))
    })();
    answer(&inner, result)
}

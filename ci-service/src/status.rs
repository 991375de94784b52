//! Commit statuses on the forges: `pending` when a build is queued, running while it runs,
//! then its end, with a link to the build. GitHub (`POST /repos/{owner}/{repo}/statuses/{sha}`,
//! Bearer token), GitLab (`POST /projects/{id}/statuses/{sha}`, `PRIVATE-TOKEN`) and Gitea /
//! Forgejo (`POST /repos/{owner}/{repo}/statuses/{sha}`, `token` auth), each at the API URL and
//! with the token the secrets file gives for the repository's forge host (never one a payload
//! names). Reports go through a bounded channel to a background task: a forge that is slow, down
//! or refusing never fails or slows a build. Each status is tried a bounded number of times;
//! an older status of the same commit and context is dropped once a newer one is reported, so a
//! retried `pending` never lands after the end. Failures are logged and counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    records::BuildState,
    secrets::{ForgeKind, TokenSource},
    webhook::PushRequest,
    AppState,
};

/// Reports waiting for the background task at most; more are dropped (and counted).
const QUEUE: usize = 10_000;
/// One request to a forge takes at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// GitHub cuts descriptions at 140 characters; every forge gets at most that.
const MAX_DESCRIPTION: usize = 140;

/// Where a build is in its life, as a status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
    Ended(BuildState),
}

/// One status to report.
#[derive(Debug, Clone)]
pub struct Report {
    pub build_id: u64,
    pub phase: Phase,
    pub push: PushRequest,
    /// Why it ended (failure reason), or what it produced (`image:tag`).
    pub detail: Option<String>,
}

/// The sending half: cheap to call from the webhook path and from builds.
pub struct Reporter {
    tx: mpsc::Sender<Report>,
}

impl Reporter {
    pub fn new() -> (Self, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues a status; nothing for a push without a forge repository (the generic hook, a
    /// manual build).
    pub fn report(&self, state: &AppState, report: Report) {
        // Nothing at all on the webhook path when no forge is configured.
        if report.push.forge.is_none() || !state.secrets.has_forges() {
            return;
        }
        if self.tx.try_send(report).is_err() {
            state.metrics.status("any", "dropped");
            tracing::warn!("commit status dropped: {QUEUE} statuses are already waiting for their forges");
        }
    }
}

/// A status ready to send.
#[derive(Debug, Clone)]
struct Post {
    kind: ForgeKind,
    forge: String,
    url: String,
    token: TokenSource,
    body: serde_json::Value,
    build_id: u64,
    phase: Phase,
    /// Statuses with the same key replace each other on the forge.
    key: String,
}

fn kind_name(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "github",
        ForgeKind::Gitlab => "gitlab",
        ForgeKind::Gitea => "gitea",
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a path segment; GitLab's
/// `group/project` becomes `group%2Fproject`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// The forge's state word for a phase.
fn state_word(kind: ForgeKind, phase: &Phase) -> &'static str {
    use BuildState::*;
    match (kind, phase) {
        (_, Phase::Queued) => "pending",
        (ForgeKind::Gitlab, Phase::Running) => "running",
        (_, Phase::Running) => "pending",
        (_, Phase::Ended(Succeeded)) => "success",
        (ForgeKind::Gitlab, Phase::Ended(Failed)) => "failed",
        (ForgeKind::Gitlab, Phase::Ended(Cancelled)) => "canceled",
        (ForgeKind::Gitlab, Phase::Ended(Skipped)) => "skipped",
        (_, Phase::Ended(Failed)) => "failure",
        (_, Phase::Ended(Cancelled)) => "error",
        // GitHub and Gitea have no "skipped": a deliberately unbuilt commit is not a failure.
        (_, Phase::Ended(Skipped)) => "success",
        (ForgeKind::Gitlab, Phase::Ended(Queued | Running)) => "running",
        (_, Phase::Ended(Queued | Running)) => "pending",
    }
}

fn description(r: &Report) -> String {
    let n = r.build_id;
    let detail = r.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
    let text = match &r.phase {
        Phase::Queued => format!("Build #{n} queued"),
        Phase::Running => format!("Build #{n} running"),
        Phase::Ended(BuildState::Succeeded) if r.push.pull_request.is_some() => format!("Build #{n} passed (pull request: not pushed)"),
        Phase::Ended(BuildState::Succeeded) => format!("Build #{n} succeeded{detail}"),
        Phase::Ended(BuildState::Failed) => format!("Build #{n} failed{detail}"),
        Phase::Ended(BuildState::Cancelled) => format!("Build #{n} cancelled{detail}"),
        Phase::Ended(BuildState::Skipped) => format!("Build #{n} skipped{detail}"),
        Phase::Ended(other) => format!("Build #{n} {other:?}"),
    };
    truncate(&text, MAX_DESCRIPTION)
}

/// Where users open build `id`: the console's page, else the API's record.
pub fn build_link(cfg: &crate::Config, id: u64) -> String {
    match (&cfg.console_url, &cfg.public_url) {
        (Some(console), _) => format!("{}/#/builds/{id}", console.trim_end_matches('/')),
        (None, Some(public)) => format!("{}/builds/{id}", public.trim_end_matches('/')),
        (None, None) => format!("http://{}/builds/{id}", cfg.listen),
    }
}

impl Post {
    /// The request for `report`, if the secrets file has a forge for its repository's host.
    fn resolve(state: &AppState, report: &Report) -> Option<Post> {
        let forge = report.push.forge.as_ref()?;
        let names: Vec<&str> =
            report.push.authenticated_repo.iter().map(String::as_str).chain([forge.path.as_str(), report.push.repo_url.as_str()]).collect();
        let (entry, token) = state.secrets.status_target(&forge.host, &names)?;
        let cfg = &state.config;
        let context = if report.push.pull_request.is_some() { format!("{}/pr", cfg.status_context) } else { cfg.status_context.clone() };
        let api = entry.api_url.trim_end_matches('/');
        let sha = &report.push.commit;
        let state_word = state_word(entry.kind, &report.phase);
        let (target_url, description) = (build_link(cfg, report.build_id), description(report));
        let (url, body) = match entry.kind {
            ForgeKind::Github | ForgeKind::Gitea => {
                let path: Vec<String> = forge.path.split('/').map(encode_segment).collect();
                let url = format!("{api}/repos/{}/statuses/{sha}", path.join("/"));
                let body = serde_json::json!({
                    "state": state_word, "target_url": target_url, "description": description, "context": context,
                });
                (url, body)
            }
            ForgeKind::Gitlab => {
                let project = forge.project_id.map(|id| id.to_string()).unwrap_or_else(|| encode_segment(&forge.path));
                let url = format!("{api}/projects/{project}/statuses/{sha}");
                let git_ref =
                    report.push.pull_request.as_ref().map(|pr| pr.head_ref.clone()).unwrap_or_else(|| report.push.ref_name.clone());
                let body = serde_json::json!({
                    "state": state_word, "ref": git_ref, "name": context, "target_url": target_url, "description": description,
                });
                (url, body)
            }
        };
        let key = format!("{api}\n{}\n{sha}\n{context}", forge.path);
        Some(Post {
            kind: entry.kind,
            forge: forge.host.clone(),
            url,
            token,
            body,
            build_id: report.build_id,
            phase: report.phase.clone(),
            key,
        })
    }

    async fn send(&self, client: &reqwest::Client) -> Result<(), Failure> {
        let token = self.token.read().map_err(Failure::Fatal)?.ok_or_else(|| Failure::Fatal("no token".into()))?;
        let req = client.post(&self.url).json(&self.body);
        let req = match self.kind {
            ForgeKind::Github => {
                req.bearer_auth(token.expose()).header("accept", "application/vnd.github+json").header("x-github-api-version", "2022-11-28")
            }
            ForgeKind::Gitlab => req.header("private-token", token.expose()),
            ForgeKind::Gitea => req.header("authorization", format!("token {}", token.expose())).header("accept", "application/json"),
        };
        let resp = req.send().await.map_err(|e| Failure::Retry(format!("{}: {}", self.url, without_url(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
        let why = format!("{} answered {status}: {}", self.url, text.trim());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(Failure::Retry(why))
        } else {
            Err(Failure::Fatal(why))
        }
    }
}

/// A reqwest error's message without the URL (it is named once by the caller).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "").replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

enum Failure {
    /// The forge is away or overloaded: try again later.
    Retry(String),
    /// It refused the status (token, permissions, unknown repository or commit): trying again
    /// would be refused the same way.
    Fatal(String),
}

/// The newest status number reported for each key, with the lock that sends one at a time.
type Latest = Arc<Mutex<HashMap<String, (u64, Arc<tokio::sync::Mutex<()>>)>>>;

/// Sends the reports until the channel closes.
pub async fn run(state: Arc<AppState>, mut rx: mpsc::Receiver<Report>) {
    // Made at the first status: its TLS roots cost memory a service without forges never needs.
    let mut client: Option<reqwest::Client> = None;
    let latest: Latest = Arc::default();
    let mut seq = 0u64;
    while let Some(report) = rx.recv().await {
        let Some(post) = Post::resolve(&state, &report) else { continue };
        let client = match &client {
            Some(c) => c.clone(),
            None => {
                let agent = concat!("conveyor-ci/", env!("CARGO_PKG_VERSION"));
                match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).user_agent(agent).build() {
                    Ok(c) => client.insert(c).clone(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot make the HTTP client for commit statuses");
                        state.metrics.status(kind_name(post.kind), "failed");
                        continue;
                    }
                }
            }
        };
        seq += 1;
        let lock = {
            let mut map = latest.lock().expect("status map lock is never poisoned");
            let entry = map.entry(post.key.clone()).or_insert_with(|| (0, Arc::default()));
            entry.0 = seq;
            entry.1.clone()
        };
        tokio::spawn(deliver(state.clone(), client, post, seq, lock, latest.clone()));
    }
}

async fn deliver(state: Arc<AppState>, client: reqwest::Client, post: Post, seq: u64, lock: Arc<tokio::sync::Mutex<()>>, latest: Latest) {
    let attempts = state.config.status_attempts.max(1);
    let forge = kind_name(post.kind);
    let newest = || latest.lock().expect("status map lock is never poisoned").get(&post.key).map(|e| e.0) == Some(seq);
    let mut wait = Duration::from_secs(1);
    let mut result = "failed";
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        let _one_at_a_time = lock.lock().await;
        if !newest() || (attempt > 1 && overtaken(&state, &post).await) {
            result = "superseded";
            break;
        }
        match post.send(&client).await {
            Ok(()) => {
                tracing::debug!(forge = %post.forge, build.id = post.build_id, state = %post.body["state"], "commit status posted");
                result = "posted";
                break;
            }
            Err(Failure::Retry(why)) if attempt < attempts => {
                state.metrics.status(forge, "retried");
                tracing::warn!(forge = %post.forge, build.id = post.build_id, attempt, attempts, error = %state.masker.mask(&why), "commit status not posted; retrying");
            }
            Err(Failure::Retry(why) | Failure::Fatal(why)) => {
                tracing::warn!(forge = %post.forge, build.id = post.build_id, attempt, error = %state.masker.mask(&why), "commit status not posted; giving up (the build is not affected)");
                break;
            }
        }
    }
    state.metrics.status(forge, result);
    let mut map = latest.lock().expect("status map lock is never poisoned");
    if map.get(&post.key).is_some_and(|e| e.0 == seq) {
        map.remove(&post.key);
    }
}

/// Whether the build moved past the phase a retried status says (another replica runs or ended
/// it, and reports that itself).
async fn overtaken(state: &AppState, post: &Post) -> bool {
    let Ok(Some(rec)) = state.records.get(post.build_id).await else { return false };
    match post.phase {
        Phase::Queued => rec.state != BuildState::Queued,
        Phase::Running => rec.state.is_finished(),
        Phase::Ended(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_each_forges_vocabulary() {
        use BuildState::*;
        let words = |k| {
            [Phase::Queued, Phase::Running, Phase::Ended(Succeeded), Phase::Ended(Failed), Phase::Ended(Cancelled), Phase::Ended(Skipped)]
                .map(|p| state_word(k, &p))
        };
        assert_eq!(words(ForgeKind::Github), ["pending", "pending", "success", "failure", "error", "success"]);
        assert_eq!(words(ForgeKind::Gitea), ["pending", "pending", "success", "failure", "error", "success"]);
        assert_eq!(words(ForgeKind::Gitlab), ["pending", "running", "success", "failed", "canceled", "skipped"]);
    }

    #[test]
    fn paths_are_encoded_and_descriptions_bounded() {
        assert_eq!(encode_segment("group/sub project"), "group%2Fsub%20project");
        assert_eq!(encode_segment("my-app_1.x"), "my-app_1.x");
        let long = truncate(&"é".repeat(200), MAX_DESCRIPTION);
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
    }
}

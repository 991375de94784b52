//! ci-service's routes: the push a webhook or `POST /builds` asks to build ([`PushRequest`]),
//! what intake answers (queued, duplicate, ignored or pong), the build record of
//! `GET /builds` and `GET /builds/{id}` ([`BuildRecord`], also what ci-service stores), and
//! `POST /builds/{id}/cancel`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Who sent the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Generic,
    Github,
    Gitlab,
    Gitea,
    /// `POST /builds` by a user.
    Manual,
}

/// Whether a branch or a tag was pushed, or a pull (merge) request's head changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    Branch,
    Tag,
    /// A pull or merge request: built, tested and smoke-tested, never pushed or published.
    PullRequest,
}

/// The repository on its forge, as the (authenticated) webhook named it: where the build's
/// commit status is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeRepo {
    /// The forge's host (and port), from the repository's web URL: it picks the forge entry of
    /// the secrets file (API URL, token).
    pub host: String,
    /// `owner/name` (GitLab: `group/sub/project`).
    pub path: String,
    /// GitLab's numeric project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
}

/// A pull (merge) request build: which request, from where, into what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The request's number on its forge (GitHub/Gitea `number`, GitLab `iid`).
    pub number: u64,
    /// The branch the request brings (in the head repository).
    pub head_ref: String,
    /// The branch it would merge into.
    pub base_ref: String,
    /// The head is in another repository (a fork): the build gets none of the service's build
    /// args; no pull-request build ever gets registry credentials.
    pub from_fork: bool,
    /// The head repository, when the forge names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_repo: Option<String>,
}

/// A push that should be built: one commit of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Application name (DNS label); derives the image repository and the event subject.
    pub app: String,
    /// Where the commit is fetched from (URL or local path).
    pub repo_url: String,
    /// The full ref that was pushed, e.g. `refs/heads/main` or `refs/tags/v1.2.0` (a pull
    /// request's head ref, `refs/pull/7/head`, in its base repository).
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub ref_kind: RefKind,
    /// The branch or tag name, `main`, `v1.2.0` (`pr-7` for a pull request).
    pub ref_name: String,
    /// Full commit id. A push of an annotated tag names the tag object; the build peels it and
    /// records the commit here (the object is then in `tag_object`).
    pub commit: String,
    /// The annotated tag object the push named, once peeled to `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_object: Option<String>,
    pub source: Source,
    /// The sender's delivery id (`X-GitHub-Delivery`, ...), when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// The authenticated repository (forge full name, or the generic `repo_url`): what the app
    /// and the images the build may push are granted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_repo: Option<String>,
    /// The repository on its forge, for commit statuses (forge webhooks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeRepo>,
    /// Set for a pull (merge) request build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Deliberately not built (branch filter, `[skip ci]`).
    Skipped,
}

impl BuildState {
    pub fn is_finished(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Set when the step ended.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    /// Build number: the job's sequence in the build queue.
    pub id: u64,
    /// What was pushed (its fields appear at the top level of the JSON).
    #[serde(flatten)]
    pub push: PushRequest,
    pub state: BuildState,
    pub steps: Vec<StepRecord>,
    /// Image repository (`registry/name`), once known.
    pub repository: Option<String>,
    /// Tags given to the image: the short SHA, and the git tag for tag pushes.
    pub tags: Vec<String>,
    /// Registry digest, once pushed.
    pub digest: Option<String>,
    /// The published event's id and stream sequence.
    pub event_id: Option<String>,
    pub event_sequence: Option<u64>,
    /// Why the build failed, was cancelled or skipped.
    pub reason: Option<String>,
    /// The OpenTelemetry trace of the push (open it in Jaeger); also in the manifest commit's
    /// `Conveyor-Trace-Id` trailer.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The replica that ran (or runs) it, and how many times it was started.
    pub replica: Option<String>,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl BuildRecord {
    pub fn queued(id: u64, push: &PushRequest, queued_at: OffsetDateTime, trace_id: Option<String>) -> Self {
        BuildRecord {
            id,
            push: push.clone(),
            state: BuildState::Queued,
            steps: Vec::new(),
            repository: None,
            tags: Vec::new(),
            digest: None,
            event_id: None,
            event_sequence: None,
            reason: None,
            trace_id,
            replica: None,
            attempts: 0,
            queued_at,
            started_at: None,
            finished_at: None,
        }
    }

    /// The step that failed, if one did.
    pub fn failed_step(&self) -> Option<&str> {
        self.steps.iter().rev().find(|s| s.state == StepState::Failed).map(|s| s.name.as_str())
    }

    /// Whether the image push has started (from then on the build cannot be cancelled).
    pub fn push_started(&self) -> bool {
        self.steps.iter().any(|s| s.name == "push")
    }

    pub fn step_started(&mut self, name: &str) {
        self.steps.push(StepRecord {
            name: name.into(),
            state: StepState::Running,
            started_at: OffsetDateTime::now_utc(),
            duration_ms: None,
        });
    }

    pub fn step_finished(&mut self, name: &str, state: StepState) {
        if let Some(step) = self.steps.iter_mut().rev().find(|s| s.name == name && s.state == StepState::Running) {
            step.state = state;
            step.duration_ms = Some((OffsetDateTime::now_utc() - step.started_at).whole_milliseconds().max(0) as u64);
        }
    }

    /// Ends the build; steps still running are marked with the same end.
    pub fn finish(&mut self, state: BuildState, reason: Option<String>) {
        let step_state = match state {
            BuildState::Cancelled => StepState::Cancelled,
            BuildState::Succeeded => StepState::Succeeded,
            _ => StepState::Failed,
        };
        let running: Vec<String> = self.steps.iter().filter(|s| s.state == StepState::Running).map(|s| s.name.clone()).collect();
        for name in running {
            self.step_finished(&name, step_state);
        }
        self.state = state;
        self.reason = reason;
        self.finished_at = Some(OffsetDateTime::now_utc());
    }
}

/// A push or manual build taken (`202 Accepted`, or `200 OK` for a duplicate delivery), with the
/// build's address in `status_url` (also the `Location` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildQueued {
    /// The build number (a JetStream sequence, from 1).
    pub build_id: u64,
    /// The same delivery was taken before: this is that build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    pub status_url: String,
    pub trace_id: Option<String>,
}

/// A webhook that asks for no build (`200 OK`): a forge's ping, or a push with nothing to build
/// (a deleted branch, a tag, a `[skip ci]` commit), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotBuilt {
    Pong { pong: bool },
    Ignored { ignored: String },
}

/// `POST /builds/{id}/cancel` taken (`202 Accepted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelling {
    pub build_id: u64,
    pub cancelling: bool,
}

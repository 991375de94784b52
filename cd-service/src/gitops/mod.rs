//! The manifest repository: one warm local clone per (remote, branch), refreshed by fetch +
//! hard reset before each change, committed and pushed with git2. A push counts only when the
//! server accepted the ref update; a rejected or stale push is retried from a fresh fetch (the
//! edit is re-derived on the new head, never force-pushed). Blocking: call from `spawn_blocking`.
//! The transport (credentials, known_hosts, URL parsing, stale locks) is in `transport.rs`, the
//! deploy planner (edits and outcomes, no git) in `plan.rs`, the in-memory index of what is
//! deployed in `index.rs`, the commit message in `trailers.rs`.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use git2::{build::CheckoutBuilder, ErrorCode, FetchOptions, PushOptions, Repository, Signature};

use crate::{
    manifest_config::{self, ManifestConfig},
    rewrite::{self, Change},
};
use conveyor_api::cd::{Deployment, Outcome};
use conveyor_proto::ImageBuilt;
use tracing::field::Empty;

#[derive(Debug, thiserror::Error)]
pub enum GitOpsError {
    #[error("cannot clone {url}: {source}")]
    Clone { url: String, source: git2::Error },
    #[error("cannot fetch {branch} from {url}: {source}")]
    Fetch { url: String, branch: String, source: git2::Error },
    #[error("branch {branch:?} does not exist in {url}")]
    NoBranch { url: String, branch: String },
    #[error(transparent)]
    Transport(#[from] conveyor_git::TransportError),
    #[error("push of {branch} to {url} was rejected by the server: {reason}")]
    PushRejected { url: String, branch: String, reason: String },
    #[error("push of {branch} to {url} failed {attempts} times because the branch kept moving; giving up for now")]
    PushContention { url: String, branch: String, attempts: u32 },
    #[error("{0}")]
    Config(String),
    #[error("cannot rewrite manifests: {0}")]
    Rewrite(#[from] rewrite::RewriteError),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
}

pub use conveyor_proto::Secret;
pub use trailers::commit_message;
pub use transport::STALE_REMOTE_LOCK;

mod index;
mod plan;
mod trailers;
mod transport;

use conveyor_git::{callbacks, Seen};
use index::DeployIndex;
use plan::Plan;
use transport::{local_remote_path, remove_stale_locks, remove_stale_remote_locks};

pub use conveyor_git::GitAuth;

/// Makes TLS verification (https remotes) use this CA bundle instead of the system's. Process-
/// wide: call once at start-up, before any git operation runs.
pub fn set_ca_file(path: &Path) -> Result<(), GitOpsError> {
    conveyor_git::set_ca_file(path).map_err(GitOpsError::Git)
}

#[derive(Debug, Clone)]
pub struct RepoConfig {
    pub url: String,
    pub branch: String,
    pub clone_dir: PathBuf,
    pub author_name: String,
    pub author_email: String,
    pub auth: GitAuth,
    pub max_push_attempts: u32,
}

/// The outcome of applying a batch of events.
#[derive(Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The pushed commit, if any event changed anything.
    pub commit: Option<String>,
    pub changes: Vec<Change>,
    /// One per event, in order; a `Committed` or `Partial` one names the pushed commit.
    pub outcomes: Vec<Outcome>,
    pub attempts: u32,
}

pub struct ManifestRepo {
    cfg: RepoConfig,
    repo: Repository,
    /// What is deployed, refreshed by every sync.
    index: Mutex<DeployIndex>,
}

impl ManifestRepo {
    /// Opens the warm clone, or clones it the first time.
    pub fn open_or_clone(cfg: RepoConfig) -> Result<Self, GitOpsError> {
        remove_stale_locks(&cfg.clone_dir.join(".git"));
        let repo = match Repository::open(&cfg.clone_dir) {
            Ok(repo) => repo,
            Err(_) => {
                if cfg.clone_dir.exists() {
                    std::fs::remove_dir_all(&cfg.clone_dir).map_err(|e| GitOpsError::Git(git2::Error::from_str(&e.to_string())))?;
                }
                let repo = Repository::init(&cfg.clone_dir).map_err(|source| GitOpsError::Clone { url: cfg.url.clone(), source })?;
                repo.remote("origin", &cfg.url).map_err(|source| GitOpsError::Clone { url: cfg.url.clone(), source })?;
                repo
            }
        };
        let current = repo.find_remote("origin").ok().and_then(|r| r.url().ok().map(str::to_string));
        if current.as_deref() != Some(cfg.url.as_str()) {
            repo.remote_set_url("origin", &cfg.url)?;
        }
        let this = Self { cfg, repo, index: Mutex::default() };
        // Fail at start-up, not at the first event, when the remote or branch is unreachable.
        this.sync()?;
        Ok(this)
    }

    /// The transport's cause of a failed fetch or push (host key, key, token), else `otherwise`.
    fn classify(&self, seen: &Seen, e: git2::Error, otherwise: impl FnOnce(git2::Error) -> GitOpsError) -> GitOpsError {
        match conveyor_git::classify(&self.cfg.url, &self.cfg.auth, seen, &e) {
            Some(t) => GitOpsError::Transport(t),
            None => otherwise(e),
        }
    }

    pub fn work_tree(&self) -> &Path {
        &self.cfg.clone_dir
    }

    fn remote_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.cfg.branch)
    }

    /// Fetches the branch and resets the work tree to it, dropping any local leftovers.
    pub fn sync(&self) -> Result<git2::Oid, GitOpsError> {
        let mut remote = self.repo.find_remote("origin")?;
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.cfg.branch);
        let seen = Seen::default();
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks(&self.cfg.url, &self.cfg.auth, &seen));
        opts.download_tags(git2::AutotagOption::None);
        opts.prune(git2::FetchPrune::On);
        remote.fetch(&[refspec.as_str()], Some(&mut opts), None).map_err(|source| {
            self.classify(&seen, source, |source| GitOpsError::Fetch { url: self.cfg.url.clone(), branch: self.cfg.branch.clone(), source })
        })?;
        let oid = self
            .repo
            .refname_to_id(&self.remote_ref())
            .map_err(|_| GitOpsError::NoBranch { url: self.cfg.url.clone(), branch: self.cfg.branch.clone() })?;
        let commit = self.repo.find_commit(oid)?;
        let local = format!("refs/heads/{}", self.cfg.branch);
        self.repo.reference(&local, oid, true, "conveyor: sync with origin")?;
        self.repo.set_head(&local)?;
        self.repo.reset(commit.as_object(), git2::ResetType::Hard, Some(CheckoutBuilder::new().force().remove_untracked(true)))?;
        self.index.lock().expect("the deploy index lock is never held across a panic").refresh(&self.repo, oid)?;
        Ok(oid)
    }

    /// Applies a batch of events in order and pushes one commit per environment it changed.
    /// On a moved remote, re-syncs and re-derives the edits from the events on the new head
    /// (never a rebase of the old commits, never a force-push).
    pub fn apply_batch(&self, events: &[ImageBuilt]) -> Result<BatchOutcome, GitOpsError> {
        self.apply_traced(events, &[])
    }

    /// [`ManifestRepo::apply_batch`], with `parents[i]` the span of event `i` (its `consume`):
    /// each event's `rewrite` is a child of its own span; `commit` and `git.push` are children
    /// of the first event they carry, linked to the others. Without parents, the current span.
    pub fn apply_traced(&self, events: &[ImageBuilt], parents: &[tracing::Span]) -> Result<BatchOutcome, GitOpsError> {
        let current = tracing::Span::current();
        let parent = |i: usize| parents.get(i).unwrap_or(&current);
        // 50 ms, 100 ms, 200 ms ... 2 s, with jitter so replicas spread out.
        let mut waits = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.sync()?;
            let root = self.work_tree();
            let config = manifest_config::load(root).map_err(GitOpsError::Config)?;
            let Plan { mut outcomes, changes, per_env } = {
                let index = self.index.lock().expect("the deploy index lock is never held across a panic");
                plan::plan(root, config.as_ref(), events, |app, env| index.build_started(app, env), attempt, parent)?
            };
            if per_env.is_empty() {
                return Ok(BatchOutcome { commit: None, changes, outcomes, attempts: attempt });
            }
            let mut last = None;
            for (env, (indices, paths)) in &per_env {
                let span = linked_span(
                    parent,
                    indices,
                    || tracing::info_span!(parent: parent(indices[0]), "commit", conveyor.environment = %env, conveyor.manifest.commit = Empty, conveyor.events = indices.len()),
                );
                let _in_commit = span.enter();
                let env_events: Vec<&ImageBuilt> = indices.iter().map(|&i| &events[i]).collect();
                let oid = self.commit(config.as_ref(), env, &env_events, paths)?;
                span.record("conveyor.manifest.commit", oid.to_string().as_str());
                last = Some(oid);
            }
            let commit = last.expect("per_env is not empty").to_string();
            let mut carried: Vec<usize> = per_env.values().flat_map(|(indices, _)| indices.iter().copied()).collect();
            carried.sort_unstable();
            carried.dedup();
            let span = linked_span(parent, &carried, || {
                tracing::info_span!(
                    parent: parent(carried[0]),
                    "git.push",
                    otel.kind = "client",
                    otel.status_code = Empty,
                    otel.status_description = Empty,
                    vcs.repository.url.full = %self.cfg.url,
                    vcs.ref.head.name = %self.cfg.branch,
                    vcs.ref.head.revision = %commit,
                    conveyor.attempt = attempt,
                    conveyor.push.result = Empty,
                )
            });
            let _in_push = span.enter();
            match self.push() {
                Ok(()) => {
                    span.record("conveyor.push.result", "pushed");
                    for o in outcomes.iter_mut().filter(|o| o.writes()) {
                        o.committed_as(&commit);
                    }
                    return Ok(BatchOutcome { commit: Some(commit), changes, outcomes, attempts: attempt });
                }
                Err(PushFailure::Moved(reason)) if attempt < self.cfg.max_push_attempts => {
                    span.record("conveyor.push.result", "branch_moved");
                    tracing::warn!(attempt, %reason, "manifest branch moved; re-applying on the new head");
                    std::thread::sleep(waits.next().unwrap_or(Duration::from_secs(2)));
                }
                Err(PushFailure::Moved(_)) => {
                    span.record("conveyor.push.result", "gave_up");
                    span.record("otel.status_code", "ERROR");
                    // Leave the clone on the remote's state, not on our unpushed commit.
                    let _ = self.sync();
                    return Err(GitOpsError::PushContention {
                        url: self.cfg.url.clone(),
                        branch: self.cfg.branch.clone(),
                        attempts: attempt,
                    });
                }
                Err(PushFailure::Fatal(e)) => {
                    span.record("conveyor.push.result", "failed");
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", e.to_string().as_str());
                    let _ = self.sync();
                    return Err(e);
                }
            }
        }
    }

    /// The deployments of `app` (in `env`, or every environment), newest first, as of the last
    /// sync (from the in-memory index, not a walk of the history).
    pub fn deployments(&self, app: &str, env: Option<&str>, limit: usize) -> Vec<Deployment> {
        self.index.lock().expect("the deploy index lock is never held across a panic").deployments(app, env, limit)
    }

    /// Every app with a deployment, as of the last sync.
    pub fn deployed_apps(&self) -> Vec<String> {
        self.index.lock().expect("the deploy index lock is never held across a panic").apps()
    }

    /// The diff that applying `event` would commit on the current head, without committing:
    /// the edits are made in the warm clone, diffed, and reset.
    pub fn preview(&self, event: &ImageBuilt) -> Result<String, GitOpsError> {
        self.sync()?;
        let result = self.preview_edits(event);
        // Whatever happened, the clone goes back to the remote's head.
        self.sync()?;
        result
    }

    fn preview_edits(&self, event: &ImageBuilt) -> Result<String, GitOpsError> {
        let root = self.work_tree();
        let config = manifest_config::load(root).map_err(GitOpsError::Config)?;
        let placements = manifest_config::placements(config.as_ref(), root, event).map_err(GitOpsError::Config)?;
        for placement in placements.iter().filter(|p| p.held.is_none() || event.deploy.is_some()) {
            rewrite::rewrite_scope(root, &placement.scope, &plan::target_of(event, placement))?;
        }
        let diff = self.repo.diff_index_to_workdir(None, None)?;
        let mut text = String::new();
        diff.print(git2::DiffFormat::Patch, |_, _, line| {
            if matches!(line.origin(), '+' | '-' | ' ') {
                text.push(line.origin());
            }
            text.push_str(&String::from_utf8_lossy(line.content()));
            true
        })?;
        Ok(text)
    }

    fn commit(
        &self,
        config: Option<&ManifestConfig>,
        env: &str,
        events: &[&ImageBuilt],
        paths: &[String],
    ) -> Result<git2::Oid, GitOpsError> {
        let mut index = self.repo.index()?;
        let mut paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        paths.sort_unstable();
        paths.dedup();
        for p in &paths {
            index.add_path(Path::new(p))?;
        }
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let parent = self.repo.head()?.peel_to_commit()?;
        let sig = Signature::now(&self.cfg.author_name, &self.cfg.author_email)?;
        let message = commit_message(config, env, events, &paths);
        Ok(self.repo.commit(Some("HEAD"), &sig, &sig, &message, &tree, &[&parent])?)
    }

    fn push(&self) -> Result<(), PushFailure> {
        match local_remote_path(&self.cfg.url) {
            Some(path) => self.push_local(&path),
            None => self.push_refspec(&format!("refs/heads/{0}:refs/heads/{0}", self.cfg.branch)),
        }
    }

    /// libgit2's local transport overwrites the remote ref without comparing it to the value
    /// the push was based on, so a push by someone else in between would be lost. Instead: send
    /// the objects to a private ref, then move the branch with a compare-and-swap against the
    /// head this commit was built on, under the ref's lock (the same lock git takes).
    fn push_local(&self, remote_path: &Path) -> Result<(), PushFailure> {
        let fatal = |e: git2::Error| PushFailure::Fatal(e.into());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let incoming = format!("refs/conveyor/incoming/{}-{nanos}", std::process::id());
        self.push_refspec(&format!("+refs/heads/{}:{incoming}", self.cfg.branch))?;
        let remote = Repository::open_bare(remote_path).or_else(|_| Repository::open(remote_path)).map_err(fatal)?;
        let new = self.repo.refname_to_id(&format!("refs/heads/{}", self.cfg.branch)).map_err(fatal)?;
        let based_on = self.repo.refname_to_id(&self.remote_ref()).map_err(fatal)?;
        let branch = format!("refs/heads/{}", self.cfg.branch);
        let result = remote.reference_matching(&branch, new, true, based_on, "conveyor: deploy");
        if let Ok(mut r) = remote.find_reference(&incoming) {
            let _ = r.delete();
        }
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::Locked => {
                // Another writer holds the branch, or one died holding it: a replica killed by
                // SIGKILL in this very call leaves the lock behind in the remote, and then every
                // push would fail until a person removed it.
                remove_stale_remote_locks(remote.path(), &self.cfg.branch);
                Err(PushFailure::Moved(e.message().to_string()))
            }
            Err(e) if e.code() == ErrorCode::Modified => Err(PushFailure::Moved(e.message().to_string())),
            Err(e) => Err(fatal(e)),
        }
    }

    fn push_refspec(&self, refspec: &str) -> Result<(), PushFailure> {
        let mut remote = self.repo.find_remote("origin").map_err(|e| PushFailure::Fatal(e.into()))?;
        let rejection: std::cell::RefCell<Option<String>> = Default::default();
        let seen = Seen::default();
        let mut cbs = callbacks(&self.cfg.url, &self.cfg.auth, &seen);
        cbs.push_update_reference(|_refname, status| {
            if let Some(msg) = status {
                *rejection.borrow_mut() = Some(msg.to_string());
            }
            Ok(())
        });
        let mut opts = PushOptions::new();
        opts.remote_callbacks(cbs);
        let result = remote.push(&[refspec], Some(&mut opts));
        drop(opts);
        match result {
            Err(e) if e.code() == ErrorCode::NotFastForward => Err(PushFailure::Moved(e.message().to_string())),
            Err(e) => Err(PushFailure::Fatal(self.classify(&seen, e, GitOpsError::Git))),
            Ok(()) => match rejection.into_inner() {
                None => Ok(()),
                // The server refused the update: a concurrent push moved the branch (fetch first,
                // non-fast-forward), or a hook/protection refused it.
                Some(reason) if is_moved(&reason) => Err(PushFailure::Moved(reason)),
                Some(reason) => Err(PushFailure::Fatal(GitOpsError::PushRejected {
                    url: self.cfg.url.clone(),
                    branch: self.cfg.branch.clone(),
                    reason,
                })),
            },
        }
    }
}

/// A span made by `make` (a child of the first event it carries), linked to the spans of the
/// other events it carries.
fn linked_span<'a>(parent: impl Fn(usize) -> &'a tracing::Span, indices: &[usize], make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    let span = make();
    for &i in indices.iter().skip(1) {
        span.follows_from(parent(i));
    }
    span
}

enum PushFailure {
    Moved(String),
    Fatal(GitOpsError),
}

fn is_moved(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("fetch first")
        || r.contains("non-fast-forward")
        || r.contains("stale info")
        || r.contains("failed to update ref")
        || r.contains("failed to lock")
}

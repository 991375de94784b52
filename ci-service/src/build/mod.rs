//! One build, from a queued job to its end: checkout -> pipeline file -> build -> test -> smoke
//! (cancellable, each step under its own time limit) -> push -> publish (never cancelled once the
//! push started; each retried with a bounded backoff). Every step is recorded with its timing;
//! a failing step ends the build, so a red build never reaches the registry or the event stream.
//! The build is the `pipeline` span (continuing the trace of the request that queued it) with
//! one child span per step; a failing step marks its span and the pipeline's as errors, and the
//! published event carries the `publish` span's context to cd-service.

pub mod checkout;
pub mod context;
pub mod docker;
pub mod housekeeping;
pub mod smoke;
mod steps;

use steps::{prepare, release, Prepared};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use conveyor_telemetry::context as trace_context;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{field::Empty, Instrument};

use crate::{
    pipeline,
    queue::Job,
    records::{BuildRecord, BuildState, StepState},
    status::Phase,
    webhook::{skips_ci, PushRequest, RefKind},
    AppState,
};
use conveyor_proto::{ImageBuilt, ImageRef, SourceRef, EVENT_VERSION};
use docker::LogSink;

/// The 12-character short SHA every image is tagged with (unique enough across a repository's
/// history, and what users see in `git log --oneline`).
pub fn image_tag(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// The builds running in this replica, so that cancel notices reach them.
#[derive(Default)]
pub struct Running {
    builds: Mutex<HashMap<u64, Arc<RunningBuild>>>,
}

pub struct RunningBuild {
    token: CancellationToken,
    /// (the push has started, why it was cancelled)
    phase: Mutex<(bool, Option<String>)>,
}

impl RunningBuild {
    /// Cancels the build unless its image push has started; false if too late.
    pub fn try_cancel(&self, reason: String) -> bool {
        let mut phase = self.phase.lock().expect("phase lock is never poisoned");
        if phase.0 {
            return false;
        }
        phase.1.get_or_insert(reason);
        self.token.cancel();
        true
    }

    /// Enters the push phase (from then on no cancel); false if it was cancelled before.
    fn enter_release(&self) -> bool {
        let mut phase = self.phase.lock().expect("phase lock is never poisoned");
        if phase.1.is_some() {
            return false;
        }
        phase.0 = true;
        true
    }

    fn reason(&self) -> String {
        self.phase.lock().expect("phase lock is never poisoned").1.clone().unwrap_or_else(|| "cancelled".into())
    }
}

impl Running {
    fn register(&self, id: u64) -> Arc<RunningBuild> {
        let build = Arc::new(RunningBuild { token: CancellationToken::new(), phase: Mutex::new((false, None)) });
        self.builds.lock().expect("running lock is never poisoned").insert(id, build.clone());
        build
    }

    fn remove(&self, id: u64) {
        self.builds.lock().expect("running lock is never poisoned").remove(&id);
    }

    /// Whether no build runs in this replica.
    pub fn is_empty(&self) -> bool {
        self.builds.lock().expect("running lock is never poisoned").is_empty()
    }

    pub fn get(&self, id: u64) -> Option<Arc<RunningBuild>> {
        self.builds.lock().expect("running lock is never poisoned").get(&id).cloned()
    }
}

/// How a build ended early.
enum Stop {
    Failed(String),
    Cancelled(String),
    Skipped(String),
}

/// A build in progress: its record (written through to the shared store) and its log.
struct Ctx<'a> {
    state: &'a Arc<AppState>,
    rec: tokio::sync::Mutex<BuildRecord>,
    log: crate::logs::LogWriter,
}

impl LogSink for crate::logs::LogWriter {
    fn line(&self, text: &str) {
        crate::logs::LogWriter::line(self, text)
    }
}

impl Ctx<'_> {
    /// Stores a change of the record. A failed write is only logged: the next one writes the
    /// whole record, and the last one (`finish`) is retried.
    async fn update(&self, f: impl FnOnce(&mut BuildRecord)) {
        let mut rec = self.rec.lock().await;
        f(&mut rec);
        if let Err(e) = self.state.records.put(&rec).await {
            tracing::warn!(build.id = rec.id, error = %e, "could not store the build record");
        }
    }

    /// Stores the build's end. Nothing writes the record after this, and the worker acks the
    /// job once it returns: lost to a NATS outage, the record would say "running" for ever. So
    /// the write is retried, 1 s, 2 s, 4 s … 10 s apart, for up to `FINISH_PATIENCE`, while the
    /// worker keeps the job's lease.
    async fn finish(&self, state: BuildState, reason: Option<String>) {
        let mut rec = self.rec.lock().await;
        rec.finish(state, reason);
        let waits = ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .with_total_delay(Some(FINISH_PATIENCE));
        let id = rec.id;
        let stored = (|| self.state.records.put(&rec))
            .retry(waits)
            .notify(|e, wait| tracing::warn!(build.id = id, error = %e, retry_in = ?wait, "could not store the end of the build; retrying"))
            .await;
        if let Err(e) = stored {
            tracing::error!(build.id = id, error = %e, "gave up storing the end of the build: its record still says it runs");
        }
    }

    /// Runs a step in its own span: records start and end, counts its duration, turns its error
    /// into the build's failure reason (and the span's error).
    async fn step<T, E: std::fmt::Display>(
        &self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, Stop> {
        self.update(|r| r.step_started(name)).await;
        self.log.line(&format!("[conveyor] step {name}"));
        let span = tracing::info_span!(
            "step",
            otel.name = name,
            otel.kind = if name == "publish" { "producer" } else { "internal" },
            otel.status_code = Empty,
            otel.status_description = Empty,
            conveyor.step = name,
            container.image.name = Empty,
            container.image.tags = Empty,
            oci.manifest.digest = Empty,
            messaging.system = Empty,
            messaging.operation.type = Empty,
            messaging.destination.name = Empty,
            messaging.message.id = Empty,
        );
        let started = std::time::Instant::now();
        let result = fut.instrument(span.clone()).await;
        self.state.metrics.step(name, result.is_ok(), started.elapsed().as_secs_f64());
        let state = if result.is_ok() { StepState::Succeeded } else { StepState::Failed };
        self.update(|r| r.step_finished(name, state)).await;
        result.map_err(|e| {
            let reason = self.state.masker.mask(&e.to_string()).into_owned();
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", reason.as_str());
            span.in_scope(|| tracing::error!(error = %reason));
            Stop::Failed(format!("{name}: {reason}"))
        })
    }

    /// Runs `f` up to `step_attempts` times, waiting 1 s, 2 s, 4 s... between tries; each failed
    /// try is a line in the build log, an event on the step's span and a counted retry.
    async fn retry<T, E: std::fmt::Display, Fut: std::future::Future<Output = Result<T, E>>>(
        &self,
        what: &'static str,
        f: impl FnMut() -> Fut,
    ) -> Result<T, E> {
        let attempts = self.state.config.step_attempts.max(1);
        let waits = ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(32))
            .with_max_times(attempts.saturating_sub(1) as usize);
        let mut n = 0;
        f.retry(waits)
            .notify(|e, wait| {
                n += 1;
                let error = self.state.masker.mask(&e.to_string()).into_owned();
                self.log.line(&format!("[conveyor] {what} attempt {n} of {attempts} failed: {error}; retrying in {} s", wait.as_secs()));
                tracing::warn!(attempt = n, attempts, %error, retry_in_s = wait.as_secs(), "{what} failed; retrying");
                self.state.metrics.retried(what);
            })
            .await
    }
}

/// Runs one job to its end, in a span that continues the trace in the job's `headers`.
/// `attempt` is the queue's delivery count.
pub async fn run_job(state: Arc<AppState>, id: u64, job: Job, attempt: i64, headers: Option<&async_nats::HeaderMap>) {
    let (name, push) = match &job {
        Job::Build { push, .. } => ("pipeline", Some(push)),
        Job::Retry { .. } => ("retry", None),
    };
    let span = tracing::info_span!(
        "pipeline",
        otel.name = name,
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = crate::queue::STREAM,
        conveyor.build.id = id,
        conveyor.build.result = Empty,
        conveyor.attempt = attempt,
        conveyor.app = push.map(|p| p.app.as_str()),
        vcs.repository.url.full = push.map(|p| p.repo_url.as_str()),
        vcs.ref.head.name = push.map(|p| p.ref_name.as_str()),
        vcs.ref.head.revision = push.map(|p| p.commit.as_str()),
        trace_id = Empty,
    );
    trace_context::continue_from_nats(&span, headers, None);
    if let Some(t) = trace_context::trace_id(&span) {
        span.record("trace_id", t.as_str());
    }
    state.metrics.running.inc();
    match job {
        Job::Build { push, queued_at } => run_build(&state, id, push, queued_at, attempt).instrument(span).await,
        Job::Retry { build } => run_retry(&state, build).instrument(span).await,
    }
    state.metrics.running.dec();
}

async fn run_build(state: &Arc<AppState>, id: u64, push: PushRequest, queued_at: OffsetDateTime, attempt: i64) {
    let rec = match state.records.get(id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => BuildRecord::queued(id, &push, queued_at, None),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the build record; starting from the job");
            BuildRecord::queued(id, &push, queued_at, None)
        }
    };
    if rec.state.is_finished() {
        tracing::info!(state = ?rec.state, "build already ended (redelivered job)");
        return;
    }
    let ctx = Ctx { state, rec: tokio::sync::Mutex::new(rec), log: state.logs.writer(id, state.masker.clone()) };
    if state.config.cancel_superseded && supersedable(&push) {
        if let Some(newer) = newer_job_patiently(state, &push, id).await {
            end(ctx, BuildState::Cancelled, Some(format!("superseded by build {newer} of the same branch"))).await;
            return;
        }
        // The webhook noted this job as the branch's newest when it queued it; that can have
        // failed (NATS went away right after the job was stored), so note it before building.
        if let Err(e) = state.queue.note_head(&push, id).await {
            tracing::warn!(error = %e, "cannot note the newest job of the branch");
        }
    }
    let replica = state.replica.clone();
    let trace = take_over(&ctx, &replica).await.map(|t| format!(", trace {t}")).unwrap_or_default();
    ctx.log.line(&format!("[conveyor] build {id}: {} {} {} on {replica} (delivery {attempt}{trace})", push.app, push.git_ref, push.commit));
    tracing::info!(replica = %replica, "build started");
    report(state, id, &push, Phase::Running, None);

    let run = state.running.register(id);
    let prepared = tokio::select! {
        r = prepare(&ctx, id, &push) => r,
        _ = run.token.cancelled() => Err(Stop::Cancelled(run.reason())),
        _ = watch_for_newer(state, id, &push, &run) => Err(Stop::Cancelled(run.reason())),
    };
    let outcome = match prepared {
        // A pull request is built, tested and smoke-tested: nothing is pushed or published, and
        // its image leaves this engine with the build.
        Ok(p) if push.pull_request.is_some() => {
            housekeeping::remove_tags(&state.docker, p.tags.iter().map(|t| format!("{}:{t}", p.repository)).collect()).await;
            ctx.log.line("[conveyor] pull request build: not pushed, not published");
            Ok(())
        }
        Ok(p) if run.enter_release() => release(&ctx, &push, p).await,
        Ok(_) => Err(Stop::Cancelled(run.reason())),
        Err(stop) => Err(stop),
    };
    state.running.remove(id);
    let (state_, reason) = match outcome {
        Ok(()) => (BuildState::Succeeded, None),
        Err(Stop::Failed(r)) => (BuildState::Failed, Some(r)),
        Err(Stop::Cancelled(r)) => (BuildState::Cancelled, Some(r)),
        Err(Stop::Skipped(r)) => (BuildState::Skipped, Some(r)),
    };
    end(ctx, state_, reason).await;
}

/// Whether a newer push of the same ref cancels this build: branches and pull requests.
fn supersedable(push: &PushRequest) -> bool {
    matches!(push.ref_kind, RefKind::Branch | RefKind::PullRequest)
}

/// The newer job of the push's ref, if there is one. An unreadable queue or branch head (a NATS
/// node lost, its streams electing a new leader) is asked again, 1 s apart, for up to
/// `HEAD_PATIENCE`: read as "no newer push", it would let a delayed job of an older commit be
/// built, and deployed, after the newer one (its build starts later, and deploys follow build
/// start). Only a NATS away for longer builds without knowing (and then waits at publish).
async fn newer_job_patiently(state: &AppState, push: &PushRequest, id: u64) -> Option<u64> {
    let started = std::time::Instant::now();
    loop {
        match state.queue.newer_job(push, id).await {
            Ok(newer) => return newer,
            Err(e) if started.elapsed() < HEAD_PATIENCE => {
                tracing::warn!(error = %e, "cannot read whether a newer push of the branch was queued; asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read whether a newer push of the branch was queued; building anyway");
                return None;
            }
        }
    }
}

/// How long a build waits to learn whether a newer push supersedes it.
const HEAD_PATIENCE: Duration = Duration::from_secs(60);

/// Queues a commit status for the build (when its repository's forge gets them).
fn report(state: &AppState, id: u64, push: &PushRequest, phase: Phase, detail: Option<String>) {
    state.statuses.report(state, crate::status::Report { build_id: id, phase, push: push.clone(), detail });
}

/// Resolves once a newer push of the same branch is queued and this build was cancelled for it
/// (checked every second while the build can still be cancelled); never, if superseding is off.
async fn watch_for_newer(state: &AppState, id: u64, push: &PushRequest, run: &RunningBuild) {
    if !state.config.cancel_superseded || !supersedable(push) {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(SUPERSEDE_POLL).await;
        if let Ok(Some(newer)) = state.queue.newer_job(push, id).await {
            if run.try_cancel(format!("superseded by build {newer} of the same branch")) {
                tracing::info!(by = newer, "cancelling a superseded build");
                return;
            }
            // Too late (the push started): let the build finish.
            return std::future::pending().await;
        }
    }
}

/// How long the end of a build is retried into the records (NATS away).
const FINISH_PATIENCE: Duration = Duration::from_secs(300);

/// How often a running build looks for a newer push of its branch.
const SUPERSEDE_POLL: Duration = Duration::from_secs(1);

/// Marks the build running on this replica. If another replica ran it before and its job came
/// back (that replica died), the steps it left running are marked failed and the log says so.
/// Returns the trace this run belongs to (also written into the record).
async fn take_over(ctx: &Ctx<'_>, replica: &str) -> Option<String> {
    let mut interrupted = None;
    let trace_id = trace_context::trace_id(&tracing::Span::current());
    ctx.update(|r| {
        if trace_id.is_some() {
            r.trace_id = trace_id.clone();
        }
        if r.state == BuildState::Running {
            let running: Vec<String> = r.steps.iter().filter(|s| s.state == StepState::Running).map(|s| s.name.clone()).collect();
            for name in running {
                r.step_finished(&name, StepState::Failed);
            }
            interrupted = r.replica.clone();
        }
        r.state = BuildState::Running;
        r.started_at.get_or_insert_with(OffsetDateTime::now_utc);
        r.attempts += 1;
        r.replica = Some(replica.to_string());
    })
    .await;
    if let Some(previous) = interrupted {
        ctx.log.line(&format!("[conveyor] {previous} stopped during this build; starting it again"));
    }
    trace_id
}

/// Records the end of a build and closes its log.
async fn end(ctx: Ctx<'_>, state: BuildState, reason: Option<String>) {
    let reason = reason.map(|r| ctx.state.masker.mask(&r).into_owned());
    let word = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    match &reason {
        Some(r) => ctx.log.line(&format!("[conveyor] build {word}: {r}")),
        None => ctx.log.line(&format!("[conveyor] build {word}")),
    }
    let span = tracing::Span::current();
    span.record("conveyor.build.result", word.as_str());
    if state == BuildState::Failed {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", reason.as_deref().unwrap_or("failed"));
    }
    ctx.state.metrics.build_ended(&word);
    match state {
        BuildState::Succeeded => tracing::info!("build succeeded"),
        _ => tracing::warn!(state = %word, reason = reason.as_deref().unwrap_or(""), "build ended"),
    }
    ctx.finish(state, reason.clone()).await;
    ctx.log.close(&word).await;
    let rec = ctx.rec.lock().await;
    let detail = match state {
        BuildState::Succeeded => rec.repository.as_ref().zip(rec.tags.first()).map(|(r, t)| format!("{r}:{t}")),
        _ => reason,
    };
    report(ctx.state, rec.id, &rec.push, Phase::Ended(state), detail);
    // Older images of the app leave the engine (in the background: the build has ended).
    if rec.repository.is_some() {
        tokio::spawn(housekeeping::sweep(ctx.state.clone(), rec.push.app.clone()));
    }
}

/// Re-runs push and publish of a build whose push or publish failed, without rebuilding.
async fn run_retry(state: &Arc<AppState>, id: u64) {
    let rec = match state.records.get(id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return tracing::warn!("retry of an unknown build"),
        Err(e) => return tracing::warn!(error = %e, "cannot read the build record for a retry"),
    };
    // Running: the replica that took this retry before died (the job came back).
    if !matches!(rec.state, BuildState::Queued | BuildState::Running) {
        return tracing::info!(state = ?rec.state, "retry job for a build that already ended: nothing to do");
    }
    let push = rec.push.clone();
    let (Some(repository), false) = (rec.repository.clone(), rec.tags.is_empty()) else {
        return tracing::warn!("retry of a build that has no image");
    };
    let tags = rec.tags.clone();
    let ctx = Ctx { state, rec: tokio::sync::Mutex::new(rec), log: state.logs.writer(id, state.masker.clone()) };
    take_over(&ctx, &state.replica).await;
    report(state, id, &push, Phase::Running, None);
    ctx.log.line(&format!("[conveyor] retry of build {id}: push and publish of the image built before"));
    let image = format!("{repository}:{}", tags[0]);
    if let Err(e) = state.docker.inspect_image(&image).await {
        let reason = format!("the image {image} is no longer on this engine ({e}); start a new build with POST /builds");
        return end(ctx, BuildState::Failed, Some(reason)).await;
    }
    let p = Prepared { repository, tags, push_timeout: state.config.push_timeout(), commit: push.commit.clone() };
    let outcome = release(&ctx, &push, p).await;
    match outcome {
        Ok(()) => end(ctx, BuildState::Succeeded, None).await,
        Err(Stop::Failed(r) | Stop::Cancelled(r) | Stop::Skipped(r)) => end(ctx, BuildState::Failed, Some(r)).await,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a UTC timestamp always formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_tag_is_a_valid_short_sha() {
        let tag = super::image_tag("3f2a9c1d0e4b5a6978877665544332211aabbccd");
        assert_eq!(tag, "3f2a9c1d0e4b");
        assert!(conveyor_proto::validate::tag(&tag).is_ok());
    }
}

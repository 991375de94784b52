//! Replays: redeploying (or rolling back to) an image an earlier event deployed, chosen by stream
//! sequence, by tag, or as "previous" (one step back in the environment's history). A replay is
//! published as an event with a deploy intent (`rollback` or `redeploy`; into another
//! environment it is a promotion) and applied through the same queue as builds, past the
//! out-of-order guard. `dry_run` returns the diff instead of publishing anything.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::{gitops::ManifestRepo, manifest_config, trust::Trust};
use conveyor_api::ApiError;
use conveyor_proto::{
    app_events_filter, deploy_subject_for_app, stream::publish_event, subject_for_app, validate, DeployIntent, ImageBuilt, IntentKind,
    EVENTS_STREAM,
};

/// Which earlier deployment to go back (or forward) to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sequence(u64),
    Tag(String),
    Previous,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub app: String,
    pub target: Target,
    /// The environment whose history "previous" reads and that is redeployed.
    pub environment: Option<String>,
    /// Deploy into this environment instead (a promotion).
    pub into: Option<String>,
    pub requested_by: String,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown app {0:?}: it is not in conveyor.yaml and has no events in the stream")]
    UnknownApp(String),
    #[error("app {app} has no environment {env:?}")]
    UnknownEnvironment { app: String, env: String },
    #[error("app {app} has several environments ({envs}): say which one")]
    AmbiguousEnvironment { app: String, envs: String },
    #[error("no image-built event for {app}:{tag} in the stream (never built, or aged out){}", oldest_note(.oldest))]
    UnknownTag { app: String, tag: String, oldest: Option<(u64, String)> },
    #[error("stream sequence {seq} is out of range: the stream holds {first}..={last}")]
    OutOfRange { seq: u64, first: u64, last: u64 },
    #[error("{what} has aged out of the stream{}", oldest_note(.oldest))]
    AgedOut { what: String, oldest: Option<(u64, String)> },
    #[error("stream sequence {seq} is an event of app {other}, not {app}")]
    NotThisApp { seq: u64, app: String, other: String },
    #[error("{app} has no earlier deployment in {env} to go back to")]
    NothingBefore { app: String, env: String },
    #[error("{0}")]
    Untrusted(String),
    #[error("cannot read the event stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Repo(#[from] crate::gitops::GitOpsError),
    #[error(transparent)]
    Publish(#[from] conveyor_proto::stream::StreamError),
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        let (status, code) = match &e {
            ReplayError::Invalid(_) | ReplayError::AmbiguousEnvironment { .. } => (422, "invalid_request"),
            ReplayError::UnknownApp(_) => (404, "unknown_app"),
            ReplayError::UnknownEnvironment { .. } => (404, "unknown_environment"),
            ReplayError::UnknownTag { .. } => (404, "unknown_tag"),
            ReplayError::OutOfRange { .. } => (404, "sequence_out_of_range"),
            ReplayError::NotThisApp { .. } => (422, "other_app"),
            ReplayError::Untrusted(_) => (422, "untrusted_event"),
            ReplayError::AgedOut { .. } => (410, "aged_out"),
            ReplayError::NothingBefore { .. } => (409, "nothing_before"),
            ReplayError::Repo(_) => (503, "repo_unavailable"),
            ReplayError::Stream(_) | ReplayError::Publish(_) => (503, "stream_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn oldest_note(oldest: &Option<(u64, String)>) -> String {
    match oldest {
        Some((seq, image)) => format!("; the oldest replayable event is sequence {seq} ({image})"),
        None => "; nothing of this app is left in the stream".into(),
    }
}

fn stream_err(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Stream(e.to_string())
}

/// Every trusted event of `app` still in the stream (builds and intents), oldest first, with
/// its sequence. An event that fails [`Trust::check`] is left out (and logged): nothing found
/// here can deploy an image a verified build did not produce.
pub async fn app_events(js: &jetstream::Context, trust: &Trust, app: &str) -> Result<Vec<(u64, ImageBuilt)>, ReplayError> {
    let stream = js.get_stream(EVENTS_STREAM).await.map_err(stream_err)?;
    let mut any = false;
    for subject in [subject_for_app(app), deploy_subject_for_app(app)] {
        any |= stream.get_last_raw_message_by_subject(&subject).await.is_ok();
    }
    if !any {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: app_events_filter(app),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(stream_err)?;
    let mut messages = consumer.messages().await.map_err(stream_err)?;
    let mut out = Vec::new();
    loop {
        let next =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await.map_err(|_| stream_err("timed out reading the stream"))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(stream_err)?;
        let info = msg.info().map_err(stream_err)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if let Ok(event) = ImageBuilt::from_json(&msg.payload) {
            match trust.check(&msg.subject, msg.headers.as_ref(), &msg.payload, &event) {
                Ok(()) => out.push((seq, event)),
                Err(why) => tracing::warn!(sequence = seq, reason = %why, "untrusted event in the stream: not replayable"),
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The oldest build event of `app` still in the stream, as (sequence, image).
fn oldest(events: &[(u64, ImageBuilt)]) -> Option<(u64, String)> {
    events.iter().find(|(_, e)| e.deploy.is_none()).map(|(s, e)| (*s, e.image.reference()))
}

/// What a replay will do, or did (the API's answer).
pub use conveyor_api::cd::ReplayPlan as Plan;

/// Resolves the request against the stream and the manifest repository, then publishes the
/// replay (or, for a dry run, computes its diff).
pub async fn replay(js: &jetstream::Context, trust: &Trust, repo: &Mutex<ManifestRepo>, req: Request) -> Result<Plan, ReplayError> {
    validate::app_name(&req.app).map_err(|e| ReplayError::Invalid(e.to_string()))?;
    if req.requested_by.trim().is_empty() {
        return Err(ReplayError::Invalid("requested_by must not be empty".into()));
    }
    let events = app_events(js, trust, &req.app).await?;
    let (env, deployments) = {
        let repo = repo.lock().await;
        let env = environment(&repo, &req, !events.is_empty())?;
        tokio::task::block_in_place(|| repo.sync())?;
        let deployments = repo.deployments(&req.app, Some(&env), 100);
        (env, deployments)
    };
    let (of_sequence, original) = match &req.target {
        Target::Sequence(seq) => by_sequence(js, trust, &req.app, *seq, &events).await?,
        Target::Tag(tag) => events
            .iter()
            .rev()
            .find(|(_, e)| e.image.tag == *tag && e.deploy.is_none())
            .cloned()
            .ok_or_else(|| ReplayError::UnknownTag { app: req.app.clone(), tag: tag.clone(), oldest: oldest(&events) })?,
        Target::Previous => {
            let current = deployments.first().ok_or_else(|| ReplayError::NothingBefore { app: req.app.clone(), env: env.clone() })?;
            let before = deployments
                .iter()
                .find(|d| d.tag != current.tag || d.digest != current.digest)
                .ok_or_else(|| ReplayError::NothingBefore { app: req.app.clone(), env: env.clone() })?;
            events.iter().rev().find(|(_, e)| e.image.tag == before.tag && e.image.digest == before.digest).cloned().ok_or_else(|| {
                ReplayError::AgedOut {
                    what: format!("the event of {} (deployed by {})", before.image, before.event_id),
                    oldest: oldest(&events),
                }
            })?
        }
    };
    let into = req.into.clone().filter(|i| *i != env);
    let kind = match (&into, deployments.first().and_then(|d| d.build_started_at)) {
        (Some(_), _) => IntentKind::Promotion,
        (None, Some(current)) if original.build_started_at < current => IntentKind::Rollback,
        (None, _) => IntentKind::Redeploy,
    };
    let target_env = into.unwrap_or(env);
    if let Some(i) = &req.into {
        validate::environment(i).map_err(|e| ReplayError::Invalid(e.to_string()))?;
    }
    let mut event = original.clone();
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    event.event_id = format!("replay-{target_env}-{}-{}-{nanos}", event.app, event.image.tag);
    event.deploy = Some(DeployIntent {
        kind,
        environment: target_env.clone(),
        requested_by: req.requested_by.clone(),
        of_event: original.event_id.clone(),
        of_sequence: Some(of_sequence),
        of_traceparent: original.traceparent.clone(),
    });
    // The replay's own trace (this request's), linked to the original build's.
    let span = tracing::Span::current();
    event.traceparent = conveyor_telemetry::context::traceparent(&span);
    if let Some(tp) = &original.traceparent {
        conveyor_telemetry::context::link_to(&span, tp);
    }
    let mut plan = Plan {
        app: req.app.clone(),
        environment: target_env,
        kind,
        image: event.image.reference(),
        digest: event.image.digest.clone(),
        of_event: original.event_id.clone(),
        of_sequence,
        event_id: None,
        sequence: None,
        diff: None,
        trace_id: None,
    };
    if req.dry_run {
        let repo = repo.lock().await;
        plan.diff = Some(tokio::task::block_in_place(|| repo.preview(&event))?);
        return Ok(plan);
    }
    let (sequence, _) = publish_event(js, &event, trust.signer()).await?;
    plan.event_id = Some(event.event_id);
    plan.sequence = Some(sequence);
    Ok(plan)
}

/// The environment the request is about: given (and known), or the app's only one.
fn environment(repo: &ManifestRepo, req: &Request, has_events: bool) -> Result<String, ReplayError> {
    let config = manifest_config::load(repo.work_tree()).map_err(ReplayError::Invalid)?;
    let Some(config) = config else {
        if !has_events {
            return Err(ReplayError::UnknownApp(req.app.clone()));
        }
        return match req.environment.as_deref() {
            None | Some(manifest_config::DEFAULT_ENV) => Ok(manifest_config::DEFAULT_ENV.to_string()),
            Some(other) => Err(ReplayError::UnknownEnvironment { app: req.app.clone(), env: other.to_string() }),
        };
    };
    let app = config.apps.get(&req.app).ok_or_else(|| ReplayError::UnknownApp(req.app.clone()))?;
    for env in req.environment.iter().chain(req.into.iter()) {
        if !app.environments.contains_key(env) {
            return Err(ReplayError::UnknownEnvironment { app: req.app.clone(), env: env.clone() });
        }
    }
    match &req.environment {
        Some(env) => Ok(env.clone()),
        None if app.environments.len() == 1 => Ok(app.environments.keys().next().expect("one environment").clone()),
        None => Err(ReplayError::AmbiguousEnvironment {
            app: req.app.clone(),
            envs: app.environments.keys().cloned().collect::<Vec<_>>().join(", "),
        }),
    }
}

async fn by_sequence(
    js: &jetstream::Context,
    trust: &Trust,
    app: &str,
    seq: u64,
    events: &[(u64, ImageBuilt)],
) -> Result<(u64, ImageBuilt), ReplayError> {
    let mut stream = js.get_stream(EVENTS_STREAM).await.map_err(stream_err)?;
    let state = stream.info().await.map_err(stream_err)?.state.clone();
    if seq == 0 || seq > state.last_sequence {
        return Err(ReplayError::OutOfRange { seq, first: state.first_sequence, last: state.last_sequence });
    }
    let aged = || ReplayError::AgedOut { what: format!("stream sequence {seq}"), oldest: oldest(events) };
    if seq < state.first_sequence {
        return Err(aged());
    }
    let msg = match stream.get_raw_message(seq).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Err(aged()),
        Err(e) => return Err(stream_err(e)),
    };
    let event = ImageBuilt::from_json(&msg.payload)
        .map_err(|e| ReplayError::Invalid(format!("stream sequence {seq} is not a valid image-built event: {e}")))?;
    if event.app != app {
        return Err(ReplayError::NotThisApp { seq, app: app.to_string(), other: event.app });
    }
    trust
        .check(&msg.subject, Some(&msg.headers), &msg.payload, &event)
        .map_err(|why| ReplayError::Untrusted(format!("stream sequence {seq} cannot be replayed: {why}")))?;
    Ok((seq, event))
}

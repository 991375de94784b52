//! Promotion: deploying an image that was already built to one environment, whatever its
//! policy (how `manual` environments such as production move). The image is looked up among the
//! app's image-built events in the stream; the promotion is published as an event with a
//! deploy intent and applied through the same queue as builds, so it is ordered, acked after
//! the push and recorded in the commit (`Conveyor-Promotion`). Only an image of a verified build
//! event can be promoted; the promotion is signed with cd-service's key.

use async_nats::jetstream;
use time::OffsetDateTime;

use crate::trust::Trust;
use conveyor_proto::{stream::publish_event, validate, DeployIntent, ImageBuilt, IntentKind};

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("{0}")]
    Invalid(String),
    #[error("no image-built event for {app}:{tag} in the stream (never built, or aged out)")]
    UnknownTag { app: String, tag: String },
    #[error("cannot read the event stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Publish(#[from] conveyor_proto::stream::StreamError),
}

impl From<PromoteError> for conveyor_api::ApiError {
    fn from(e: PromoteError) -> Self {
        let (status, code) = match &e {
            PromoteError::Invalid(_) => (422, "invalid_request"),
            PromoteError::UnknownTag { .. } => (404, "unknown_tag"),
            PromoteError::Stream(_) | PromoteError::Publish(_) => (503, "stream_unavailable"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// The newest verified image-built event (not a promotion) of `app` with `tag`.
pub async fn find_build(js: &jetstream::Context, trust: &Trust, app: &str, tag: &str) -> Result<ImageBuilt, PromoteError> {
    let events = crate::replay::app_events(js, trust, app).await.map_err(|e| PromoteError::Stream(e.to_string()))?;
    events
        .into_iter()
        .rev()
        .find(|(_, e)| e.image.tag == tag && e.deploy.is_none())
        .map(|(_, e)| e)
        .ok_or_else(|| PromoteError::UnknownTag { app: app.to_string(), tag: tag.to_string() })
}

/// Publishes a promotion of `app:tag` to `environment`; returns the stream sequence and the event.
pub async fn promote(
    js: &jetstream::Context,
    trust: &Trust,
    app: &str,
    environment: &str,
    tag: &str,
    requested_by: &str,
) -> Result<(u64, ImageBuilt), PromoteError> {
    validate::app_name(app).map_err(|e| PromoteError::Invalid(e.to_string()))?;
    validate::environment(environment).map_err(|e| PromoteError::Invalid(e.to_string()))?;
    validate::tag(tag).map_err(|e| PromoteError::Invalid(e.to_string()))?;
    if requested_by.trim().is_empty() {
        return Err(PromoteError::Invalid("requested_by must not be empty".into()));
    }
    let build = find_build(js, trust, app, tag).await?;
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut event = build.clone();
    event.event_id = format!("promote-{environment}-{app}-{tag}-{nanos}");
    event.deploy = Some(DeployIntent {
        kind: IntentKind::Promotion,
        environment: environment.to_string(),
        requested_by: requested_by.to_string(),
        of_event: build.event_id.clone(),
        of_sequence: None,
        of_traceparent: build.traceparent.clone(),
    });
    // The promotion's own trace (this request's), linked to the build's.
    let span = tracing::Span::current();
    event.traceparent = conveyor_telemetry::context::traceparent(&span);
    if let Some(tp) = &build.traceparent {
        conveyor_telemetry::context::link_to(&span, tp);
    }
    let (sequence, _) = publish_event(js, &event, trust.signer()).await?;
    Ok((sequence, event))
}

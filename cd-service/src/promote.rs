//! Promotion: deploying an image that was already built to one environment, whatever its
//! policy (how `manual` environments such as production move). The image is looked up among the
//! app's image-built events in the stream; the promotion is published as an event with a
//! deploy intent and applied through the same queue as builds, so it is ordered, acked after
//! the push and recorded in the commit (`Conveyor-Promotion`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use time::OffsetDateTime;

use conveyor_proto::{stream::publish_event, subject_for_app, validate, DeployIntent, ImageBuilt, IntentKind, EVENTS_STREAM};

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

/// The newest image-built event (not a promotion) of `app` with `tag`.
pub async fn find_build(js: &jetstream::Context, app: &str, tag: &str) -> Result<ImageBuilt, PromoteError> {
    let err = |e: String| PromoteError::Stream(e);
    let stream = js.get_stream(EVENTS_STREAM).await.map_err(|e| err(e.to_string()))?;
    let subject = subject_for_app(app);
    if stream.get_last_raw_message_by_subject(&subject).await.is_err() {
        return Err(PromoteError::UnknownTag { app: app.to_string(), tag: tag.to_string() });
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    let mut found = None;
    loop {
        let next =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await.map_err(|_| err("timed out reading the stream".into()))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| err(e.to_string()))?;
        if let Ok(event) = ImageBuilt::from_json(&msg.payload) {
            if event.image.tag == tag && event.deploy.is_none() {
                found = Some(event);
            }
        }
        if msg.info().map(|i| i.pending == 0).unwrap_or(true) {
            break;
        }
    }
    found.ok_or_else(|| PromoteError::UnknownTag { app: app.to_string(), tag: tag.to_string() })
}

/// Publishes a promotion of `app:tag` to `environment`; returns the stream sequence and the event.
pub async fn promote(
    js: &jetstream::Context,
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
    let build = find_build(js, app, tag).await?;
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut event = build.clone();
    event.event_id = format!("promote-{environment}-{app}-{tag}-{nanos}");
    event.deploy = Some(DeployIntent {
        kind: IntentKind::Promotion,
        environment: environment.to_string(),
        requested_by: requested_by.to_string(),
        of_event: build.event_id.clone(),
    });
    let (sequence, _) = publish_event(js, &event).await?;
    Ok((sequence, event))
}

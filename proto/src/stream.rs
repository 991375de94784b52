//! The JetStream stream of image-built events: its definition, identical for both services so
//! that whichever starts first creates it and the other finds the same one, and how to open it.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType, Stream},
};

/// Why the event stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("no answer from NATS at {url} within {secs} s (is JetStream enabled, `nats-server -js`?)")]
    Timeout { url: String, secs: u64 },
    #[error("cannot create or open the event stream: {0}")]
    Stream(String),
    #[error("refusing to publish an invalid event: {0}")]
    Invalid(#[from] crate::ValidationError),
    #[error("publish to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("publish to {subject} was not acknowledged within {secs} s")]
    AckTimeout { subject: String, secs: u64 },
}

const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes an event on its app's subject with the contract's headers (`Nats-Msg-Id`,
/// content type, event version, `traceparent`) and waits for the stream's ack; returns the
/// stream sequence and whether the stream had it already (de-duplicated).
pub async fn publish_event(js: &jetstream::Context, event: &crate::ImageBuilt) -> Result<(u64, bool), StreamError> {
    use crate::headers;
    let payload = event.to_json()?;
    let subject = crate::subject_for_app(&event.app);
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, event.dedup_id().as_str());
    h.insert(headers::CONTENT_TYPE, "application/json");
    h.insert(headers::EVENT_VERSION, crate::EVENT_VERSION.to_string().as_str());
    if let Some(tp) = &event.traceparent {
        h.insert(headers::TRACEPARENT, tp.as_str());
    }
    let err = |message: String| StreamError::Publish { subject: subject.clone(), message };
    let ack = async {
        let fut = js.publish_with_headers(subject.clone(), h, payload.into()).await.map_err(|e| err(e.to_string()))?;
        fut.await.map_err(|e| err(e.to_string()))
    };
    let ack = tokio::time::timeout(ACK_TIMEOUT, ack)
        .await
        .map_err(|_| StreamError::AckTimeout { subject: subject.clone(), secs: ACK_TIMEOUT.as_secs() })??;
    Ok((ack.sequence, ack.duplicate))
}

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects (retrying while the server is not up yet, within 30 s) and creates the event stream
/// if it does not exist, keeping at most `max_messages` events no older than `max_age` (zero:
/// no age limit). An existing stream keeps its own limits.
pub async fn open_events_stream(
    url: &str,
    client_name: &str,
    max_messages: i64,
    max_age: Duration,
) -> Result<(jetstream::Context, Stream), StreamError> {
    let timeout = || StreamError::Timeout { url: url.to_string(), secs: OPEN_TIMEOUT.as_secs() };
    let client =
        tokio::time::timeout(OPEN_TIMEOUT, async_nats::ConnectOptions::new().name(client_name).retry_on_initial_connect().connect(url))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| StreamError::Connect { url: url.to_string(), message: e.to_string() })?;
    let js = jetstream::new(client);
    let stream = tokio::time::timeout(OPEN_TIMEOUT, js.get_or_create_stream(events_stream_config(max_messages, max_age)))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| StreamError::Stream(e.to_string()))?;
    Ok((js, stream))
}

use crate::names::{DEADLETTER_STREAM, DEADLETTER_SUBJECT, EVENTS_STREAM, EVENTS_SUBJECT_WILDCARD};

/// Limits retention: events are kept after they are consumed, so that old ones can be replayed
/// (a replay of an old event is a rollback). `max_age` of zero keeps events until `max_messages`
/// pushes the oldest out.
pub fn events_stream_config(max_messages: i64, max_age: Duration) -> Config {
    Config {
        name: EVENTS_STREAM.to_string(),
        subjects: vec![EVENTS_SUBJECT_WILDCARD.to_string()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        max_messages,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The dead-letter stream: limits retention, one subject.
pub fn deadletter_stream_config(max_messages: i64) -> Config {
    Config {
        name: DEADLETTER_STREAM.to_string(),
        subjects: vec![DEADLETTER_SUBJECT.to_string()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        max_messages,
        ..Default::default()
    }
}

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
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("no answer from NATS at {url} within {secs} s (is JetStream enabled, `nats-server -js`?){refused}")]
    Timeout { url: String, secs: u64, refused: String },
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

/// Publishes an event on its subject ([`crate::ImageBuilt::subject`]) with the contract's headers
/// (`Nats-Msg-Id`, content type, event version, `traceparent`) and `signer`'s signature, and
/// waits for the stream's ack; returns the stream sequence and whether the stream had it
/// already (de-duplicated).
pub async fn publish_event(
    js: &jetstream::Context,
    event: &crate::ImageBuilt,
    signer: &crate::signing::EventSigner,
) -> Result<(u64, bool), StreamError> {
    use crate::headers;
    let payload = event.to_json()?;
    let subject = event.subject();
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in signer.headers(&subject, &payload) {
        h.insert(name, value.as_str());
    }
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

/// Opens `config`'s stream, creating it with `replicas` replicas (0 counts as 1). An existing
/// stream with another replica count is refused ([`check_replicas`]): a stream is never silently
/// used at another durability than the service was told.
pub async fn ensure_stream(js: &jetstream::Context, mut config: Config, replicas: u8) -> Result<Stream, String> {
    config.num_replicas = usize::from(replicas.max(1));
    let stream = create_or_open(js, config).await.map_err(|e| e.to_string())?;
    check_replicas(&stream, replicas)?;
    Ok(stream)
}

/// `get_or_create_stream`, retried for up to 30 s while JetStream does not answer in time or has
/// no leader yet: replicas starting together on a cluster create the same streams at once, and a
/// replicated create can outlast one request's time-out.
pub async fn create_or_open(js: &jetstream::Context, config: Config) -> Result<Stream, jetstream::context::CreateStreamError> {
    use jetstream::context::CreateStreamErrorKind as Kind;
    let deadline = std::time::Instant::now() + OPEN_TIMEOUT;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Err(e) if matches!(e.kind(), Kind::TimedOut | Kind::JetStreamUnavailable) && std::time::Instant::now() < deadline => {
                tracing::warn!(stream = %config.name, error = %e, "JetStream did not answer the stream create in time; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Refuses a stream whose replica count is not `replicas`, naming both and what to change.
pub fn check_replicas(stream: &Stream, replicas: u8) -> Result<(), String> {
    let want = usize::from(replicas.max(1));
    let info = stream.cached_info();
    let have = info.config.num_replicas.max(1);
    if have == want {
        return Ok(());
    }
    Err(format!(
        "the stream {name} has {have} replica(s), not the {want} of --stream-replicas / CONVEYOR_STREAM_REPLICAS: \
         set it to {have}, or move the stream (`nats stream edit {name} --replicas {want}`)",
        name = info.config.name
    ))
}

/// An open event stream and the connection it came through.
pub struct EventsStream {
    pub js: jetstream::Context,
    pub stream: Stream,
    /// What NATS refused on this connection (permissions), for naming a failure's cause.
    pub refusals: std::sync::Arc<crate::connect::Refusals>,
}

/// Connects with `nats`'s credentials (retrying while the server is not up yet, within 30 s)
/// and creates the event stream if it does not exist, keeping at most `max_messages` events no
/// older than `max_age` (zero: no age limit). An existing stream keeps its own limits; one made
/// before promotions had their own subject gets that subject added when `add_subjects` (the
/// deploy side, whose credentials may update the stream).
pub async fn open_events_stream(
    nats: &crate::connect::NatsArgs,
    client_name: &str,
    max_messages: i64,
    max_age: Duration,
    add_subjects: bool,
) -> Result<EventsStream, StreamError> {
    let conn = crate::connect::connect(nats, client_name, OPEN_TIMEOUT).await?;
    let refusals = conn.refusals.clone();
    let timeout = || StreamError::Timeout { url: nats.url.clone(), secs: OPEN_TIMEOUT.as_secs(), refused: refusals.suffix() };
    let js = jetstream::new(conn.client);
    let config = events_stream_config(max_messages, max_age);
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT + Duration::from_secs(5), ensure_stream(&js, config.clone(), nats.stream_replicas))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| StreamError::Stream(format!("{e}{}", refusals.suffix())))?;
    let existing = stream.cached_info().config.clone();
    if existing.subjects != config.subjects {
        if !add_subjects {
            return Err(StreamError::Stream(format!(
                "the stream {EVENTS_STREAM} has the subjects {:?}, not {:?}: start cd-service (which updates it) first",
                existing.subjects, config.subjects
            )));
        }
        // A stream made before promotions had their own subject holds `conveyor.images.built.>`.
        let mut updated = existing.clone();
        updated.subjects = config.subjects.clone();
        tracing::warn!(stream = EVENTS_STREAM, subjects = ?updated.subjects, "adding the promotion subject to an existing event stream");
        tokio::time::timeout(OPEN_TIMEOUT, js.update_stream(updated))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| StreamError::Stream(format!("cannot add the promotion subject: {e}{}", refusals.suffix())))?;
        stream = js.get_stream(EVENTS_STREAM).await.map_err(|e| StreamError::Stream(e.to_string()))?;
    }
    Ok(EventsStream { js, stream, refusals })
}

use crate::names::{DEADLETTER_STREAM, DEADLETTER_SUBJECT, EVENTS_CONSUMER_FILTER, EVENTS_STREAM};

/// Limits retention: events are kept after they are consumed, so that old ones can be replayed
/// (a replay of an old event is a rollback). `max_age` of zero keeps events until `max_messages`
/// pushes the oldest out.
pub fn events_stream_config(max_messages: i64, max_age: Duration) -> Config {
    Config {
        name: EVENTS_STREAM.to_string(),
        // One subject for builds and intents: nats-server 2.9 refuses a consumer filter (such as
        // one app's `conveyor.images.*.<app>`) that spans two stream subjects.
        subjects: vec![EVENTS_CONSUMER_FILTER.to_string()],
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

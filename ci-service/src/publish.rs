//! Publishing image-built events on JetStream: one subject per app, `Nats-Msg-Id` for
//! de-duplication, and success only once the stream acknowledged the write.

use std::time::Duration;

use async_nats::{jetstream, HeaderMap};
use conveyor_proto::{headers, stream::events_stream_config, subject_for_app, ImageBuilt, EVENT_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot create or open the event stream: {0}")]
    Stream(String),
    #[error("refusing to publish an invalid event: {0}")]
    Invalid(#[from] conveyor_proto::ValidationError),
    #[error("publish to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("publish to {subject} was not acknowledged within {secs} s")]
    AckTimeout { subject: String, secs: u64 },
}

const ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// Connects and makes sure the event stream exists.
    pub async fn connect(url: &str, stream_max_messages: i64) -> Result<Self, PublishError> {
        let client = async_nats::ConnectOptions::new()
            .name("conveyor-ci-service")
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| PublishError::Connect { url: url.to_string(), message: e.to_string() })?;
        let js = jetstream::new(client);
        tokio::time::timeout(Duration::from_secs(30), js.get_or_create_stream(events_stream_config(stream_max_messages, Duration::ZERO)))
            .await
            .map_err(|_| PublishError::Stream(format!("no answer from NATS at {url} within 30 s (is JetStream enabled?)")))?
            .map_err(|e| PublishError::Stream(e.to_string()))?;
        Ok(Self { js })
    }

    /// Publishes the event and waits for the stream's ack; returns the stream sequence.
    pub async fn publish(&self, event: &ImageBuilt) -> Result<u64, PublishError> {
        let payload = event.to_json()?;
        let subject = subject_for_app(&event.app);
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, event.dedup_id().as_str());
        h.insert(headers::CONTENT_TYPE, "application/json");
        h.insert(headers::EVENT_VERSION, EVENT_VERSION.to_string().as_str());
        if let Some(tp) = &event.traceparent {
            h.insert(headers::TRACEPARENT, tp.as_str());
        }
        let err = |message: String| PublishError::Publish { subject: subject.clone(), message };
        let ack = async {
            let fut = self.js.publish_with_headers(subject.clone(), h, payload.into()).await.map_err(|e| err(e.to_string()))?;
            fut.await.map_err(|e| err(e.to_string()))
        };
        let ack = tokio::time::timeout(ACK_TIMEOUT, ack)
            .await
            .map_err(|_| PublishError::AckTimeout { subject: subject.clone(), secs: ACK_TIMEOUT.as_secs() })??;
        if ack.duplicate {
            tracing::info!(%subject, sequence = ack.sequence, "event was already in the stream (de-duplicated)");
        }
        Ok(ack.sequence)
    }
}

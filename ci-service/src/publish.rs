//! Publishing image-built events on JetStream: one subject per app, `Nats-Msg-Id` for
//! de-duplication, and success only once the stream acknowledged the write.

use std::time::Duration;

use async_nats::{jetstream, HeaderMap};
use conveyor_proto::{headers, stream::open_events_stream, subject_for_app, ImageBuilt, EVENT_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Open(#[from] conveyor_proto::stream::StreamError),
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
        let (js, _stream) = open_events_stream(url, "conveyor-ci-service", stream_max_messages).await?;
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

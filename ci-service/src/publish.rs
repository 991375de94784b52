//! Publishing image-built events on JetStream: one subject per app, signed with ci-service's
//! Ed25519 key (cd-service applies nothing else), `Nats-Msg-Id` for de-duplication, and success
//! only once the stream acknowledged the write.

use async_nats::jetstream;
use conveyor_proto::{signing::EventSigner, stream::publish_event, ImageBuilt};

pub use conveyor_proto::stream::StreamError as PublishError;

pub struct Publisher {
    js: jetstream::Context,
    signer: EventSigner,
}

impl Publisher {
    pub fn new(js: jetstream::Context, signer: EventSigner) -> Self {
        Self { js, signer }
    }

    /// Publishes the signed event and waits for the stream's ack; returns the stream sequence.
    pub async fn publish(&self, event: &ImageBuilt) -> Result<u64, PublishError> {
        let (sequence, duplicate) = publish_event(&self.js, event, &self.signer).await?;
        if duplicate {
            tracing::info!(sequence, "event was already in the stream (de-duplicated)");
        }
        Ok(sequence)
    }
}

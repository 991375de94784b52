//! The durable JetStream consumer: validates each image-built event, applies it to the manifest
//! repository and acks only once the commit is on the remote (or nothing needed committing).
//! Invalid events are terminated with the reason logged; transient failures are nak'ed with a
//! growing delay; the loop itself never stops on bad input.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull, AckKind, Message};
use futures::StreamExt;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::gitops::{Applied, ManifestRepo};
use conveyor_proto::{stream::open_events_stream, ImageBuilt, EVENTS_SUBJECT_WILDCARD};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Open(#[from] conveyor_proto::stream::StreamError),
    #[error("cannot open the durable consumer: {0}")]
    Setup(String),
}

/// What happened to one message (logged, and returned for tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed { commit: String },
    AlreadyCurrent,
    Pinned,
    Invalid(String),
    Failed { permanent: bool, reason: String },
}

pub async fn open_consumer(url: &str, durable: &str, ack_wait: Duration, max_messages: i64) -> Result<pull::Stream, ConsumeError> {
    let (_js, stream) = open_events_stream(url, "conveyor-cd-service", max_messages).await?;
    let setup = |e: String| ConsumeError::Setup(e);
    let consumer = stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.to_string()),
                filter_subject: EVENTS_SUBJECT_WILDCARD.to_string(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                // One event in flight per consumer: events for an app are applied in stream order.
                max_ack_pending: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup(e.to_string()))?;
    consumer.messages().await.map_err(|e| setup(e.to_string()))
}

/// Handles one message: apply, then ack / nak / term.
pub async fn handle(repo: &Arc<Mutex<ManifestRepo>>, msg: &Message) -> Outcome {
    let (sequence, delivered) = msg.info().map(|i| (i.stream_sequence, i.delivered)).unwrap_or((0, 1));
    let event = match ImageBuilt::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(sequence, subject = %msg.subject, error = %e, "invalid event: terminated, nothing written");
            ack(msg, AckKind::Term).await;
            return Outcome::Invalid(e.to_string());
        }
    };
    let span = tracing::info_span!("apply", sequence, app = %event.app, tag = %event.image.tag, event.id = %event.event_id);
    apply(repo, msg, event, delivered).instrument(span).await
}

async fn apply(repo: &Arc<Mutex<ManifestRepo>>, msg: &Message, event: ImageBuilt, delivered: i64) -> Outcome {
    let repo = repo.clone();
    let applied = {
        let ev = event.clone();
        let guard = repo.lock_owned().await;
        tokio::task::spawn_blocking(move || guard.apply(&ev)).await
    };
    match applied {
        Ok(Ok(Applied::Committed { commit, changes, attempts })) => {
            let files: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
            tracing::info!(%commit, ?files, attempts, image = %event.image.reference(), "manifest commit pushed");
            // Wait for the server to confirm the ack: the commit is pushed, so a redelivery would
            // only find the tag current, but a confirmed ack keeps the log honest.
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; a redelivery will find the tag current");
            }
            Outcome::Committed { commit }
        }
        Ok(Ok(Applied::Pinned { locations })) => {
            tracing::warn!(image = %event.image.reference(), ?locations, "references are pinned (conveyor:pin): not updated");
            ack(msg, AckKind::Ack).await;
            Outcome::Pinned
        }
        Ok(Ok(Applied::AlreadyCurrent)) => {
            tracing::info!(image = %event.image.reference(), "tag already current: no commit");
            ack(msg, AckKind::Ack).await;
            Outcome::AlreadyCurrent
        }
        Ok(Err(e)) if e.is_permanent() => {
            tracing::error!(error = %e, "event cannot be applied: terminated");
            ack(msg, AckKind::Term).await;
            Outcome::Failed { permanent: true, reason: e.to_string() }
        }
        Ok(Err(e)) => {
            let delay = redelivery_delay(delivered);
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "applying failed; handed back for redelivery");
            ack(msg, AckKind::Nak(Some(delay))).await;
            Outcome::Failed { permanent: false, reason: e.to_string() }
        }
        Err(join) => {
            tracing::error!(error = %join, "apply task panicked; handed back for redelivery");
            ack(msg, AckKind::Nak(Some(redelivery_delay(delivered)))).await;
            Outcome::Failed { permanent: false, reason: join.to_string() }
        }
    }
}

async fn ack(msg: &Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "could not send ack; JetStream will redeliver after ack_wait");
    }
}

/// 1 s, 2 s, 4 s ... capped at 60 s.
fn redelivery_delay(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 7) as u32 - 1;
    Duration::from_secs((1u64 << exp).min(60))
}

/// Pulls and handles events until `shutdown` resolves; the event in progress is finished first.
pub async fn run(repo: Arc<Mutex<ManifestRepo>>, mut messages: pull::Stream, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            _ = &mut shutdown => break,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(msg)) => {
                handle(&repo, &msg).await;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                tracing::error!("the consumer's message stream ended");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redelivery_delay_grows_and_is_capped() {
        use std::time::Duration;
        assert_eq!(super::redelivery_delay(1), Duration::from_secs(1));
        assert_eq!(super::redelivery_delay(3), Duration::from_secs(4));
        assert_eq!(super::redelivery_delay(100), Duration::from_secs(60));
    }
}

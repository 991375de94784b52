//! The durable JetStream consumer: takes the events that are pending together (bounded batch
//! size and wait), validates them and checks their signatures ([`crate::trust`]), applies them to the manifest repository in one commit and
//! acks each only once that commit is on the remote (or its event needed no commit). Events that
//! can never apply (invalid, or naming an image no manifest uses) go to the dead-letter stream
//! with the reason, then are terminated; if that publish fails they are handed back instead, so
//! nothing is lost. Transient failures nak the batch with a growing delay. Bad input never stops
//! the loop. Each event is a `consume` span continuing the trace its message carries (the
//! `traceparent` header, else the event's field); the batch's rewrite, commit and push hang
//! from it.

use std::{sync::Arc, time::Duration};

use async_nats::{
    jetstream::{self, consumer::pull, AckKind, Message},
    HeaderMap,
};
use futures::StreamExt;
use tokio::sync::Mutex;
use tracing::Instrument;

use conveyor_api::cd::Outcome;
use conveyor_telemetry::context;
use tracing::field::Empty;

use crate::{
    gitops::{BatchOutcome, ManifestRepo},
    metrics::Metrics,
    outcomes::{OutcomeRecord, Recent},
    trust::Trust,
};
use conveyor_proto::{
    connect::NatsArgs,
    headers,
    stream::{deadletter_stream_config, open_events_stream},
    ImageBuilt, DEADLETTER_SUBJECT, EVENTS_CONSUMER_FILTER,
};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Open(#[from] conveyor_proto::stream::StreamError),
    #[error("cannot open the durable consumer: {0}")]
    Setup(String),
}

/// How events are taken from the stream.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub durable: String,
    pub ack_wait: Duration,
    pub stream_max_messages: i64,
    pub stream_max_age: Duration,
    /// Events applied in one commit at most.
    pub batch_max: usize,
    /// How long to wait for more pending events once one arrived.
    pub batch_wait: Duration,
}

/// The consumer's connection: the message stream and the context for dead letters.
pub struct Consumer {
    js: jetstream::Context,
    consumer: jetstream::consumer::PullConsumer,
    messages: pull::Stream,
    opts: ConsumeOptions,
    recent: Arc<Recent>,
    metrics: Arc<Metrics>,
    trust: Arc<Trust>,
}

/// Remembers, counts and traces what happened to one message.
fn record(seen: &Seen, span: &tracing::Span, msg: &Message, event: Option<&ImageBuilt>, outcome: &Outcome) {
    let name = outcome.name();
    span.record("conveyor.outcome", name);
    if let Some(c) = outcome.commit() {
        span.record("conveyor.manifest.commit", c);
    }
    if outcome.is_error() {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", outcome.detail().unwrap_or(name));
    }
    seen.metrics.event(name);
    let recent = &seen.recent;
    recent.record(OutcomeRecord {
        sequence: sequence(msg),
        subject: msg.subject.to_string(),
        app: event.map(|e| e.app.clone()),
        image: event.map(|e| e.image.reference()),
        promotion_to: event.and_then(|e| e.deploy.as_ref()).map(|d| d.environment.clone()),
        outcome: outcome.clone(),
        trace_id: context::trace_id(span),
        at: time::OffsetDateTime::now_utc(),
    });
}

impl Consumer {
    pub async fn open(nats: &NatsArgs, opts: ConsumeOptions, trust: Arc<Trust>) -> Result<Self, ConsumeError> {
        let opened = open_events_stream(nats, "conveyor-cd-service", opts.stream_max_messages, opts.stream_max_age, true).await?;
        let (js, stream, refusals) = (opened.js, opened.stream, opened.refusals);
        let setup = |e: String| ConsumeError::Setup(format!("{e}{}", refusals.suffix()));
        conveyor_proto::stream::ensure_stream(&js, deadletter_stream_config(opts.stream_max_messages), nats.stream_replicas)
            .await
            .map_err(setup)?;
        let config = |deliver_policy| pull::Config {
            durable_name: Some(opts.durable.clone()),
            filter_subject: EVENTS_CONSUMER_FILTER.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: opts.ack_wait,
            deliver_policy,
            // At most one batch in flight: events are applied in stream order.
            max_ack_pending: opts.batch_max.max(1) as i64,
            ..Default::default()
        };
        let mut consumer = stream
            .get_or_create_consumer(&opts.durable, config(jetstream::consumer::DeliverPolicy::All))
            .await
            .map_err(|e| setup(e.to_string()))?;
        let info = consumer.cached_info().clone();
        if info.config.filter_subject != EVENTS_CONSUMER_FILTER {
            // A consumer made before promotions had their own subject: make it again from where it
            // stood, so it sees both subjects and nothing acked is delivered again.
            let start_sequence = info.ack_floor.stream_sequence + 1;
            tracing::warn!(consumer = %opts.durable, old = %info.config.filter_subject, start_sequence, "re-creating the durable consumer for the promotion subject");
            stream.delete_consumer(&opts.durable).await.map_err(|e| setup(e.to_string()))?;
            consumer = stream
                .create_consumer(config(jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence }))
                .await
                .map_err(|e| setup(e.to_string()))?;
        }
        let messages = consumer.messages().await.map_err(|e| setup(e.to_string()))?;
        Ok(Self { js, consumer, messages, opts, recent: Arc::default(), metrics: Arc::default(), trust })
    }

    /// The outcomes of the latest events (for `GET /outcomes`).
    pub fn recent(&self) -> Arc<Recent> {
        self.recent.clone()
    }

    /// What this consumer counts (for `GET /metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The durable consumer (its lag, for `GET /metrics`).
    pub fn handle(&self) -> jetstream::consumer::PullConsumer {
        self.consumer.clone()
    }

    /// The JetStream context (for publishing promotions).
    pub fn jetstream(&self) -> jetstream::Context {
        self.js.clone()
    }

    /// Pulls and applies batches until `shutdown` resolves; the batch in progress is finished first.
    pub async fn run(mut self, repo: Arc<Mutex<ManifestRepo>>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                next = self.messages.next() => next,
            };
            let first = match first {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; continuing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                None => {
                    // Never stop consuming: open the stream again (bounded wait between tries).
                    tracing::warn!("the consumer's message stream ended; opening it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match self.consumer.messages().await {
                        Ok(m) => self.messages = m,
                        Err(e) => tracing::warn!(error = %e, "cannot open the consumer's message stream yet"),
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.opts.batch_wait;
            while batch.len() < self.opts.batch_max {
                match tokio::time::timeout_at(deadline, self.messages.next()).await {
                    Ok(Some(Ok(msg))) => batch.push(msg),
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "consumer error while batching");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let seen = Seen { recent: self.recent.clone(), metrics: self.metrics.clone() };
            handle_batch(&repo, &self.js, &seen, &self.trust, batch).await;
        }
    }
}

/// Where outcomes go: the recent list (`GET /outcomes`) and the metrics.
pub struct Seen {
    pub recent: Arc<Recent>,
    pub metrics: Arc<Metrics>,
}

/// The `consume` span of one message, continuing the trace it carries; a replay's is linked to
/// the trace of the event it replays.
fn consume_span(msg: &Message, event: Option<&ImageBuilt>) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %msg.subject,
        messaging.message.id = event.map(|e| e.event_id.as_str()),
        conveyor.sequence = sequence(msg),
        conveyor.app = event.map(|e| e.app.as_str()),
        container.image.name = event.map(|e| e.image.repository.as_str()),
        conveyor.image.tag = event.map(|e| e.image.tag.as_str()),
        oci.manifest.digest = event.map(|e| e.image.digest.as_str()),
        conveyor.build.id = event.map(|e| e.build_id.as_str()),
        conveyor.deploy.kind = event.and_then(|e| e.deploy.as_ref()).map(|d| d.kind.as_str()),
        conveyor.outcome = Empty,
        conveyor.manifest.commit = Empty,
        trace_id = Empty,
    );
    context::continue_from_nats(&span, msg.headers.as_ref(), event.and_then(|e| e.traceparent.as_deref()));
    if let Some(original) = event.and_then(|e| e.deploy.as_ref()).and_then(|d| d.of_traceparent.as_deref()) {
        context::link_to(&span, original);
    }
    if let Some(t) = context::trace_id(&span) {
        span.record("trace_id", t.as_str());
    }
    span
}

/// Applies one batch and settles every message in it.
pub async fn handle_batch(
    repo: &Arc<Mutex<ManifestRepo>>,
    js: &jetstream::Context,
    seen: &Seen,
    trust: &Trust,
    batch: Vec<Message>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut valid: Vec<(Message, ImageBuilt, tracing::Span)> = Vec::new();
    for msg in batch {
        match ImageBuilt::from_json(&msg.payload) {
            Ok(event) => {
                let span = consume_span(&msg, Some(&event));
                if let Err(why) = trust.check(&msg.subject, msg.headers.as_ref(), &msg.payload, &event) {
                    let outcome = async {
                        tracing::error!(sequence = sequence(&msg), subject = %msg.subject, reason = %why, "untrusted event: dead-lettered, nothing written");
                        dead_letter(js, &msg, &why).await
                    }
                    .instrument(span.clone())
                    .await;
                    record(seen, &span, &msg, Some(&event), &outcome);
                    outcomes.push(outcome);
                    continue;
                }
                valid.push((msg, event, span));
            }
            Err(e) => {
                let span = consume_span(&msg, None);
                let outcome = async {
                    tracing::error!(sequence = sequence(&msg), subject = %msg.subject, error = %e, "invalid event: dead-lettered, nothing written");
                    dead_letter(js, &msg, &e.to_string()).await
                }
                .instrument(span.clone())
                .await;
                record(seen, &span, &msg, None, &outcome);
                outcomes.push(outcome);
            }
        }
    }
    if valid.is_empty() {
        return outcomes;
    }
    let events: Vec<ImageBuilt> = valid.iter().map(|(_, e, _)| e.clone()).collect();
    let spans: Vec<tracing::Span> = valid.iter().map(|(_, _, s)| s.clone()).collect();
    let started = std::time::Instant::now();
    let result = async {
        let guard = repo.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || guard.apply_traced(&events, &spans)).await
    }
    .await;
    seen.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
    let first = valid[0].2.clone();
    match result {
        Ok(Ok(BatchOutcome { commit, changes, outcomes: planned, attempts })) => {
            seen.metrics.push_retries.inc_by(u64::from(attempts.saturating_sub(1)));
            if let Some(c) = &commit {
                seen.metrics.commits_pushed.inc();
                let files: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
                first.in_scope(|| tracing::info!(commit = %c, ?files, attempts, events = valid.len(), "manifest commit pushed"));
            }
            for ((msg, event, span), planned) in valid.iter().zip(planned) {
                let outcome = settle(js, msg, event, planned).instrument(span.clone()).await;
                record(seen, span, msg, Some(event), &outcome);
                outcomes.push(outcome);
            }
        }
        Ok(Err(e)) => {
            let delay = redelivery_delay(valid.iter().map(|(m, _, _)| delivered(m)).max().unwrap_or(1));
            for (msg, event, span) in &valid {
                span.in_scope(
                    || tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "applying failed; handed back for redelivery"),
                );
                ack(msg, AckKind::Nak(Some(delay))).await;
                let outcome = Outcome::Retry { detail: e.to_string() };
                record(seen, span, msg, Some(event), &outcome);
                outcomes.push(outcome);
            }
        }
        Err(join) => {
            for (msg, event, span) in &valid {
                span.in_scope(|| tracing::error!(error = %join, "apply task panicked; handed back for redelivery"));
                ack(msg, AckKind::Nak(Some(redelivery_delay(delivered(msg))))).await;
                let outcome = Outcome::Retry { detail: join.to_string() };
                record(seen, span, msg, Some(event), &outcome);
                outcomes.push(outcome);
            }
        }
    }
    outcomes
}

/// Acks, dead-letters or hands back one message as the planner decided; a dead letter that
/// cannot be published becomes a retry.
async fn settle(js: &jetstream::Context, msg: &Message, event: &ImageBuilt, planned: Outcome) -> Outcome {
    let image = event.image.reference();
    match planned {
        Outcome::Committed { .. } => {
            // Confirmed ack: the commit is pushed; a lost ack would only find the tag current.
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; a redelivery will find the tag current");
            }
            planned
        }
        Outcome::Partial { ref detail, .. } => {
            tracing::error!(%image, reason = %detail, "partly deployed: dead-lettered with what was left behind");
            match dead_letter(js, msg, detail).await {
                Outcome::DeadLettered { .. } => planned,
                other => other,
            }
        }
        Outcome::DeadLettered { detail } => {
            tracing::error!(%image, reason = %detail, "dead-lettered");
            dead_letter(js, msg, &detail).await
        }
        skipped => {
            match &skipped {
                Outcome::Stale { detail } => {
                    tracing::warn!(%image, build_started_at = %event.build_started_at, %detail, "a newer build is deployed: not rolling back")
                }
                Outcome::Pinned { detail } => {
                    tracing::warn!(%image, locations = %detail, "references are pinned (conveyor:pin): not updated")
                }
                Outcome::Held { detail } => tracing::info!(%image, why = %detail, "held in every environment: nothing deployed"),
                _ => tracing::info!(%image, "tag already current: no commit"),
            }
            ack(msg, AckKind::Ack).await;
            skipped
        }
    }
}

/// Publishes the message with the reason to the dead-letter stream, then terminates it. If the
/// dead-letter stream does not take it, the message is handed back instead.
async fn dead_letter(js: &jetstream::Context, msg: &Message, reason: &str) -> Outcome {
    let mut h = HeaderMap::new();
    // Header values are one line.
    h.insert(headers::DEAD_REASON, reason.replace(['\r', '\n'], " ").as_str());
    h.insert(headers::ORIGINAL_SUBJECT, msg.subject.as_str());
    h.insert(headers::ORIGINAL_SEQUENCE, sequence(msg).to_string().as_str());
    let published = async { js.publish_with_headers(DEADLETTER_SUBJECT, h, msg.payload.clone()).await?.await };
    match tokio::time::timeout(Duration::from_secs(10), published).await {
        Ok(Ok(_)) => {
            ack(msg, AckKind::Term).await;
            Outcome::DeadLettered { detail: reason.to_string() }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "dead-letter publish failed; handing the event back");
            ack(msg, AckKind::Nak(Some(redelivery_delay(delivered(msg))))).await;
            Outcome::Retry { detail: e.to_string() }
        }
        Err(_) => {
            tracing::error!("dead-letter publish timed out; handing the event back");
            ack(msg, AckKind::Nak(Some(redelivery_delay(delivered(msg))))).await;
            Outcome::Retry { detail: "dead-letter publish timed out".into() }
        }
    }
}

fn sequence(msg: &Message) -> u64 {
    msg.info().map(|i| i.stream_sequence).unwrap_or(0)
}

fn delivered(msg: &Message) -> i64 {
    msg.info().map(|i| i.delivered).unwrap_or(1)
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

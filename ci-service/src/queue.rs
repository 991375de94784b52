//! The build queue: a JetStream work-queue stream that every replica pulls from. A job goes to
//! one worker at a time; the worker reports progress while it builds and acks when the build
//! ended, so a replica that dies mid-build leaves its job to be redelivered to another. The same
//! commit of the same ref pushed again is dropped by `Nats-Msg-Id` de-duplication. Cancel
//! requests travel on a plain NATS control subject every replica listens to. Every job carries
//! the trace context of the request that queued it in its `traceparent` header.
//!
//! "Newer push of the branch" is answered from two places: the queue's last job on the branch's
//! subject while it is queued or running, and a key-value bucket with the newest job number of
//! every branch, which outlives the job. A job whose delivery stalled (its worker lost NATS)
//! can come back after the newer push of its branch was built and acked out of the queue; the
//! bucket still says it is superseded, so the older commit is not built (and deployed) last.

use std::time::Duration;

use async_nats::{
    jetstream::{self, consumer, kv, stream},
    HeaderMap,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::webhook::PushRequest;

pub const STREAM: &str = "CONVEYOR_CI_JOBS";
pub const CONSUMER: &str = "ci-workers";
pub const CONTROL_SUBJECT: &str = "conveyor.ci.control";
/// How long queueing a job is retried (no stream leader, a reconnect) before the webhook gets a
/// 503: just under the 10 s a forge waits for an answer. A JetStream election takes several
/// seconds (5–8 s measured here, longer on a loaded machine), so an unlucky webhook still gets
/// the 503 and must be redelivered.
pub const ENQUEUE_PATIENCE: Duration = Duration::from_millis(9_300);
/// Key-value bucket: the newest job number of each repository and branch.
pub const HEADS_BUCKET: &str = "CONVEYOR_CI_BRANCH_HEADS";

/// A unit of work.
// Read once per delivery and moved on: boxing the push would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Build a push; the build number is the job's stream sequence.
    Build {
        push: PushRequest,
        #[serde(with = "time::serde::rfc3339")]
        queued_at: OffsetDateTime,
    },
    /// Re-run the push and publish steps of a build whose image exists.
    Retry { build: u64 },
}

fn head_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Notices to every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// Cancel this build wherever it runs.
    Cancel { build: u64, reason: String },
}

#[derive(Debug, thiserror::Error)]
#[error("build queue: {0}")]
pub struct QueueError(pub String);

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

/// A job was queued (or it was there already).
#[derive(Debug, Clone, Copy)]
pub struct Enqueued {
    pub id: u64,
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Queue {
    js: jetstream::Context,
    stream: stream::Stream,
    heads: kv::Store,
    ack_wait: Duration,
    max_deliver: i64,
}

impl Queue {
    /// Opens (or creates, with `replicas` replicas) the queue and the branch heads; a branch's head is forgotten
    /// `heads_max_age` after its last push.
    pub async fn open(
        js: &jetstream::Context,
        dedup_window: Duration,
        ack_wait: Duration,
        max_deliver: i64,
        heads_max_age: Duration,
        replicas: u8,
    ) -> Result<Self, QueueError> {
        let config = stream::Config {
            name: STREAM.into(),
            description: Some("Conveyor ci-service build queue".into()),
            subjects: vec!["conveyor.ci.jobs.>".into(), "conveyor.ci.retry.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: dedup_window,
            ..Default::default()
        };
        let stream = conveyor_proto::stream::ensure_stream(js, config, replicas).await.map_err(err)?;
        let heads = crate::records::open_bucket(js, HEADS_BUCKET, "Conveyor ci-service newest job of each branch", heads_max_age, replicas)
            .await
            .map_err(QueueError)?;
        Ok(Self { js: js.clone(), stream, heads, ack_wait, max_deliver })
    }

    /// `conveyor.ci.jobs.<app>.<hash of repository and ref>`: the newest job on a subject is the
    /// newest push of that ref.
    pub fn job_subject(push: &PushRequest) -> String {
        let hash = Sha256::digest(format!("{}\n{}", push.repo_url, push.git_ref).as_bytes());
        format!("conveyor.ci.jobs.{}.{}", push.app, &hex::encode(hash)[..16])
    }

    /// The branch-heads key of a push's repository and ref.
    fn head_key(push: &PushRequest) -> String {
        hex::encode(Sha256::digest(format!("{}\n{}", push.repo_url, push.git_ref).as_bytes()))
    }

    /// The de-duplication id of a push: repository, ref and commit.
    pub fn push_msg_id(push: &PushRequest) -> String {
        let hash = Sha256::digest(format!("push\n{}\n{}\n{}", push.repo_url, push.git_ref, push.commit).as_bytes());
        format!("push-{}", hex::encode(hash))
    }

    /// Queues a build; `msg_id` de-duplicates (a duplicate returns the first job's number).
    /// `traceparent`: the trace context the build continues (the request's).
    pub async fn enqueue_build(
        &self,
        push: &PushRequest,
        queued_at: OffsetDateTime,
        msg_id: &str,
        traceparent: Option<&str>,
    ) -> Result<Enqueued, QueueError> {
        let job = Job::Build { push: push.clone(), queued_at };
        let queued = self.publish(Self::job_subject(push), &job, msg_id, traceparent).await?;
        if !queued.duplicate {
            // The job is queued either way; the worker that takes it notes it again.
            if let Err(e) = self.note_head(push, queued.id).await {
                tracing::warn!(error = %e, build.id = queued.id, "cannot note the newest job of the branch yet");
            }
        }
        Ok(queued)
    }

    /// Records job `id` as the newest of its branch, unless a newer one is recorded already
    /// (compare-and-set, so concurrent pushes never move a head backwards).
    pub async fn note_head(&self, push: &PushRequest, id: u64) -> Result<(), QueueError> {
        let key = Self::head_key(push);
        let value = || Bytes::from(id.to_string());
        loop {
            let written = match self.heads.entry(key.as_str()).await.map_err(err)? {
                Some(entry) if head_of(&entry.value).is_some_and(|head| head >= id) => return Ok(()),
                Some(entry) => match self.heads.update(&key, value(), entry.revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(err(e)),
                },
                None => match self.heads.create(&key, value()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(err(e)),
                },
            };
            if written {
                return Ok(());
            }
        }
    }

    pub async fn enqueue_retry(&self, build: u64, attempt: u32, traceparent: Option<&str>) -> Result<Enqueued, QueueError> {
        self.publish(format!("conveyor.ci.retry.{build}"), &Job::Retry { build }, &format!("retry-{build}-{attempt}"), traceparent).await
    }

    async fn publish(&self, subject: String, job: &Job, msg_id: &str, traceparent: Option<&str>) -> Result<Enqueued, QueueError> {
        let mut headers = HeaderMap::new();
        headers.insert(conveyor_proto::headers::MSG_ID, msg_id);
        if let Some(tp) = traceparent {
            headers.insert(conveyor_proto::headers::TRACEPARENT, tp);
        }
        let payload = Bytes::from(serde_json::to_vec(job).expect("a job always serializes"));
        // On a cluster, the queue has no leader for a few seconds after its leader's node is
        // lost (JetStream answers "no responders"), and a client whose server went away waits
        // for its reconnect: both are retried here, within a webhook sender's patience, so a
        // lost node costs the sender a slower answer, not a 503. A retry of a publish that did
        // land (its ack was lost) is dropped by the Nats-Msg-Id de-duplication.
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        let mut maybe_stored = false;
        loop {
            let attempt = async { self.js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await?.await }.await;
            match attempt {
                // Our own earlier attempt may be what the stream holds: not another delivery's.
                Ok(ack) => return Ok(Enqueued { id: ack.sequence, duplicate: ack.duplicate && !maybe_stored }),
                Err(e)
                    if matches!(e.kind(), Kind::StreamNotFound | Kind::TimedOut | Kind::BrokenPipe)
                        && started.elapsed() + wait < ENQUEUE_PATIENCE =>
                {
                    maybe_stored |= e.kind() != Kind::StreamNotFound;
                    tracing::debug!(error = %e, retry_in = ?wait, "the build queue did not take the job; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// The job with this number and the trace id it carries, while it is queued or running
    /// (acked jobs leave the queue).
    pub async fn job(&self, id: u64) -> Result<Option<(Job, Option<String>)>, QueueError> {
        match self.stream.get_raw_message(id).await {
            Ok(m) => {
                let trace_id = m
                    .headers
                    .get(conveyor_proto::headers::TRACEPARENT)
                    .and_then(|v| conveyor_telemetry::context::trace_id_of(v.as_str()))
                    .map(str::to_string);
                Ok(serde_json::from_slice(&m.payload).ok().map(|job| (job, trace_id)))
            }
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// The newest jobs still in the queue (queued or running), newest first, at most `limit`.
    pub async fn newest_jobs(&self, limit: usize) -> Result<Vec<(u64, Job, Option<String>)>, QueueError> {
        let state = self.stream.clone().info().await.map_err(err)?.state.clone();
        let mut jobs = Vec::new();
        let mut seq = state.last_sequence;
        // Acked jobs leave gaps: look at a bounded window below the newest.
        let floor = state.first_sequence.max(state.last_sequence.saturating_sub(limit as u64 * 4));
        while seq >= floor && seq > 0 && jobs.len() < limit && state.messages > 0 {
            if let Some((job, trace_id)) = self.job(seq).await? {
                jobs.push((seq, job, trace_id));
            }
            seq -= 1;
        }
        Ok(jobs)
    }

    /// The number of a newer job for the same repository and ref: one that is queued or
    /// running, or one that was queued and has ended.
    pub async fn newer_job(&self, push: &PushRequest, id: u64) -> Result<Option<u64>, QueueError> {
        match self.stream.get_last_raw_message_by_subject(&Self::job_subject(push)).await {
            Ok(m) if m.sequence > id => return Ok(Some(m.sequence)),
            Ok(_) => {}
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(err(e)),
        }
        let head = self.heads.get(Self::head_key(push)).await.map_err(err)?;
        Ok(head.as_deref().and_then(head_of).filter(|head| *head > id))
    }

    /// The shared durable consumer the workers pull from.
    pub async fn consumer(&self) -> Result<consumer::PullConsumer, QueueError> {
        self.stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("ci-service build workers".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: self.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(err)
    }

    /// (jobs in the stream, and of the workers' consumer: not yet taken, taken and unfinished,
    /// being redelivered), for the metrics.
    pub async fn depth(&self) -> Result<(u64, u64, u64, u64), QueueError> {
        let messages = self.stream.clone().info().await.map_err(err)?.state.messages;
        let mut consumer: consumer::PullConsumer = self.stream.get_consumer(CONSUMER).await.map_err(err)?;
        let info = consumer.info().await.map_err(err)?;
        Ok((messages, info.num_pending, info.num_ack_pending as u64, info.num_redelivered as u64))
    }

    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    pub async fn control(&self, notice: &Control) -> Result<(), QueueError> {
        let payload = Bytes::from(serde_json::to_vec(notice).expect("a notice always serializes"));
        self.js.client().publish(CONTROL_SUBJECT, payload).await.map_err(err)
    }

    pub async fn subscribe_control(&self) -> Result<async_nats::Subscriber, QueueError> {
        self.js.client().subscribe(CONTROL_SUBJECT).await.map_err(err)
    }
}

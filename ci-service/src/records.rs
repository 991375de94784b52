//! Build records (state, steps with timings, image, digest, failure reason), kept in a JetStream
//! key-value bucket so that they survive a restart and every replica answers for every build.
//! Records are keyed by build number (the job's sequence in the build queue).

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use bytes::Bytes;
use futures::TryStreamExt;

pub const BUCKET: &str = "conveyor_ci_builds";

pub use conveyor_api::ci::{BuildRecord, BuildState, StepRecord, StepState};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("build records: {0}")]
    Nats(String),
    #[error("build record {id} is unreadable: {source}")]
    Corrupt { id: u64, source: serde_json::Error },
}

fn nats(e: impl std::fmt::Display) -> RecordError {
    RecordError::Nats(e.to_string())
}

/// Opens (or creates, with `replicas` replicas) a key-value bucket keeping one value per key, on
/// file, values older than `max_age` dropped. Its stream is created here with the key-value conventions, because
/// `create_key_value` first asks for the account info, which it cannot parse from nats-server
/// 2.9 (see PLATFORM.md); `get_key_value` then opens it as usual.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
    replicas: u8,
) -> Result<kv::Store, String> {
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    conveyor_proto::stream::ensure_stream(js, config, replicas).await?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// The shared build records.
#[derive(Clone)]
pub struct Records {
    kv: kv::Store,
}

impl Records {
    /// Opens (or creates) the bucket; records older than `max_age` are dropped by the server.
    pub async fn open(js: &jetstream::Context, max_age: Duration, replicas: u8) -> Result<Self, RecordError> {
        let kv = open_bucket(js, BUCKET, "Conveyor ci-service build records", max_age, replicas).await.map_err(nats)?;
        Ok(Self { kv })
    }

    /// Stores a new record; false if one with that id exists (a worker was faster).
    pub async fn create(&self, rec: &BuildRecord) -> Result<bool, RecordError> {
        let value = Bytes::from(serde_json::to_vec(rec).expect("a build record always serializes"));
        match self.kv.create(rec.id.to_string(), value).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats(e)),
        }
    }

    pub async fn put(&self, rec: &BuildRecord) -> Result<(), RecordError> {
        let value = Bytes::from(serde_json::to_vec(rec).expect("a build record always serializes"));
        self.kv.put(rec.id.to_string(), value).await.map_err(nats)?;
        Ok(())
    }

    pub async fn get(&self, id: u64) -> Result<Option<BuildRecord>, RecordError> {
        match self.kv.get(id.to_string()).await.map_err(nats)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| RecordError::Corrupt { id, source }),
        }
    }

    /// The newest `limit` records, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<BuildRecord>, RecordError> {
        let mut ids: Vec<u64> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect::<Vec<String>>().await.map_err(nats)?.iter().filter_map(|k| k.parse().ok()).collect(),
            Err(e) => return Err(nats(e)),
        };
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for id in ids.into_iter().take(limit) {
            if let Some(rec) = self.get(id).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::webhook::{PushRequest, RefKind, Source};
    use time::OffsetDateTime;

    fn rec() -> BuildRecord {
        let push = PushRequest {
            app: "web".into(),
            repo_url: "/r.git".into(),
            git_ref: "refs/heads/main".into(),
            ref_kind: RefKind::Branch,
            ref_name: "main".into(),
            commit: "a".repeat(40),
            tag_object: None,
            source: Source::Generic,
            delivery: None,
            authenticated_repo: None,
            forge: None,
            pull_request: None,
        };
        BuildRecord::queued(7, &push, OffsetDateTime::now_utc(), None)
    }

    #[test]
    fn steps_and_the_end_are_recorded() {
        let mut r = rec();
        r.step_started("checkout");
        r.step_finished("checkout", StepState::Succeeded);
        r.step_started("build");
        assert!(!r.push_started());
        r.finish(BuildState::Cancelled, Some("superseded by build 9".into()));
        assert_eq!(
            r.steps.iter().map(|s| (s.name.as_str(), s.state)).collect::<Vec<_>>(),
            [("checkout", StepState::Succeeded), ("build", StepState::Cancelled)]
        );
        assert!(r.steps.iter().all(|s| s.duration_ms.is_some()) && r.state.is_finished());
        let back: BuildRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.reason.as_deref(), Some("superseded by build 9"));
    }
}

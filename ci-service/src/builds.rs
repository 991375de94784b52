//! Build records and their logs, kept in memory: state, steps with timings, result, image and
//! digest, failure reason. Bounded (oldest finished builds are dropped, logs are capped) so a
//! long-running service does not grow without limit.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Instant,
};

use serde::Serialize;
use time::OffsetDateTime;

use crate::webhook::PushRequest;

const MAX_BUILDS: usize = 1000;
const MAX_LOG_LINES: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl BuildState {
    pub fn is_finished(self) -> bool {
        matches!(self, BuildState::Succeeded | BuildState::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub name: &'static str,
    pub state: StepState,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Set when the step ended.
    pub duration_ms: Option<u64>,
    #[serde(skip)]
    started: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildRecord {
    pub id: String,
    pub app: String,
    pub repo_url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub branch: String,
    pub commit: String,
    pub state: BuildState,
    pub steps: Vec<StepRecord>,
    /// `repository:tag`, once the image was built.
    pub image: Option<String>,
    /// Registry digest, once pushed.
    pub digest: Option<String>,
    /// The published event's id and stream sequence.
    pub event_id: Option<String>,
    pub event_sequence: Option<u64>,
    pub failure: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, (BuildRecord, Vec<String>)>,
    order: VecDeque<String>,
}

/// All builds this process knows about.
#[derive(Default)]
pub struct BuildStore {
    inner: Mutex<Inner>,
}

impl BuildStore {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().expect("build store lock is never held across a panic");
        f(&mut guard)
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut BuildRecord)) {
        self.with(|inner| {
            if let Some((rec, _)) = inner.records.get_mut(id) {
                f(rec)
            }
        })
    }

    /// Records a new queued build and returns its id (time-ordered UUIDv7).
    pub fn create(&self, push: &PushRequest) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let record = BuildRecord {
            id: id.clone(),
            app: push.app.clone(),
            repo_url: push.repo_url.clone(),
            git_ref: push.git_ref.clone(),
            branch: push.branch.clone(),
            commit: push.commit.clone(),
            state: BuildState::Queued,
            steps: Vec::new(),
            image: None,
            digest: None,
            event_id: None,
            event_sequence: None,
            failure: None,
            queued_at: OffsetDateTime::now_utc(),
            started_at: None,
            finished_at: None,
        };
        self.with(|inner| {
            inner.records.insert(id.clone(), (record, Vec::new()));
            inner.order.push_back(id.clone());
            while inner.order.len() > MAX_BUILDS {
                // Drop the oldest finished build; running ones are never dropped.
                let Some(pos) = inner.order.iter().position(|i| inner.records.get(i).is_none_or(|(r, _)| r.state.is_finished())) else {
                    break;
                };
                if let Some(old) = inner.order.remove(pos) {
                    inner.records.remove(&old);
                }
            }
        });
        id
    }

    pub fn get(&self, id: &str) -> Option<BuildRecord> {
        self.with(|inner| inner.records.get(id).map(|(r, _)| r.clone()))
    }

    /// Newest first.
    pub fn list(&self, limit: usize) -> Vec<BuildRecord> {
        self.with(|inner| inner.order.iter().rev().take(limit).filter_map(|id| inner.records.get(id).map(|(r, _)| r.clone())).collect())
    }

    pub fn logs(&self, id: &str) -> Option<Vec<String>> {
        self.with(|inner| inner.records.get(id).map(|(_, l)| l.clone()))
    }

    /// Appends log output; text is split into lines, a partial last line is kept as a line.
    pub fn log(&self, id: &str, text: &str) {
        self.with(|inner| {
            if let Some((_, lines)) = inner.records.get_mut(id) {
                for line in text.lines() {
                    if lines.len() >= MAX_LOG_LINES {
                        if lines.len() == MAX_LOG_LINES {
                            lines.push(format!("[conveyor] log truncated at {MAX_LOG_LINES} lines"));
                        }
                        return;
                    }
                    lines.push(line.to_string());
                }
            }
        })
    }

    pub fn start(&self, id: &str) {
        self.update(id, |r| {
            r.state = BuildState::Running;
            r.started_at = Some(OffsetDateTime::now_utc());
        })
    }

    pub fn step_started(&self, id: &str, name: &'static str) {
        self.update(id, |r| {
            r.steps.push(StepRecord {
                name,
                state: StepState::Running,
                started_at: OffsetDateTime::now_utc(),
                duration_ms: None,
                started: Some(Instant::now()),
            })
        });
        self.log(id, &format!("[conveyor] step {name}"));
    }

    pub fn step_finished(&self, id: &str, name: &'static str, ok: bool) {
        self.update(id, |r| {
            if let Some(step) = r.steps.iter_mut().rev().find(|s| s.name == name && s.state == StepState::Running) {
                step.state = if ok { StepState::Succeeded } else { StepState::Failed };
                step.duration_ms = step.started.map(|s| s.elapsed().as_millis() as u64);
            }
        })
    }

    pub fn set_image(&self, id: &str, image: &str) {
        self.update(id, |r| r.image = Some(image.to_string()))
    }

    pub fn set_digest(&self, id: &str, digest: &str) {
        self.update(id, |r| r.digest = Some(digest.to_string()))
    }

    pub fn set_event(&self, id: &str, event_id: &str, sequence: u64) {
        self.update(id, |r| {
            r.event_id = Some(event_id.to_string());
            r.event_sequence = Some(sequence);
        })
    }

    pub fn finish(&self, id: &str, result: Result<(), String>) {
        self.update(id, |r| {
            r.finished_at = Some(OffsetDateTime::now_utc());
            match result {
                Ok(()) => r.state = BuildState::Succeeded,
                Err(reason) => {
                    r.state = BuildState::Failed;
                    r.failure = Some(reason);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> PushRequest {
        PushRequest {
            app: "web".into(),
            repo_url: "/r.git".into(),
            git_ref: "refs/heads/main".into(),
            branch: "main".into(),
            commit: "a".repeat(40),
        }
    }

    #[test]
    fn records_steps_and_result() {
        let store = BuildStore::default();
        let id = store.create(&push());
        store.start(&id);
        store.step_started(&id, "checkout");
        store.step_finished(&id, "checkout", true);
        store.step_started(&id, "build");
        store.step_finished(&id, "build", false);
        store.finish(&id, Err("build failed".into()));
        let rec = store.get(&id).unwrap();
        assert_eq!(rec.state, BuildState::Failed);
        assert_eq!(rec.failure.as_deref(), Some("build failed"));
        assert_eq!(
            rec.steps.iter().map(|s| (s.name, s.state)).collect::<Vec<_>>(),
            vec![("checkout", StepState::Succeeded), ("build", StepState::Failed)]
        );
        assert!(rec.steps.iter().all(|s| s.duration_ms.is_some()));
    }

    #[test]
    fn keeps_a_bounded_number_of_finished_builds() {
        let store = BuildStore::default();
        let first = store.create(&push());
        store.finish(&first, Ok(()));
        for _ in 0..MAX_BUILDS {
            let id = store.create(&push());
            store.finish(&id, Ok(()));
        }
        assert!(store.get(&first).is_none());
        assert_eq!(store.list(usize::MAX).len(), MAX_BUILDS);
    }

    #[test]
    fn caps_logs() {
        let store = BuildStore::default();
        let id = store.create(&push());
        store.log(&id, &"x\n".repeat(MAX_LOG_LINES + 10));
        let logs = store.logs(&id).unwrap();
        assert_eq!(logs.len(), MAX_LOG_LINES + 1);
        assert!(logs.last().unwrap().contains("truncated"));
    }
}

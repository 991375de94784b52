//! The latest outcome of each event (committed, skipped and why, dead-lettered), kept in memory
//! (bounded) so that skips — pins, held environments, stale builds — are visible over HTTP
//! (`GET /outcomes`), not only in the log.

use std::{collections::VecDeque, sync::Mutex};

use serde::Serialize;
use time::OffsetDateTime;

const KEEP: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRecord {
    /// Stream sequence of the event.
    pub sequence: u64,
    pub subject: String,
    pub app: Option<String>,
    pub image: Option<String>,
    /// The target environment of a promotion.
    pub promotion_to: Option<String>,
    /// `committed`, `already_current`, `pinned`, `stale`, `held`, `dead_lettered` or `retry`.
    pub outcome: &'static str,
    pub detail: Option<String>,
    pub commit: Option<String>,
    /// The trace the event continued (open it in Jaeger).
    pub trace_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Default)]
pub struct Recent {
    inner: Mutex<VecDeque<OutcomeRecord>>,
}

impl Recent {
    pub fn record(&self, record: OutcomeRecord) {
        let mut q = self.inner.lock().expect("outcome log lock is never held across a panic");
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(record);
    }

    /// Newest first, optionally only one kind of outcome.
    pub fn list(&self, limit: usize, outcome: Option<&str>) -> Vec<OutcomeRecord> {
        let q = self.inner.lock().expect("outcome log lock is never held across a panic");
        q.iter().rev().filter(|r| outcome.is_none_or(|o| r.outcome == o)).take(limit).cloned().collect()
    }
}

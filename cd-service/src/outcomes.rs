//! The latest outcome of each event (committed, skipped and why, dead-lettered), kept in memory
//! (bounded) so that skips — pins, held environments, stale builds — are visible over HTTP
//! (`GET /outcomes`), not only in the log. The record is the API's `OutcomeRecord`.

use std::{collections::VecDeque, sync::Mutex};

pub use conveyor_api::cd::OutcomeRecord;

const KEEP: usize = 1000;

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
        q.iter().rev().filter(|r| outcome.is_none_or(|o| r.outcome.name() == o)).take(limit).cloned().collect()
    }
}

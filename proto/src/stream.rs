//! The JetStream stream definition, identical for both services so that whichever starts first
//! creates it and the other finds the same one.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

use crate::names::{EVENTS_STREAM, EVENTS_SUBJECT_WILDCARD};

/// Limits retention: events are kept after they are consumed, so that old ones can be replayed
/// (a replay of an old event is a rollback). `max_age` of zero keeps events until `max_messages`
/// pushes the oldest out.
pub fn events_stream_config(max_messages: i64, max_age: Duration) -> Config {
    Config {
        name: EVENTS_STREAM.to_string(),
        subjects: vec![EVENTS_SUBJECT_WILDCARD.to_string()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        max_messages,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

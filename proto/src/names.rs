//! Names shared on the wire: JetStream stream and subjects, and message header names.

/// The JetStream stream that keeps every image-built event (limits retention, so old events stay
/// replayable).
pub const EVENTS_STREAM: &str = "CONVEYOR_IMAGES";

/// Subjects are `conveyor.images.built.<app>`; the app is a validated DNS label, so it is a
/// single subject token.
pub const EVENTS_SUBJECT_PREFIX: &str = "conveyor.images.built";

/// Matches the build events of every app.
pub const EVENTS_SUBJECT_WILDCARD: &str = "conveyor.images.built.>";

/// Promotions and replays (events with a deploy intent) are `conveyor.images.deploy.<app>`:
/// published by cd-service only, so that its credentials never need the build subjects.
pub const DEPLOY_SUBJECT_PREFIX: &str = "conveyor.images.deploy";

/// Matches the promotions and replays of every app.
pub const DEPLOY_SUBJECT_WILDCARD: &str = "conveyor.images.deploy.>";

/// The event stream's one subject, and the one filter subject of cd-service's durable consumer:
/// builds and intents, in stream order (nats-server 2.9 ignores several filter subjects on one
/// consumer, and refuses a filter that spans two stream subjects).
pub const EVENTS_CONSUMER_FILTER: &str = "conveyor.images.>";

/// Stream of events cd-service could not apply (invalid, or naming an image no manifest
/// uses): the original payload with the reason in headers, kept for inspection and replay.
pub const DEADLETTER_STREAM: &str = "CONVEYOR_DEADLETTER";

/// Dead-lettered image-built events are published here.
pub const DEADLETTER_SUBJECT: &str = "conveyor.deadletter.images";

/// The subject an app's image-built events are published on.
pub fn subject_for_app(app: &str) -> String {
    format!("{EVENTS_SUBJECT_PREFIX}.{app}")
}

/// The subject an app's promotions and replays are published on.
pub fn deploy_subject_for_app(app: &str) -> String {
    format!("{DEPLOY_SUBJECT_PREFIX}.{app}")
}

/// Matches every event of one app, builds and intents.
pub fn app_events_filter(app: &str) -> String {
    format!("conveyor.images.*.{app}")
}

/// Message header names.
pub mod headers {
    /// JetStream de-duplication id: the same id inside the stream's duplicate window is stored once.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// W3C trace context of the build that produced the event.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, carried with `traceparent` when present.
    pub const TRACESTATE: &str = "tracestate";
    /// Content type of the payload, `application/json`.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// The event version of the payload, so a consumer can refuse what it does not understand
    /// before parsing.
    pub const EVENT_VERSION: &str = "Conveyor-Event-Version";
    /// On a dead-lettered message: why it was not applied.
    pub const DEAD_REASON: &str = "Conveyor-Dead-Reason";
    /// On a dead-lettered message: the subject and stream sequence it came from.
    pub const ORIGINAL_SUBJECT: &str = "Conveyor-Original-Subject";
    pub const ORIGINAL_SEQUENCE: &str = "Conveyor-Original-Sequence";
    /// Ed25519 signature (base64) over the subject and payload, see `crate::signing`.
    pub const SIGNATURE: &str = "Conveyor-Signature";
    /// Which key made [`SIGNATURE`]: the first 16 hex digits of the SHA-256 of its public key.
    pub const KEY_ID: &str = "Conveyor-Key-Id";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_subject_is_under_the_wildcard() {
        let s = subject_for_app("web");
        assert_eq!(s, "conveyor.images.built.web");
        assert!(s.starts_with(EVENTS_SUBJECT_WILDCARD.trim_end_matches('>')));
    }
}

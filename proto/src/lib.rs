//! The event contract between `ci-service` and `cd-service`: the image-built event, the NATS
//! stream and subject names, the message headers and the validation both sides apply.
//! Without features this crate does no I/O; the `nats` feature adds opening the shared stream, `git` the deploy-commit trailers.
//! Both services depend on it and on nothing else of each other.

pub mod event;
pub mod names;
pub mod secret;
pub mod signing;
pub mod validate;

pub use event::{DeployIntent, ImageBuilt, ImageRef, IntentKind, SourceRef, EVENT_VERSION};
pub use names::{
    app_events_filter, deploy_subject_for_app, headers, subject_for_app, DEADLETTER_STREAM, DEADLETTER_SUBJECT, DEPLOY_SUBJECT_PREFIX,
    DEPLOY_SUBJECT_WILDCARD, EVENTS_CONSUMER_FILTER, EVENTS_STREAM, EVENTS_SUBJECT_PREFIX, EVENTS_SUBJECT_WILDCARD,
};
pub use secret::{bearer_token, Secret};
pub use validate::ValidationError;

#[cfg(feature = "nats")]
pub mod connect;
#[cfg(feature = "nats")]
pub mod stream;
#[cfg(feature = "git")]
pub mod trailers;

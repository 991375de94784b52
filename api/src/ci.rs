//! ci-service's routes that answer with their own bodies: `POST /hooks/push` and `POST /builds`
//! (queued, duplicate, ignored or pong), `POST /builds/{id}/cancel` and `/retry`. A build record
//! (`GET /builds/{id}`) is ci-service's `BuildRecord`.

use serde::{Deserialize, Serialize};

/// A push or manual build taken (`202 Accepted`, or `200 OK` for a duplicate delivery), with the
/// build's address in `status_url` (also the `Location` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildQueued {
    /// The build number (a JetStream sequence, from 1).
    pub build_id: u64,
    /// The same delivery was taken before: this is that build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    pub status_url: String,
    pub trace_id: Option<String>,
}

/// A webhook that asks for no build (`200 OK`): a forge's ping, or a push with nothing to build
/// (a deleted branch, a tag, a `[skip ci]` commit), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotBuilt {
    Pong { pong: bool },
    Ignored { ignored: String },
}

/// `POST /builds/{id}/cancel` taken (`202 Accepted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelling {
    pub build_id: u64,
    pub cancelling: bool,
}

//! The versioned image-built event: what was built, from which commit, and where it was pushed.
//! Serialized as JSON; `ImageBuilt::from_json` parses *and* validates, so a consumer never acts
//! on an event it has not checked.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::validate::{self, ValidationError};

/// The event version this crate writes and accepts.
pub const EVENT_VERSION: u32 = 1;

/// A whole event payload is at most this many bytes; a larger one is refused before parsing.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// `source.repo_url` at most (URLs and paths; git itself allows no more than a few KiB).
pub const MAX_URL_BYTES: usize = 4096;
/// `source.branch` at most.
pub const MAX_BRANCH_BYTES: usize = 1024;
/// Ids and names (`event_id`, `build_id`, `requested_by`, `of_event`) at most.
pub const MAX_ID_BYTES: usize = 256;

/// An image was built from a commit, its tests passed, and it was pushed to a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuilt {
    /// Contract version; see [`EVENT_VERSION`].
    pub version: u32,
    /// Unique id of this event (also the `Nats-Msg-Id` de-duplication id).
    pub event_id: String,
    /// The application, a DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes).
    pub app: String,
    /// The pushed image.
    pub image: ImageRef,
    /// The commit it was built from.
    pub source: SourceRef,
    /// The ci-service build that produced it.
    pub build_id: String,
    /// When the build started.
    #[serde(with = "time::serde::rfc3339")]
    pub build_started_at: OffsetDateTime,
    /// When the image was pushed and the event created.
    #[serde(with = "time::serde::rfc3339")]
    pub built_at: OffsetDateTime,
    /// W3C `traceparent` of the build, when the build was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Set when this is not a new build but an explicit request to deploy an already built
    /// image to one environment (a promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployIntent>,
}

/// An explicit deployment of an existing image to one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployIntent {
    pub kind: IntentKind,
    /// The environment to deploy to (a DNS label), whatever its update policy.
    pub environment: String,
    /// Who asked (user name or system).
    pub requested_by: String,
    /// The event whose image this deploys.
    pub of_event: String,
    /// That event's stream sequence, when known (replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_sequence: Option<u64>,
    /// That event's W3C `traceparent`, so the redeploy's trace links to the original build's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_traceparent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    /// An image deployed to an environment it was not built for (e.g. production).
    Promotion,
    /// A replay of an older image than the one deployed: a rollback.
    Rollback,
    /// A replay of the deployed image or a newer one: a redeploy.
    Redeploy,
}

impl IntentKind {
    /// The word used in commit messages and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            IntentKind::Promotion => "promotion",
            IntentKind::Rollback => "rollback",
            IntentKind::Redeploy => "redeploy",
        }
    }
}

/// A pushed image: `repository:tag`, pinned by `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Registry host (with port) and path, e.g. `127.0.0.1:5000/flask-app`.
    pub repository: String,
    /// OCI tag, e.g. the short commit SHA.
    pub tag: String,
    /// Manifest digest reported by the registry, `sha256:<64 hex>`.
    pub digest: String,
}

/// Where the image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// The repository URL or path the commit was fetched from.
    pub repo_url: String,
    /// Full commit id (40 hex for SHA-1 repositories, 64 for SHA-256).
    pub commit: String,
    /// Branch (or tag) name without `refs/heads/` (or `refs/tags/`).
    pub branch: String,
}

impl ImageRef {
    /// `repository:tag`, the reference written into manifests.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

impl ImageBuilt {
    /// Checks every field against the contract; the first violation is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.version != EVENT_VERSION {
            return Err(ValidationError::UnsupportedVersion { found: self.version, supported: EVENT_VERSION });
        }
        validate::bounded_text("event_id", &self.event_id, MAX_ID_BYTES)?;
        validate::bounded_text("build_id", &self.build_id, MAX_ID_BYTES)?;
        validate::app_name(&self.app)?;
        validate::image_repository(&self.image.repository)?;
        validate::tag(&self.image.tag)?;
        validate::digest(&self.image.digest)?;
        validate::bounded_text("source.repo_url", &self.source.repo_url, MAX_URL_BYTES)?;
        validate::commit(&self.source.commit)?;
        validate::bounded_text("source.branch", &self.source.branch, MAX_BRANCH_BYTES)?;
        if let Some(tp) = &self.traceparent {
            validate::traceparent(tp)?;
        }
        if let Some(d) = &self.deploy {
            validate::environment(&d.environment)?;
            validate::bounded_text("deploy.requested_by", &d.requested_by, MAX_ID_BYTES)?;
            validate::bounded_text("deploy.of_event", &d.of_event, MAX_ID_BYTES)?;
            if let Some(tp) = &d.of_traceparent {
                validate::traceparent(tp)?;
            }
        }
        Ok(())
    }

    /// Parses and validates an event payload.
    pub fn from_json(payload: &[u8]) -> Result<Self, ValidationError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(ValidationError::TooLarge { len: payload.len(), max: MAX_EVENT_BYTES });
        }
        let event: Self = serde_json::from_slice(payload).map_err(|e| ValidationError::Malformed(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    /// Serializes the event (after validating it: a producer must not publish what a consumer
    /// would reject).
    pub fn to_json(&self) -> Result<Vec<u8>, ValidationError> {
        self.validate()?;
        let json = serde_json::to_vec(self).map_err(|e| ValidationError::Malformed(e.to_string()))?;
        if json.len() > MAX_EVENT_BYTES {
            return Err(ValidationError::TooLarge { len: json.len(), max: MAX_EVENT_BYTES });
        }
        Ok(json)
    }

    /// The subject this event travels on: a build on `conveyor.images.built.<app>` (only
    /// ci-service may publish there), a promotion or replay on `conveyor.images.deploy.<app>`
    /// (only cd-service may).
    pub fn subject(&self) -> String {
        match self.deploy {
            None => crate::subject_for_app(&self.app),
            Some(_) => crate::deploy_subject_for_app(&self.app),
        }
    }

    /// The `Nats-Msg-Id` for this event: the same image pushed twice is stored once; each
    /// explicit deployment is its own message.
    pub fn dedup_id(&self) -> String {
        match &self.deploy {
            None => format!("{}@{}", self.image.reference(), self.image.digest),
            Some(d) => format!("{}@{}#{:?}:{}:{}", self.image.reference(), self.image.digest, d.kind, d.environment, self.event_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ImageBuilt {
        ImageBuilt {
            version: EVENT_VERSION,
            event_id: "0193a8f2-7c1e-7c4a-9d1e-3f0c2b1a0a01".into(),
            app: "flask-app".into(),
            image: ImageRef {
                repository: "127.0.0.1:5000/flask-app".into(),
                tag: "3f2a9c1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
            source: SourceRef {
                repo_url: "/srv/git/flask-app.git".into(),
                commit: "3f2a9c1".to_string() + &"0".repeat(33),
                branch: "main".into(),
            },
            build_id: "b-1".into(),
            build_started_at: time::macros::datetime!(2026-11-23 10:00:00 UTC),
            built_at: time::macros::datetime!(2026-11-23 10:00:42 UTC),
            traceparent: None,
            deploy: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let e = sample();
        let json = e.to_json().expect("valid");
        assert_eq!(ImageBuilt::from_json(&json).expect("parses"), e);
    }

    #[test]
    fn rejects_garbage_and_unknown_fields() {
        assert!(matches!(ImageBuilt::from_json(b"not json"), Err(ValidationError::Malformed(_))));
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = serde_json::json!(1);
        let err = ImageBuilt::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn rejects_invalid_tag_before_it_reaches_a_manifest() {
        let mut e = sample();
        e.image.tag = "v1;rm -rf".into();
        assert!(matches!(e.validate(), Err(ValidationError::InvalidTag { .. })));
        assert!(e.to_json().is_err(), "a producer cannot serialize an invalid event");
    }

    #[test]
    fn bounds_free_text_fields_and_the_whole_event() {
        let mut e = sample();
        e.source.repo_url = format!("/srv/{}", "a".repeat(5 << 20));
        assert!(matches!(e.validate(), Err(ValidationError::TooLong { field: "source.repo_url", .. })));
        let mut e = sample();
        e.event_id = "evt-1\nConveyor-App: other".into();
        assert!(matches!(e.validate(), Err(ValidationError::ControlCharacter { field: "event_id" })));
        let mut big = serde_json::to_vec(&sample()).unwrap();
        big.extend(std::iter::repeat_n(b' ', MAX_EVENT_BYTES));
        assert!(matches!(ImageBuilt::from_json(&big), Err(ValidationError::TooLarge { .. })));
    }

    #[test]
    fn builds_and_intents_travel_on_their_own_subjects() {
        let mut e = sample();
        assert_eq!(e.subject(), "conveyor.images.built.flask-app");
        e.deploy = Some(DeployIntent {
            kind: IntentKind::Rollback,
            environment: "staging".into(),
            requested_by: "alice".into(),
            of_event: "x".into(),
            of_sequence: None,
            of_traceparent: None,
        });
        assert_eq!(e.subject(), "conveyor.images.deploy.flask-app");
    }

    #[test]
    fn rejects_other_versions() {
        let mut e = sample();
        e.version = 2;
        assert!(matches!(e.validate(), Err(ValidationError::UnsupportedVersion { found: 2, .. })));
    }

    #[test]
    fn a_promotion_is_validated_and_not_deduplicated_against_its_build() {
        let build = sample();
        let mut promo = sample();
        promo.event_id = "promo-1".into();
        promo.deploy = Some(DeployIntent {
            of_sequence: None,
            of_traceparent: None,
            kind: IntentKind::Promotion,
            environment: "production".into(),
            requested_by: "alice".into(),
            of_event: build.event_id.clone(),
        });
        assert!(promo.validate().is_ok());
        assert_ne!(promo.dedup_id(), build.dedup_id());
        promo.deploy.as_mut().unwrap().environment = "Prod!".into();
        assert!(matches!(promo.validate(), Err(ValidationError::InvalidEnvironment { .. })));
    }

    #[test]
    fn dedup_id_names_image_and_digest() {
        let e = sample();
        assert_eq!(e.dedup_id(), format!("127.0.0.1:5000/flask-app:3f2a9c1@sha256:{}", "ab".repeat(32)));
    }
}

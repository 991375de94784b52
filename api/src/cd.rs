//! cd-service's routes: `POST /promote`, `POST /replay`, `GET /history`, `GET /environments`,
//! `GET /outcomes` and `GET /readyz`. [`Outcome`] is the one type for what happened to an event, from the deploy
//! planner to the `/outcomes` list and the metrics' label.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use conveyor_proto::IntentKind;

/// `POST /promote`: deploy an already built image of `app` to `environment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub app: String,
    pub environment: String,
    pub tag: String,
    /// Who asks (recorded in the commit); `api` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// The answer to a promotion (`202 Accepted`): the published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteAccepted {
    pub event_id: String,
    pub sequence: u64,
    /// `repository:tag`.
    pub image: String,
    pub trace_id: Option<String>,
}

/// `POST /replay`: redeploy or roll back to an earlier event's image. Exactly one of `to:
/// "previous"`, `sequence` or `tag`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub app: String,
    /// `"previous"`: one step back in the environment's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The event's stream sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// The image tag of a build of this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The environment (needed when the app has several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Deploy into this other environment instead (a promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Answer with the diff it would commit; publish nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a replay: `202 Accepted` with the published event, or `200 OK` with the diff
/// of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPlan {
    pub app: String,
    pub environment: String,
    pub kind: IntentKind,
    pub image: String,
    pub digest: String,
    /// The replayed event and its stream sequence.
    pub of_event: String,
    pub of_sequence: u64,
    /// The published replay event (not for a dry run).
    pub event_id: Option<String>,
    pub sequence: Option<u64>,
    /// The diff a dry run would commit.
    pub diff: Option<String>,
    /// The trace of this replay (linked to the original build's).
    pub trace_id: Option<String>,
}

/// `GET /history?app=web&env=staging&limit=20`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One deployment of one image to one environment (`GET /history` lists them newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub app: String,
    pub environment: String,
    /// `repository:tag`.
    pub image: String,
    pub tag: String,
    pub digest: String,
    pub source_commit: String,
    /// `build`, `promotion`, `rollback` or `redeploy`.
    pub kind: String,
    pub event_id: String,
    /// The event's sequence in the stream, while it is still there.
    pub sequence: Option<u64>,
    pub build_id: String,
    /// For promotions and replays: the event whose image was deployed, and who asked.
    pub of_event: Option<String>,
    pub requested_by: Option<String>,
    pub trace_id: Option<String>,
    pub manifest_commit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub deployed_at: OffsetDateTime,
    /// When the deployed image's build started (orders builds; a rollback goes to an older one).
    #[serde(with = "time::serde::rfc3339::option")]
    pub build_started_at: Option<OffsetDateTime>,
}

/// One environment of one app (`GET /environments` lists every one of the manifest repository):
/// how new builds reach it and what Conveyor deployed there last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    pub app: String,
    pub environment: String,
    /// `auto` (every green build is deployed) or `manual` (only promotions and replays are).
    pub policy: String,
    /// Why new builds are held here (`pinned:` in conveyor.yaml); promotions still deploy.
    pub pinned: Option<String>,
    /// The newest deployment here, if Conveyor made one.
    pub current: Option<Deployment>,
}

/// `GET /outcomes?limit=100&outcome=dead_lettered`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only this kind ([`Outcome::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// What happened to one event. The deploy planner decides it; the consumer settles the message
/// by it (ack, dead letter, hand back); `/outcomes` and the metrics show it. On the wire it is
/// `"outcome": <name>` with `detail` and `commit` beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Its changes are in the pushed commit (empty until the batch's commit is pushed).
    Committed { commit: String },
    /// Committed for the environments in `applied`, refused for others (`detail`); also
    /// dead-lettered with that reason.
    Partial { commit: String, applied: Vec<String>, detail: String },
    /// Every reference already had this tag.
    AlreadyCurrent,
    /// The references that differ are pinned (`conveyor:pin`): `path:line, ...`.
    Pinned { detail: String },
    /// A build that started later is already deployed: not rolled back.
    Stale { detail: String },
    /// Every environment of the app is held (manual policy, or pinned in conveyor.yaml).
    Held { detail: String },
    /// It can never apply (invalid, untrusted, no reference, refused rewrite): in the
    /// dead-letter stream with this reason, nothing written.
    DeadLettered { detail: String },
    /// Applying failed for now: handed back for redelivery.
    Retry { detail: String },
}

impl Outcome {
    /// The stable word for this outcome, as on the wire and in the metrics' `outcome` label.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Committed { .. } => "committed",
            Outcome::Partial { .. } => "partial",
            Outcome::AlreadyCurrent => "already_current",
            Outcome::Pinned { .. } => "pinned",
            Outcome::Stale { .. } => "stale",
            Outcome::Held { .. } => "held",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Retry { .. } => "retry",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Committed { .. } | Outcome::AlreadyCurrent => None,
            Outcome::Partial { detail, .. }
            | Outcome::Pinned { detail }
            | Outcome::Stale { detail }
            | Outcome::Held { detail }
            | Outcome::DeadLettered { detail }
            | Outcome::Retry { detail } => Some(detail),
        }
    }

    pub fn commit(&self) -> Option<&str> {
        match self {
            Outcome::Committed { commit } | Outcome::Partial { commit, .. } => Some(commit),
            _ => None,
        }
    }

    /// Whether the event changed the manifests (its changes are in the batch's commit).
    pub fn writes(&self) -> bool {
        matches!(self, Outcome::Committed { .. } | Outcome::Partial { .. })
    }

    /// Not a success: traced as an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Partial { .. } | Outcome::DeadLettered { .. } | Outcome::Retry { .. })
    }

    /// Records the pushed commit of an event that wrote (a partial one's detail then names it).
    pub fn committed_as(&mut self, pushed: &str) {
        match self {
            Outcome::Committed { commit } => *commit = pushed.to_string(),
            Outcome::Partial { commit, applied, detail } => {
                *detail = format!("partly deployed: applied to {} in {pushed}; refused for {detail}", applied.join(", "));
                *commit = pushed.to_string();
            }
            _ => {}
        }
    }
}

/// One line of `GET /outcomes`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// Stream sequence of the event.
    pub sequence: u64,
    pub subject: String,
    pub app: Option<String>,
    pub image: Option<String>,
    /// The target environment of a promotion.
    pub promotion_to: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The trace the event continued (open it in Jaeger).
    pub trace_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `GET /readyz` of either service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_on_the_wire_under_its_name_and_reads_back() {
        let all = [
            Outcome::Committed { commit: "c".into() },
            Outcome::Partial { commit: "c".into(), applied: vec!["staging".into()], detail: "production: x".into() },
            Outcome::AlreadyCurrent,
            Outcome::Pinned { detail: "a.yaml:3".into() },
            Outcome::Stale { detail: "s".into() },
            Outcome::Held { detail: "h".into() },
            Outcome::DeadLettered { detail: "d".into() },
            Outcome::Retry { detail: "r".into() },
        ];
        let names = ["committed", "partial", "already_current", "pinned", "stale", "held", "dead_lettered", "retry"];
        for (o, name) in all.iter().zip(names) {
            assert_eq!(o.name(), name);
            let record = OutcomeRecord {
                sequence: 7,
                subject: "conveyor.images.built.web".into(),
                app: Some("web".into()),
                image: None,
                promotion_to: None,
                outcome: o.clone(),
                trace_id: None,
                at: OffsetDateTime::UNIX_EPOCH,
            };
            let v = serde_json::to_value(&record).unwrap();
            assert_eq!(v["outcome"], name);
            assert_eq!(v["detail"].as_str(), o.detail());
            assert_eq!(v["commit"].as_str(), o.commit());
            assert_eq!(serde_json::from_value::<OutcomeRecord>(v).unwrap(), record);
        }
    }

    #[test]
    fn a_partial_outcome_names_its_commit_once_pushed() {
        let mut o = Outcome::Partial { commit: String::new(), applied: vec!["staging".into()], detail: "production: left behind".into() };
        o.committed_as("abc");
        assert_eq!(o.commit(), Some("abc"));
        assert_eq!(o.detail(), Some("partly deployed: applied to staging in abc; refused for production: left behind"));
    }
}

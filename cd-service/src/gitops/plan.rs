//! The deploy planner: from a batch of events, the manifest repository's `conveyor.yaml` and
//! what is deployed, the edits to make in a work tree and one [`Outcome`] per event. It rewrites
//! files under `root` and nothing else: no git, no network, so it is tested on a plain
//! directory. The git steps around it (sync, commit, push) are in `mod.rs`.

use std::{collections::BTreeMap, path::Path};

use time::OffsetDateTime;
use tracing::field::Empty;

use super::GitOpsError;
use crate::{
    manifest_config::{self, ManifestConfig},
    rewrite::{self, Change, Target},
};
use conveyor_api::cd::Outcome;
use conveyor_proto::{trailers::rfc3339, ImageBuilt};

/// The edits of one batch and what they mean for each event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One per event, in order. A `Committed` or `Partial` one has an empty commit until the
    /// batch's commit is pushed ([`Outcome::committed_as`]).
    pub outcomes: Vec<Outcome>,
    pub changes: Vec<Change>,
    /// Per environment that changed: the events that changed it and the paths they changed.
    pub per_env: BTreeMap<String, (Vec<usize>, Vec<String>)>,
}

/// Plans `events` on the work tree at `root`. `deployed(app, env)` is when the build deployed
/// there now started; a build that started earlier is not deployed over it (unless the event is
/// a promotion or replay, which asks for exactly that image). `parent(i)` is the span event `i`'s
/// `rewrite` span hangs from.
pub fn plan<'a>(
    root: &Path,
    config: Option<&ManifestConfig>,
    events: &[ImageBuilt],
    deployed: impl Fn(&str, &str) -> Option<OffsetDateTime>,
    attempt: u32,
    parent: impl Fn(usize) -> &'a tracing::Span,
) -> Result<Plan, GitOpsError> {
    let mut plan = Plan::default();
    // What this batch deploys, over what `deployed` says.
    let mut planned: BTreeMap<(String, String), OffsetDateTime> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let span = tracing::info_span!(
            parent: parent(index),
            "rewrite",
            otel.status_code = Empty,
            otel.status_description = Empty,
            conveyor.app = %event.app,
            container.image.name = %event.image.repository,
            conveyor.image.tag = %event.image.tag,
            conveyor.attempt = attempt,
            conveyor.verdict = Empty,
        );
        let _in_rewrite = span.enter();
        let outcome = match manifest_config::placements(config, root, event) {
            Err(reason) => Outcome::DeadLettered { detail: reason },
            Ok(placements) => {
                let mut one = EventPlan::default();
                for placement in placements {
                    if let Some(why) = placement.held {
                        tracing::info!(app = %event.app, env = %placement.env, %why, "not deployed to this environment");
                        one.held.push(format!("{}: {why}", placement.env));
                        continue;
                    }
                    let key = (event.app.clone(), placement.env.clone());
                    let current = planned.get(&key).copied().or_else(|| deployed(&event.app, &placement.env));
                    if let Some(current) = current {
                        if event.deploy.is_none() && event.build_started_at < current {
                            one.stale = Some(rfc3339(current));
                            continue;
                        }
                    }
                    let target = target_of(event, &placement);
                    let rewrite = match rewrite::rewrite_scope(root, &placement.scope, &target) {
                        Ok(r) => r,
                        Err(e @ (rewrite::RewriteError::Verify { .. } | rewrite::RewriteError::LeftBehind { .. })) => {
                            // Logged here because another environment of the same event may still apply.
                            tracing::error!(app = %event.app, env = %placement.env, reason = %e, "rewrite refused: left this environment unchanged");
                            one.refused.push(format!("{}: {e}", placement.env));
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    for (path, line) in &rewrite.pinned {
                        tracing::info!(app = %event.app, env = %placement.env, %path, line, "reference pinned with conveyor:pin: left as it is");
                    }
                    one.references += rewrite.references;
                    one.pinned.extend(rewrite.pinned.iter().map(|(p, l)| format!("{p}:{l}")));
                    if !rewrite.changes.is_empty() {
                        planned.insert(key, event.build_started_at);
                        let entry = plan.per_env.entry(placement.env.clone()).or_default();
                        entry.0.push(index);
                        entry.1.extend(rewrite.changes.iter().map(|c| c.path.clone()));
                        plan.changes.extend(rewrite.changes);
                        one.applied.push(placement.env.clone());
                    }
                }
                one.outcome(event)
            }
        };
        span.record("conveyor.verdict", outcome.name());
        if outcome.is_error() {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", outcome.detail().unwrap_or_default());
        }
        plan.outcomes.push(outcome);
    }
    Ok(plan)
}

/// What one event's placements came to.
#[derive(Default)]
struct EventPlan {
    references: usize,
    pinned: Vec<String>,
    held: Vec<String>,
    stale: Option<String>,
    refused: Vec<String>,
    applied: Vec<String>,
}

impl EventPlan {
    fn outcome(self, event: &ImageBuilt) -> Outcome {
        match (self.applied.is_empty(), self.refused.is_empty(), self.stale) {
            (false, true, _) => Outcome::Committed { commit: String::new() },
            (false, false, _) => Outcome::Partial { commit: String::new(), applied: self.applied, detail: self.refused.join("; ") },
            (true, false, _) => Outcome::DeadLettered { detail: self.refused.join("; ") },
            (true, true, Some(at)) if self.references == 0 => Outcome::Stale { detail: format!("a build started at {at} is deployed") },
            _ if self.references == 0 && !self.held.is_empty() => Outcome::Held { detail: self.held.join("; ") },
            _ if self.references == 0 => Outcome::DeadLettered {
                detail: format!("no manifest references image repository {} (app {})", event.image.repository, event.app),
            },
            _ if !self.pinned.is_empty() => Outcome::Pinned { detail: self.pinned.join(", ") },
            _ => Outcome::AlreadyCurrent,
        }
    }
}

/// What to write for `event` in one placement.
pub(super) fn target_of<'a>(event: &'a ImageBuilt, placement: &'a manifest_config::Placement) -> Target<'a> {
    Target {
        app: &event.app,
        repository: &event.image.repository,
        tag: &event.image.tag,
        digest: &event.image.digest,
        pin_digest: placement.pin_digest,
        helm: placement.helm.as_ref().map(|h| (h.repository.as_str(), h.tag.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_proto::{ImageRef, SourceRef};

    fn event(tag: &str, started_at: i64) -> ImageBuilt {
        ImageBuilt {
            version: conveyor_proto::EVENT_VERSION,
            event_id: format!("e-{tag}"),
            app: "web".into(),
            image: ImageRef { repository: "127.0.0.1:5000/web".into(), tag: tag.into(), digest: format!("sha256:{}", "a".repeat(64)) },
            source: SourceRef { repo_url: "file:///src".into(), commit: "c".repeat(40), branch: "main".into() },
            build_id: "b".into(),
            built_at: OffsetDateTime::from_unix_timestamp(started_at + 10).unwrap(),
            build_started_at: OffsetDateTime::from_unix_timestamp(started_at).unwrap(),
            traceparent: None,
            deploy: None,
        }
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: 127.0.0.1:5000/web:v1 # the app\n";

    fn run(root: &Path, events: &[ImageBuilt], deployed: Option<i64>) -> Plan {
        let none = tracing::Span::none();
        let deployed = |_: &str, _: &str| deployed.map(|t| OffsetDateTime::from_unix_timestamp(t).unwrap());
        plan(root, None, events, deployed, 1, |_| &none).unwrap()
    }

    #[test]
    fn a_batch_writes_the_last_newer_build_and_says_what_each_event_came_to() {
        let dir = tree(&[("app.yaml", DEPLOYMENT)]);
        let events = [event("v2", 1000), event("v1", 900), event("v3", 1100), event("v3", 1200)];
        let p = run(dir.path(), &events, Some(950));
        assert_eq!(
            p.outcomes,
            vec![
                Outcome::Committed { commit: String::new() },
                Outcome::Stale { detail: "a build started at 1970-01-01T00:16:40Z is deployed".into() },
                Outcome::Committed { commit: String::new() },
                Outcome::AlreadyCurrent,
            ]
        );
        assert_eq!(p.per_env.get("default").map(|(i, _)| i.clone()), Some(vec![0, 2]));
        let text = std::fs::read_to_string(dir.path().join("app.yaml")).unwrap();
        assert!(text.contains("image: 127.0.0.1:5000/web:v3 # the app"), "{text}");
    }

    #[test]
    fn a_pinned_reference_and_a_missing_one_are_not_written() {
        let pinned = DEPLOYMENT.replace("# the app", "# conveyor:pin");
        let dir = tree(&[("app.yaml", &pinned)]);
        let p = run(dir.path(), &[event("v2", 1000)], None);
        assert_eq!(p.outcomes, vec![Outcome::Pinned { detail: "app.yaml:8".into() }]);
        assert!(p.per_env.is_empty() && p.changes.is_empty());
        assert_eq!(std::fs::read_to_string(dir.path().join("app.yaml")).unwrap(), pinned);

        let empty = tree(&[("other.yaml", "kind: ConfigMap\n")]);
        let p = run(empty.path(), &[event("v2", 1000)], None);
        assert!(matches!(&p.outcomes[0], Outcome::DeadLettered { detail } if detail.contains("no manifest references")));
    }

    #[test]
    fn a_replay_deploys_an_older_build_over_a_newer_one() {
        let dir = tree(&[("app.yaml", DEPLOYMENT)]);
        let mut replay = event("v0", 100);
        replay.deploy = Some(conveyor_proto::DeployIntent {
            kind: conveyor_proto::IntentKind::Rollback,
            environment: "default".into(),
            of_event: "e-v0".into(),
            of_sequence: Some(1),
            requested_by: "alice".into(),
            of_traceparent: None,
        });
        let p = run(dir.path(), &[replay], Some(5000));
        assert_eq!(p.outcomes, vec![Outcome::Committed { commit: String::new() }]);
    }
}

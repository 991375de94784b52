//! The deploy commit's message: subject, sources, and one block of `Conveyor-*` trailers per
//! event (their format is `conveyor_proto::trailers`, which also reads them back).

use crate::manifest_config::{self, ManifestConfig};
use conveyor_proto::{trailers::DeployRecord, ImageBuilt, IntentKind};

/// The subject from the template (or `deploy(<app>[/<env>]): <repository>:<tag>`, or
/// `deploy[(<env>)]: N images` for a batch), the sources, `[skip ci]` so the manifest
/// repository's own CI does not run, and one block of trailers per event tying the commit to its
/// build (and to the promotion, for one).
pub fn commit_message(config: Option<&ManifestConfig>, env: &str, events: &[&ImageBuilt], paths: &[&str]) -> String {
    let mut m = match events {
        [one] => format!("{}\n\n", manifest_config::subject(config, one, env)),
        many if env == manifest_config::DEFAULT_ENV => format!("deploy: {} images\n\n", many.len()),
        many => format!("deploy({env}): {} images\n\n", many.len()),
    };
    for e in events {
        match &e.deploy {
            Some(d) if d.kind == IntentKind::Promotion => m.push_str(&format!(
                "{}: promote {} to {} (requested by {}; image of event {}).\n",
                e.app,
                e.image.reference(),
                d.environment,
                d.requested_by,
                d.of_event
            )),
            Some(d) => m.push_str(&format!(
                "{}: {} {} to {} (replay of event {}{}, requested by {}).\n",
                e.app,
                if d.kind == IntentKind::Rollback { "roll back" } else { "redeploy" },
                d.environment,
                e.image.reference(),
                d.of_event,
                d.of_sequence.map(|s| format!(", stream sequence {s}")).unwrap_or_default(),
                d.requested_by
            )),
            None => m.push_str(&format!(
                "{}: {} built from {}@{} ({}) by build {}.\n",
                e.app,
                e.image.reference(),
                e.source.repo_url,
                e.source.commit,
                e.source.branch,
                e.build_id
            )),
        }
    }
    m.push_str("Updated:\n");
    for p in paths {
        m.push_str(&format!("  {p}\n"));
    }
    m.push_str("\n[skip ci]\n\n");
    for e in events {
        m.push_str(&DeployRecord::of_event(e, env).block());
    }
    m
}

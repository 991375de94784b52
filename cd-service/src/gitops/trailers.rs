//! The deploy commit's message: subject, sources and one block of `Conveyor-*` trailers per
//! event, and reading back (app, environment, build start) for the out-of-order guard.

use time::OffsetDateTime;

use crate::manifest_config::{self, ManifestConfig};
use conveyor_proto::{ImageBuilt, IntentKind};

const APP_TRAILER: &str = "Conveyor-App: ";
const STARTED_TRAILER: &str = "Conveyor-Build-Started-At: ";
const ENV_TRAILER: &str = "Conveyor-Environment: ";
const PROMOTION_TRAILER: &str = "Conveyor-Promotion: ";
const REPLAY_TRAILER: &str = "Conveyor-Replay: ";
const TRACE_TRAILER: &str = "Conveyor-Trace-Id: ";

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a UTC timestamp always formats as RFC 3339")
}

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
        m.push_str(&format!("{APP_TRAILER}{}\n", e.app));
        m.push_str(&format!("{ENV_TRAILER}{env}\n"));
        m.push_str(&format!("Conveyor-Image: {}\n", e.image.reference()));
        m.push_str(&format!("Conveyor-Source-Commit: {}\n", e.source.commit));
        m.push_str(&format!("Conveyor-Image-Digest: {}\n", e.image.digest));
        m.push_str(&format!("Conveyor-Event-Id: {}\n", e.event_id));
        m.push_str(&format!("Conveyor-Build-Id: {}\n", e.build_id));
        match &e.deploy {
            Some(d) if d.kind == IntentKind::Promotion => m.push_str(&format!("{PROMOTION_TRAILER}{} by {}\n", d.of_event, d.requested_by)),
            Some(d) => m.push_str(&format!("{REPLAY_TRAILER}{} {} by {}\n", d.kind.as_str(), d.of_event, d.requested_by)),
            None => {}
        }
        if let Some(trace_id) = e.traceparent.as_deref().and_then(conveyor_telemetry::context::trace_id_of) {
            m.push_str(&format!("{TRACE_TRAILER}{trace_id}\n"));
        }
        if let Some(trace_id) =
            e.deploy.as_ref().and_then(|d| d.of_traceparent.as_deref()).and_then(conveyor_telemetry::context::trace_id_of)
        {
            m.push_str(&format!("Conveyor-Original-Trace-Id: {trace_id}\n"));
        }
        m.push_str(&format!("{STARTED_TRAILER}{}\n", rfc3339(e.build_started_at)));
    }
    m
}

/// (app, environment, build start) for each event recorded in a deploy commit's trailers.
pub(super) fn deploy_trailers(message: &str) -> Vec<(String, String, OffsetDateTime)> {
    let mut out = Vec::new();
    let mut app: Option<&str> = None;
    let mut env = manifest_config::DEFAULT_ENV;
    for line in message.lines() {
        if let Some(a) = line.strip_prefix(APP_TRAILER) {
            app = Some(a.trim());
            env = manifest_config::DEFAULT_ENV;
        } else if let Some(e) = line.strip_prefix(ENV_TRAILER) {
            env = e.trim();
        } else if let (Some(a), Some(t)) = (app, line.strip_prefix(STARTED_TRAILER)) {
            if let Ok(t) = OffsetDateTime::parse(t.trim(), &time::format_description::well_known::Rfc3339) {
                out.push((a.to_string(), env.to_string(), t));
            }
            app = None;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_record_each_event_of_a_batch() {
        let msg = "deploy: 2 images\n\n[skip ci]\n\nConveyor-App: web\nConveyor-Build-Started-At: 2026-11-23T10:00:00Z\nConveyor-App: api\nConveyor-Image: x\nConveyor-Build-Started-At: 2026-11-23T11:00:00Z\n";
        let t = deploy_trailers(msg);
        assert_eq!(t.iter().map(|(a, e, _)| (a.as_str(), e.as_str())).collect::<Vec<_>>(), vec![("web", "default"), ("api", "default")]);
        assert!(t[0].2 < t[1].2);
        let with_env = "x\n\nConveyor-App: web\nConveyor-Environment: staging\nConveyor-Build-Started-At: 2026-11-23T10:00:00Z\n";
        assert_eq!(deploy_trailers(with_env)[0].1, "staging");
    }
}

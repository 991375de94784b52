//! Deploy history: what was deployed per app and environment, newest first, read from the
//! trailers of the manifest repository's deploy commits (the repository is the record of what
//! was deployed) and joined with the event stream for each event's sequence. It only reads.

use serde::Serialize;
use time::OffsetDateTime;

/// One deployment of one image to one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The deployments recorded in one commit message (one per trailer block).
pub fn parse_commit(commit: &str, when: OffsetDateTime, message: &str) -> Vec<Deployment> {
    let mut out: Vec<Deployment> = Vec::new();
    for line in message.lines() {
        let Some((key, value)) = line.split_once(": ") else { continue };
        let value = value.trim();
        if key == "Conveyor-App" {
            out.push(Deployment {
                app: value.to_string(),
                environment: crate::manifest_config::DEFAULT_ENV.to_string(),
                image: String::new(),
                tag: String::new(),
                digest: String::new(),
                source_commit: String::new(),
                kind: "build".into(),
                event_id: String::new(),
                sequence: None,
                build_id: String::new(),
                of_event: None,
                requested_by: None,
                trace_id: None,
                manifest_commit: commit.to_string(),
                deployed_at: when,
                build_started_at: None,
            });
            continue;
        }
        let Some(d) = out.last_mut() else { continue };
        match key {
            "Conveyor-Environment" => d.environment = value.to_string(),
            "Conveyor-Image" => {
                d.image = value.to_string();
                d.tag = value.rsplit_once(':').map(|(_, t)| t.to_string()).unwrap_or_default();
            }
            "Conveyor-Image-Digest" => d.digest = value.to_string(),
            "Conveyor-Source-Commit" => d.source_commit = value.to_string(),
            "Conveyor-Event-Id" => d.event_id = value.to_string(),
            "Conveyor-Build-Id" => d.build_id = value.to_string(),
            "Conveyor-Trace-Id" => d.trace_id = Some(value.to_string()),
            "Conveyor-Build-Started-At" => {
                d.build_started_at = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()
            }
            "Conveyor-Promotion" => {
                let (of, by) = value.split_once(" by ").unwrap_or((value, ""));
                d.kind = "promotion".into();
                d.of_event = Some(of.to_string());
                d.requested_by = Some(by.to_string());
            }
            "Conveyor-Replay" => {
                let (what, by) = value.split_once(" by ").unwrap_or((value, ""));
                let (kind, of) = what.split_once(' ').unwrap_or(("redeploy", what));
                d.kind = kind.to_string();
                d.of_event = Some(of.to_string());
                d.requested_by = Some(by.to_string());
            }
            _ => {}
        }
    }
    out.retain(|d| !d.image.is_empty());
    out
}

/// The deployments of `app` (in `env`, or every environment), newest first, from a commit log
/// (newest commit first).
pub fn from_log(log: &[(String, OffsetDateTime, String)], app: &str, env: Option<&str>, limit: usize) -> Vec<Deployment> {
    // Within one commit (a batch), later trailer blocks were applied later: newest first too.
    log.iter()
        .flat_map(|(id, when, message)| parse_commit(id, *when, message).into_iter().rev())
        .filter(|d| d.app == app && env.is_none_or(|e| d.environment == e))
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_builds_promotions_and_replays_from_trailers() {
        let msg = "deploy: 2 images\n\n[skip ci]\n\n\
            Conveyor-App: web\nConveyor-Environment: staging\nConveyor-Image: reg:5000/team/web:v2\n\
            Conveyor-Source-Commit: abc\nConveyor-Image-Digest: sha256:aa\nConveyor-Event-Id: e2\nConveyor-Build-Id: 7\n\
            Conveyor-Trace-Id: 0af7651916cd43dd8448eb211c80319c\nConveyor-Build-Started-At: 2026-11-23T10:00:00Z\n\
            Conveyor-App: api\nConveyor-Image: reg/api:v1\nConveyor-Event-Id: r1\nConveyor-Build-Id: 3\n\
            Conveyor-Replay: rollback e0 by alice\nConveyor-Build-Started-At: 2026-11-23T09:00:00Z\n";
        let when = OffsetDateTime::UNIX_EPOCH;
        let d = parse_commit("c1", when, msg);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].app.as_str(), d[0].environment.as_str(), d[0].tag.as_str(), d[0].kind.as_str()),
            ("web", "staging", "v2", "build")
        );
        assert_eq!(d[0].trace_id.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!((d[1].environment.as_str(), d[1].kind.as_str(), d[1].of_event.as_deref()), ("default", "rollback", Some("e0")));
        assert_eq!(d[1].requested_by.as_deref(), Some("alice"));
        let log = vec![("c1".to_string(), when, msg.to_string()), ("c0".into(), when, "human edit".into())];
        assert_eq!(from_log(&log, "web", Some("staging"), 10).len(), 1);
        assert!(from_log(&log, "web", Some("production"), 10).is_empty());
    }
}

//! The `Conveyor-*` trailers of a deploy commit: one block per event it deployed, written by
//! cd-service and read back (with git's own trailer parser, `git2::message_trailers_strs`) by the
//! deploy index, the history API, the test harness and the benchmarks. The manifest repository
//! is the record of what was deployed; this module is the one place that knows its format.

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{ImageBuilt, IntentKind};

pub const APP: &str = "Conveyor-App";
pub const ENVIRONMENT: &str = "Conveyor-Environment";
pub const IMAGE: &str = "Conveyor-Image";
pub const SOURCE_COMMIT: &str = "Conveyor-Source-Commit";
pub const IMAGE_DIGEST: &str = "Conveyor-Image-Digest";
pub const EVENT_ID: &str = "Conveyor-Event-Id";
pub const BUILD_ID: &str = "Conveyor-Build-Id";
pub const PROMOTION: &str = "Conveyor-Promotion";
pub const REPLAY: &str = "Conveyor-Replay";
pub const TRACE_ID: &str = "Conveyor-Trace-Id";
pub const ORIGINAL_TRACE_ID: &str = "Conveyor-Original-Trace-Id";
pub const BUILD_STARTED_AT: &str = "Conveyor-Build-Started-At";

/// The environment of a block without `Conveyor-Environment` (commits from before
/// environments existed).
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// One deployed event, as its trailer block records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRecord {
    pub app: String,
    pub environment: String,
    /// `repository:tag`.
    pub image: String,
    pub source_commit: String,
    pub digest: String,
    pub event_id: String,
    pub build_id: String,
    /// `None` for a build; a promotion or replay with the event whose image it deployed and who
    /// asked.
    pub intent: Option<Intent>,
    pub trace_id: Option<String>,
    pub original_trace_id: Option<String>,
    pub build_started_at: Option<OffsetDateTime>,
}

/// A promotion or replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub kind: IntentKind,
    pub of_event: String,
    pub requested_by: String,
}

impl DeployRecord {
    /// The record of deploying `event` to `environment`.
    pub fn of_event(event: &ImageBuilt, environment: &str) -> Self {
        let trace_of = |tp: &str| crate::validate::traceparent(tp).ok().map(|()| tp[3..35].to_string());
        Self {
            app: event.app.clone(),
            environment: environment.to_string(),
            image: event.image.reference(),
            source_commit: event.source.commit.clone(),
            digest: event.image.digest.clone(),
            event_id: event.event_id.clone(),
            build_id: event.build_id.clone(),
            intent: event.deploy.as_ref().map(|d| Intent {
                kind: d.kind,
                of_event: d.of_event.clone(),
                requested_by: d.requested_by.clone(),
            }),
            trace_id: event.traceparent.as_deref().and_then(trace_of),
            original_trace_id: event.deploy.as_ref().and_then(|d| d.of_traceparent.as_deref()).and_then(trace_of),
            build_started_at: Some(event.build_started_at),
        }
    }

    /// The tag of [`DeployRecord::image`].
    pub fn tag(&self) -> &str {
        self.image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/')).unwrap_or_default()
    }

    /// `build`, `promotion`, `rollback` or `redeploy`.
    pub fn kind(&self) -> &'static str {
        self.intent.as_ref().map_or("build", |i| i.kind.as_str())
    }

    /// The block's lines, each ending in a newline; `Conveyor-App` first (it starts a block) and
    /// `Conveyor-Build-Started-At` last.
    pub fn block(&self) -> String {
        let mut m = String::new();
        let mut line = |key: &str, value: &str| {
            m.push_str(key);
            m.push_str(": ");
            m.push_str(value);
            m.push('\n');
        };
        line(APP, &self.app);
        line(ENVIRONMENT, &self.environment);
        line(IMAGE, &self.image);
        line(SOURCE_COMMIT, &self.source_commit);
        line(IMAGE_DIGEST, &self.digest);
        line(EVENT_ID, &self.event_id);
        line(BUILD_ID, &self.build_id);
        match &self.intent {
            Some(i) if i.kind == IntentKind::Promotion => line(PROMOTION, &format!("{} by {}", i.of_event, i.requested_by)),
            Some(i) => line(REPLAY, &format!("{} {} by {}", i.kind.as_str(), i.of_event, i.requested_by)),
            None => {}
        }
        if let Some(t) = &self.trace_id {
            line(TRACE_ID, t);
        }
        if let Some(t) = &self.original_trace_id {
            line(ORIGINAL_TRACE_ID, t);
        }
        if let Some(t) = self.build_started_at {
            line(BUILD_STARTED_AT, &rfc3339(t));
        }
        m
    }
}

/// `t` as RFC 3339 (how trailers and the API write times).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("a UTC timestamp always formats as RFC 3339")
}

/// Every (key, value) trailer of a commit message, in order, as git reads them (the last
/// paragraph, when it is made of trailers). A message git cannot read gives none.
pub fn pairs(message: &str) -> Vec<(String, String)> {
    match git2::message_trailers_strs(message) {
        Ok(t) => t.iter().map(|(k, v)| (k.to_string(), v.trim().to_string())).collect(),
        Err(_) => Vec::new(),
    }
}

/// Every value of the trailer `key` in a commit message, in order.
pub fn values(message: &str, key: &str) -> Vec<String> {
    pairs(message).into_iter().filter(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v).collect()
}

/// The deploy records of a commit message, in the order they were applied. A block without an
/// image is dropped; unknown trailers are ignored, so other tools may add their own.
pub fn parse(message: &str) -> Vec<DeployRecord> {
    let mut out: Vec<DeployRecord> = Vec::new();
    for (key, value) in pairs(message) {
        if key.eq_ignore_ascii_case(APP) {
            out.push(DeployRecord {
                app: value,
                environment: DEFAULT_ENVIRONMENT.to_string(),
                image: String::new(),
                source_commit: String::new(),
                digest: String::new(),
                event_id: String::new(),
                build_id: String::new(),
                intent: None,
                trace_id: None,
                original_trace_id: None,
                build_started_at: None,
            });
            continue;
        }
        let Some(d) = out.last_mut() else { continue };
        let intent = |kind, what: &str| {
            let (of, by) = what.split_once(" by ").unwrap_or((what, ""));
            Some(Intent { kind, of_event: of.to_string(), requested_by: by.to_string() })
        };
        match key.as_str() {
            k if k.eq_ignore_ascii_case(ENVIRONMENT) => d.environment = value,
            k if k.eq_ignore_ascii_case(IMAGE) => d.image = value,
            k if k.eq_ignore_ascii_case(IMAGE_DIGEST) => d.digest = value,
            k if k.eq_ignore_ascii_case(SOURCE_COMMIT) => d.source_commit = value,
            k if k.eq_ignore_ascii_case(EVENT_ID) => d.event_id = value,
            k if k.eq_ignore_ascii_case(BUILD_ID) => d.build_id = value,
            k if k.eq_ignore_ascii_case(TRACE_ID) => d.trace_id = Some(value),
            k if k.eq_ignore_ascii_case(ORIGINAL_TRACE_ID) => d.original_trace_id = Some(value),
            k if k.eq_ignore_ascii_case(BUILD_STARTED_AT) => d.build_started_at = OffsetDateTime::parse(&value, &Rfc3339).ok(),
            k if k.eq_ignore_ascii_case(PROMOTION) => d.intent = intent(IntentKind::Promotion, &value),
            k if k.eq_ignore_ascii_case(REPLAY) => {
                let (kind, of) = value.split_once(' ').unwrap_or(("redeploy", &value));
                let kind = if kind == "rollback" { IntentKind::Rollback } else { IntentKind::Redeploy };
                d.intent = intent(kind, of);
            }
            _ => {}
        }
    }
    out.retain(|d| !d.image.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "deploy: 2 images\n\nweb: built.\nUpdated:\n  a.yaml\n\n[skip ci]\n\n\
        Conveyor-App: web\nConveyor-Environment: staging\nConveyor-Image: reg:5000/team/web:v2\n\
        Conveyor-Source-Commit: abc\nConveyor-Image-Digest: sha256:aa\nConveyor-Event-Id: e2\nConveyor-Build-Id: 7\n\
        Conveyor-Trace-Id: 0af7651916cd43dd8448eb211c80319c\nConveyor-Build-Started-At: 2026-11-23T10:00:00Z\n\
        Conveyor-App: api\nConveyor-Image: reg/api:v1\nConveyor-Event-Id: r1\nConveyor-Build-Id: 3\n\
        Conveyor-Replay: rollback e0 by alice\nConveyor-Build-Started-At: 2026-11-23T09:00:00Z\n";

    #[test]
    fn reads_each_block_of_a_batch_in_order() {
        let r = parse(BATCH);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].app.as_str(), r[0].environment.as_str(), r[0].tag(), r[0].kind()), ("web", "staging", "v2", "build"));
        assert_eq!(r[0].trace_id.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!((r[1].environment.as_str(), r[1].kind()), (DEFAULT_ENVIRONMENT, "rollback"));
        let i = r[1].intent.as_ref().unwrap();
        assert_eq!((i.of_event.as_str(), i.requested_by.as_str()), ("e0", "alice"));
        assert!(r[1].build_started_at < r[0].build_started_at);
        assert_eq!(values(BATCH, EVENT_ID), vec!["e2", "r1"]);
    }

    #[test]
    fn trailer_like_lines_in_the_body_are_not_trailers() {
        // Only the last paragraph holds trailers: a body line that looks like one is text.
        let msg = "deploy\n\nConveyor-App: fake\nConveyor-Image: evil:1\n\nSigned-off-by: someone\n";
        assert!(parse(msg).is_empty());
        assert!(parse("human edit of a.yaml").is_empty());
    }

    #[test]
    fn a_block_written_reads_back_the_same() {
        let record = DeployRecord {
            app: "web".into(),
            environment: "production".into(),
            image: "127.0.0.1:5000/web:1.2".into(),
            source_commit: "c".repeat(40),
            digest: format!("sha256:{}", "a".repeat(64)),
            event_id: "e1".into(),
            build_id: "b1".into(),
            intent: Some(Intent { kind: IntentKind::Promotion, of_event: "e0".into(), requested_by: "bob".into() }),
            trace_id: Some("1".repeat(32)),
            original_trace_id: Some("2".repeat(32)),
            build_started_at: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()),
        };
        let msg = format!("deploy(production): web\n\n[skip ci]\n\n{}{}", record.block(), record.block());
        assert_eq!(parse(&msg), vec![record.clone(), record]);
    }
}

//! cd-service's spans, exported through the real telemetry setup (the same `Telemetry` the
//! binary installs) to an OTLP receiver that decodes the protobuf: an event carrying a trace
//! context is continued by `consume`, and a push that finds the manifest branch moved is
//! retried: the refusal is an event on the first `git.push` span, the second try its own span.
//! One test per binary: the subscriber is global to the process.

mod common;
use common::{applied, image_built, race_the_next_push, seeded_repo, start_cd_ssh};

use std::path::Path;

use conveyor_telemetry::{Export, Protocol, RequestSpans, Settings, Telemetry};
use conveyor_testkit::{otlp::describe, otlp::OtlpReceiver, TestNats, TestSshd};

const TRACE: &str = "5c1c63257de34c67a6b1a3f0e5a1d4b2";
const PUBLISH_SPAN: &str = "a1b2c3d4e5f60718";

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_branch_is_retried_as_an_event_on_the_git_push_span() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = Telemetry::install(Settings {
        service_name: "cd-service".into(),
        log_filter: "warn".into(),
        export: Some(Export { protocol: Protocol::HttpProtobuf, endpoint: format!("{}/v1/traces", receiver.http_base), certificate: None }),
        disabled: false,
        request_spans: RequestSpans::Lean { always_on: false },
    })
    .expect("install telemetry");

    let (nats, sshd) = (TestNats::start().await, TestSshd::start().await);
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests")));
    let cd = start_cd_ssh(&nats, &sshd, &bare).await;
    let marker = race_the_next_push(dir.path(), &bare);

    let mut event = image_built("web", "registry.example.test/team/web", "v3", time::OffsetDateTime::now_utc());
    event.traceparent = Some(format!("00-{TRACE}-{PUBLISH_SPAN}-01"));
    applied(&nats, nats.publish_event(&event).await).await;
    assert!(marker.exists(), "the racing push happened");
    let message = bare.message("main");
    assert!(message.contains(&format!("Conveyor-Trace-Id: {TRACE}")), "{message}");
    drop(cd);
    // Flushes the batch exporter.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let trace = receiver.trace(TRACE);
    let all = describe(&trace);
    let consume: Vec<_> = trace.iter().filter(|s| s.name == "consume").collect();
    assert_eq!(consume.len(), 1, "{all}");
    let consume = consume[0];
    assert_eq!(consume.parent_span_id.as_deref(), Some(PUBLISH_SPAN), "continues the event's trace context");
    assert_eq!(consume.attr("conveyor.outcome"), Some("committed"));

    let pushes: Vec<_> = trace.iter().filter(|s| s.name == "git.push").collect();
    assert_eq!(pushes.len(), 2, "one span per try:\n{all}");
    let (first, second) = if pushes[0].attr("conveyor.attempt") == Some("1") { (pushes[0], pushes[1]) } else { (pushes[1], pushes[0]) };
    for p in [first, second] {
        assert_eq!(p.parent_span_id.as_deref(), Some(consume.span_id.as_str()), "{all}");
    }
    assert_eq!(first.attr("conveyor.push.result"), Some("branch_moved"));
    assert!(
        first
            .events
            .iter()
            .any(|(name, attrs)| name == "manifest branch moved; re-applying on the new head" && attrs.get("attempt").is_some()),
        "the retry is an event on the span: {:?}",
        first.events
    );
    assert_eq!((second.attr("conveyor.attempt"), second.attr("conveyor.push.result")), (Some("2"), Some("pushed")));
    let head = bare.head("main").unwrap();
    assert_eq!(second.attr("vcs.ref.head.revision"), Some(head.as_str()), "the pushed deploy commit");
    let rewrites = trace.iter().filter(|s| s.name == "rewrite" && s.parent_span_id.as_deref() == Some(consume.span_id.as_str())).count();
    assert_eq!(rewrites, 2, "the edit is re-derived on the new head:\n{all}");
}

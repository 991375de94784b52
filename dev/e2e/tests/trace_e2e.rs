//! One trace per push across both services, checked on what the real binaries export: an OTLP
//! receiver (standing in for Jaeger) decodes the protobuf they send over HTTP or gRPC, and the
//! tests follow the parent/child chain from the webhook to the manifest push. Also: the trace id
//! in build records, API answers and the commit trailer; a failed build's error spans; an
//! incoming `traceparent` honoured; a replay linked to the build it replays; the metrics.

use std::time::Duration;

use conveyor_e2e::{Stack, APP};
use conveyor_testkit::otlp::{describe, OtlpReceiver, Span, Transport};
use serde_json::Value;

const BUILD_LIMIT: Duration = Duration::from_secs(600);
const SPANS_LIMIT: Duration = Duration::from_secs(30);

/// OTLP settings for both services, by the standard variables only.
fn otel_env(receiver: &OtlpReceiver, protocol: &str) -> Vec<(&'static str, String)> {
    let endpoint = if protocol == "grpc" { receiver.grpc_endpoint.clone() } else { receiver.http_base.clone() };
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        // Export every 200 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ]
}

fn one<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.service == service && s.name == name).collect();
    assert_eq!(found.len(), 1, "exactly one {service} span {name:?} in:\n{}", describe(spans));
    found[0]
}

fn has(spans: &[Span], service: &str, name: &str) -> bool {
    spans.iter().any(|s| s.service == service && s.name == name)
}

/// Every parent is in the trace, and exactly one span is the root.
fn assert_no_orphans(spans: &[Span]) -> &Span {
    for s in spans {
        if let Some(p) = &s.parent_span_id {
            assert!(spans.iter().any(|o| &o.span_id == p), "orphan span {} (parent {p} not in the trace):\n{}", s.name, describe(spans));
        }
    }
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root:\n{}", describe(spans));
    roots[0]
}

fn child_of(span: &Span, parent: &Span) {
    assert_eq!(span.parent_span_id.as_deref(), Some(parent.span_id.as_str()), "{} is a child of {}", span.name, parent.name);
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_push_from_the_webhook_to_the_manifest_push_over_otlp_http() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start_with(&otel_env(&receiver, "http/protobuf")).await.expect("stack starts");
    let before = stack.manifest_repo.head("main").unwrap();

    let (commit, _) = stack.push_example_app("flask-app: traced");
    let build = stack.wait_build(&commit, BUILD_LIMIT).await.unwrap();
    assert_eq!(build["state"], "succeeded", "{build}");
    let trace_id = build["trace_id"].as_str().expect("the build record has the trace id").to_string();
    let head = stack.wait_manifest_commit(&before, Duration::from_secs(60)).await.unwrap();
    let message = stack.manifest_repo.message(&head);
    assert!(message.contains(&format!("Conveyor-Trace-Id: {trace_id}")), "the commit names the trace:\n{message}");
    let logs = stack.build_logs(&build).await.unwrap();
    assert!(logs.contains(&format!("trace {trace_id}")), "the build log names the trace:\n{logs}");
    assert!(stack.service_log("cd-service").contains(&trace_id), "cd-service's log lines carry the trace id");

    let spans = receiver
        .wait_until(SPANS_LIMIT, "the whole trace", |s| {
            let t: Vec<Span> = s.iter().filter(|x| x.trace_id == trace_id).cloned().collect();
            has(&t, "cd-service", "git.push") && has(&t, "cd-service", "consume") && has(&t, "ci-service", "publish")
        })
        .await;
    let trace: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
    let root = assert_no_orphans(&trace);

    let receive = one(&trace, "ci-service", "receive");
    assert_eq!(root.span_id, receive.span_id, "the webhook's span is the root");
    assert_eq!(receive.kind, 2, "server span");
    assert_eq!(receive.attr("http.route"), Some("/hooks/push"));
    assert_eq!(receive.attr("http.response.status_code"), Some("202"));
    assert_eq!(receive.attr("vcs.ref.head.revision"), Some(commit.as_str()));
    assert_eq!(receive.attr("conveyor.build.id"), Some(build["id"].to_string().as_str()));

    let pipeline = one(&trace, "ci-service", "pipeline");
    child_of(pipeline, receive);
    assert_eq!(pipeline.kind, 5, "consumer of the build queue");
    assert_eq!(pipeline.attr("conveyor.build.result"), Some("succeeded"));
    for step in ["checkout", "build", "test", "smoke", "push", "publish"] {
        let s = one(&trace, "ci-service", step);
        child_of(s, pipeline);
        assert_eq!(s.status_code, 0, "{step} did not fail");
    }
    let push = one(&trace, "ci-service", "push");
    assert_eq!(push.attr("oci.manifest.digest"), build["digest"].as_str());
    assert_eq!(push.attr("container.image.name"), Some(format!("{}/{APP}", stack.registry.addr).as_str()));
    let publish = one(&trace, "ci-service", "publish");
    assert_eq!(publish.kind, 4, "producer");
    assert_eq!(publish.attr("messaging.system"), Some("nats"));
    assert_eq!(publish.attr("messaging.destination.name"), Some("conveyor.images.built.flask-app"));

    let consume = one(&trace, "cd-service", "consume");
    child_of(consume, publish);
    assert_eq!(consume.kind, 5, "consumer");
    assert_eq!(consume.attr("conveyor.outcome"), Some("committed"));
    assert_eq!(consume.attr("conveyor.manifest.commit"), Some(head.as_str()));
    assert_eq!(consume.attr("conveyor.image.tag"), Some(&commit[..12]));
    for name in ["rewrite", "commit", "git.push"] {
        child_of(one(&trace, "cd-service", name), consume);
    }
    let git_push = one(&trace, "cd-service", "git.push");
    assert_eq!(git_push.kind, 3, "client");
    assert_eq!(git_push.attr("conveyor.push.result"), Some("pushed"));
    assert_eq!(git_push.attr("vcs.ref.head.revision"), Some(head.as_str()));
    assert!(receiver.requests(Transport::Http) > 0 && receiver.requests(Transport::Grpc) == 0);

    // A replay is its own trace, linked to the build it replays.
    let (ok, out, err) = stack.conveyor(&["replay", APP, "--env", "staging", "--tag", &commit[..12], "--json"]);
    assert!(ok, "{out}{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let replay_trace = plan["trace_id"].as_str().expect("the replay answer has its trace id").to_string();
    assert_ne!(replay_trace, trace_id);
    let spans = receiver
        .wait_until(SPANS_LIMIT, "the replay's consume span", |s| s.iter().any(|x| x.trace_id == replay_trace && x.name == "consume"))
        .await;
    let replay: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == replay_trace).collect();
    assert_no_orphans(&replay);
    let request = one(&replay, "cd-service", "replay");
    let consume = one(&replay, "cd-service", "consume");
    child_of(consume, request);
    let original = (trace_id.clone(), publish.span_id.clone());
    assert!(request.links.contains(&original) && consume.links.contains(&original), "linked to the original publish:\n{:?}", consume.links);

    // The metrics counted it all.
    let ci = metrics(&stack.ci_url).await;
    assert!(ci.contains("conveyor_ci_builds_total{result=\"succeeded\"} 1"), "{ci}");
    assert!(ci.contains("conveyor_ci_webhooks_total{outcome=\"queued\"} 1"), "{ci}");
    assert!(ci.contains("conveyor_ci_step_duration_seconds_count{step=\"test\",result=\"succeeded\"} 1"), "{ci}");
    assert!(ci.contains("conveyor_ci_queue_pending 0"), "{ci}");
    let cd = metrics(&stack.cd_url).await;
    assert!(cd.contains("conveyor_cd_events_total{outcome=\"committed\"} 1"), "{cd}");
    assert!(cd.contains("conveyor_cd_events_total{outcome=\"already_current\"} 1"), "the replay found the tag current:\n{cd}");
    assert!(cd.contains("conveyor_cd_commits_pushed_total 1"), "{cd}");
    assert!(cd.contains("conveyor_cd_consumer_pending 0"), "{cd}");
    for url in [&stack.ci_url, &stack.cd_url] {
        let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200, "{url} is ready");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_build_and_a_garbage_event_are_error_spans_over_otlp_grpc() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start_with(&otel_env(&receiver, "grpc")).await.expect("stack starts");

    conveyor_testkit::copy_tree(&conveyor_testkit::repo_root().join("examples/flask-app"), &stack.dev.path);
    let app = std::fs::read_to_string(stack.dev.path.join("app.py")).unwrap();
    stack.dev.write("app.py", &app.replace("Hello from flask-app", "Hello from a broken change"));
    let commit = stack.dev.commit_all("flask-app: breaks a test");
    stack.dev.push();
    let build = stack.wait_build(&commit, BUILD_LIMIT).await.unwrap();
    assert_eq!(build["state"], "failed");
    let trace_id = build["trace_id"].as_str().unwrap().to_string();

    let spans = receiver
        .wait_until(SPANS_LIMIT, "the failed build's trace", |s| {
            s.iter().any(|x| x.trace_id == trace_id && x.name == "pipeline")
                && s.iter().any(|x| x.trace_id == trace_id && x.name == "receive")
        })
        .await;
    let trace: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
    assert_no_orphans(&trace);
    let pipeline = one(&trace, "ci-service", "pipeline");
    child_of(pipeline, one(&trace, "ci-service", "receive"));
    assert_eq!(pipeline.status_code, 2, "the build's span is an error");
    assert!(pipeline.status_message.starts_with("test:"), "{}", pipeline.status_message);
    let test = one(&trace, "ci-service", "test");
    child_of(test, pipeline);
    assert_eq!(test.status_code, 2);
    assert!(
        test.events.iter().any(|(name, attrs)| name == "exception" && attrs.get("exception.message").is_some_and(|m| m.contains("exit"))),
        "the error is recorded on the test span: {:?}",
        test.events
    );
    assert!(!has(&trace, "ci-service", "push") && !has(&trace, "ci-service", "publish") && !has(&trace, "cd-service", "consume"));
    assert!(receiver.requests(Transport::Grpc) > 0 && receiver.requests(Transport::Http) == 0);

    // An incoming traceparent is honoured: a manual build continues the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/builds", stack.ci_url))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&serde_json::json!({ "repo_url": stack.app_repo.url(), "ref": "refs/heads/main", "commit": commit }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["trace_id"], caller_trace, "{answer}");
    let spans = receiver
        .wait_until(SPANS_LIMIT, "the caller's trace", |s| s.iter().any(|x| x.trace_id == caller_trace && x.name == "receive"))
        .await;
    let receive = spans.iter().find(|s| s.trace_id == caller_trace && s.name == "receive").unwrap();
    assert_eq!(receive.parent_span_id.as_deref(), Some(caller_span));

    // A garbage event carrying a trace context: cd-service's consume span continues it, is an
    // error, and the event is dead-lettered (and counted).
    let js = stack.nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    let garbage_trace = "0af7651916cd43dd8448eb211c80319c";
    headers.insert("traceparent", format!("00-{garbage_trace}-b7ad6b7169203331-01").as_str());
    js.publish_with_headers(format!("conveyor.images.built.{APP}"), headers, "{not an event".into()).await.unwrap().await.unwrap();
    let spans = receiver.wait_until(SPANS_LIMIT, "the garbage event's span", |s| s.iter().any(|x| x.trace_id == garbage_trace)).await;
    let consume = spans.iter().find(|s| s.trace_id == garbage_trace).unwrap();
    assert_eq!((consume.service.as_str(), consume.name.as_str()), ("cd-service", "consume"));
    assert_eq!(consume.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(consume.status_code, 2);
    assert_eq!(consume.attr("conveyor.outcome"), Some("dead_lettered"));
    let cd = metrics(&stack.cd_url).await;
    assert!(cd.contains("conveyor_cd_events_total{outcome=\"dead_lettered\"} 1"), "{cd}");
    let ci = metrics(&stack.ci_url).await;
    assert!(ci.contains("conveyor_ci_builds_total{result=\"failed\"} 1"), "{ci}");
    assert!(ci.contains("conveyor_ci_step_duration_seconds_count{step=\"test\",result=\"failed\"} 1"), "{ci}");
}

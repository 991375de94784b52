//! The demo's loop as tests, on real components and the real service binaries: a `git push` of
//! the Flask app ends as a manifest commit with the new tag in the staging overlay (what Argo CD
//! or Flux would apply, rendered by kustomize), and a promotion takes it to production; a push
//! whose tests fail publishes no event and changes no manifest.

use std::time::Duration;

use conveyor_e2e::{new_tag, unquote_tag, Stack, APP, PRODUCTION, STAGING};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};

const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn git_push_of_the_flask_app_ends_as_a_manifest_commit_with_the_new_tag() {
    let stack = Stack::start().await.expect("stack starts");
    let before = stack.manifest_repo.head("main").unwrap();

    let (commit, hook_output) = stack.push_example_app("flask-app: first version");
    assert!(hook_output.contains("build_id"), "the post-receive hook reached ci-service:\n{hook_output}");

    let build = stack.wait_build(&commit, BUILD_LIMIT).await.unwrap();
    let logs = stack.build_logs(&build).await.unwrap();
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");
    assert!(logs.contains("2 passed"), "pytest ran the app's two tests in the image:\n{logs}");
    let steps: Vec<&str> = build["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["checkout", "build", "test", "smoke", "push", "publish"], "the app's .conveyor.yml smoke test ran");
    assert!(logs.contains("[smoke]") && logs.contains("GET /healthz"), "the Flask app served the smoke checks:\n{logs}");

    let tag = &commit[..12];
    let digest = stack.registry.manifest_digest(APP, tag).await.expect("the image is in the registry");
    assert_eq!(build["digest"].as_str(), Some(digest.as_str()));

    let events = stack.nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(events.len(), 1);
    let event = ImageBuilt::from_json(&events[0].1).unwrap();
    assert_eq!((event.app.as_str(), event.image.tag.as_str(), event.image.digest.as_str()), (APP, tag, digest.as_str()));
    assert_eq!(event.source.commit, commit);

    let head = stack.wait_manifest_commit(&before, Duration::from_secs(60)).await.unwrap();
    let staging = stack.manifest_repo.show(&head, STAGING);
    assert_eq!(new_tag(&staging), tag, "staging's overlay has the new tag:\n{staging}");
    let original = stack.manifest_repo.show(&before, STAGING);
    assert_eq!(unquote_tag(&staging, tag), original.replace("newTag: initial", &format!("newTag: {tag}")), "only the tag changed");
    assert_eq!(
        stack.manifest_repo.show(&head, PRODUCTION),
        stack.manifest_repo.show(&before, PRODUCTION),
        "production waits for a promotion"
    );
    // What Argo CD or Flux applies from that commit.
    let image = format!("{}/{APP}:{tag}", stack.registry.addr);
    assert_eq!(stack.deployed_image(&head, "staging").unwrap(), image);
    assert_eq!(stack.deployed_image(&head, "production").unwrap(), format!("{}/{APP}:initial", stack.registry.addr));
    let message = stack.manifest_repo.message(&head);
    assert!(message.contains(&format!("Conveyor-Source-Commit: {commit}")) && message.contains(&digest), "{message}");
    // No OTLP endpoint here (the default): nothing is exported, yet the push has a trace id that
    // the record, both services' logs and the commit share.
    let trace_id = build["trace_id"].as_str().expect("a trace id without any exporter");
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{trace_id}");
    assert!(message.contains(&format!("Conveyor-Trace-Id: {trace_id}")), "{message}");
    assert!(stack.service_log("cd-service").contains(trace_id) && stack.service_log("ci-service").contains(trace_id));
    assert_eq!(stack.manifest_repo.count("main"), 2, "exactly one manifest commit");

    // Promote the same image to production: its own commit, production's overlay only.
    let (ok, out, err) = stack.conveyor(&["promote", APP, "--to", "production", "--tag", tag, "--as", "e2e"]);
    assert!(ok, "{out}{err}");
    let promoted = stack.wait_manifest_commit(&head, Duration::from_secs(60)).await.unwrap();
    assert_eq!(stack.deployed_image(&promoted, "production").unwrap(), image);
    assert_eq!(stack.manifest_repo.show(&promoted, STAGING), staging);
    let message = stack.manifest_repo.message(&promoted);
    assert!(message.contains("requested by e2e") && message.contains("Conveyor-Environment: production"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_whose_tests_fail_publishes_nothing_and_changes_no_manifest() {
    let stack = Stack::start().await.expect("stack starts");
    let before = stack.manifest_repo.head("main").unwrap();

    copy_app_with_broken_greeting(&stack);
    let commit = stack.dev.commit_all("flask-app: change greeting (breaks a test)");
    stack.dev.push();

    let build = stack.wait_build(&commit, BUILD_LIMIT).await.unwrap();
    let logs = stack.build_logs(&build).await.unwrap();
    assert_eq!(build["state"], "failed", "{logs}");
    assert!(build["reason"].as_str().unwrap().starts_with("test:"), "{build}");
    assert!(logs.contains("1 failed"), "pytest's failure is in the build log:\n{logs}");
    assert!(stack.nats.stream_messages(EVENTS_STREAM).await.is_empty(), "no event for a red build");
    assert_eq!(stack.registry.manifest_digest(APP, &commit[..12]).await, None, "nothing pushed");

    // Give cd-service every chance to (wrongly) commit, then check nothing moved.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.manifest_repo.head("main").unwrap(), before, "no manifest commit");
}

fn copy_app_with_broken_greeting(stack: &Stack) {
    conveyor_testkit::copy_tree(&conveyor_testkit::repo_root().join("examples/flask-app"), &stack.dev.path);
    let app = std::fs::read_to_string(stack.dev.path.join("app.py")).unwrap();
    stack.dev.write("app.py", &app.replace("Hello from flask-app", "Hello from a broken change"));
}

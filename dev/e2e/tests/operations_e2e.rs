//! Operating the real binaries: both services ride out a NATS restart (the next push still ends
//! as a manifest commit, and both report ready again), and SIGTERM lets ci-service's running
//! build finish (its event published, its manifest commit made) before the process exits 0.

use std::time::{Duration, Instant};

use conveyor_e2e::{new_tag, Stack, STAGING};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use serde_json::Value;

const BUILD_LIMIT: Duration = Duration::from_secs(600);

async fn ready(url: &str) -> bool {
    reqwest::get(format!("{url}/readyz")).await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread")]
async fn both_services_carry_on_after_a_nats_restart() {
    let mut stack = Stack::start().await.expect("stack starts");
    let before = stack.manifest_repo.head("main").unwrap();
    let (first, _) = stack.push_example_app("flask-app: before the restart");
    assert_eq!(stack.wait_build(&first, BUILD_LIMIT).await.unwrap()["state"], "succeeded");
    let after_first = stack.wait_manifest_commit(&before, Duration::from_secs(60)).await.unwrap();

    stack.nats.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ready(&stack.ci_url).await && ready(&stack.cd_url).await) {
        assert!(Instant::now() < deadline, "not ready again after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (second, out) = stack.push_change("app.py", |t| format!("{t}\n# after the restart\n"), "flask-app: after the restart");
    assert!(out.contains("build_id"), "ci-service queued the push after the restart:\n{out}");
    let build = stack.wait_build(&second, BUILD_LIMIT).await.unwrap();
    assert_eq!(build["state"], "succeeded", "{build}");
    let head = stack.wait_manifest_commit(&after_first, Duration::from_secs(60)).await.unwrap();
    let staging = stack.manifest_repo.show(&head, STAGING);
    assert_eq!(new_tag(&staging), second[..12], "cd-service applied the event after the restart:\n{staging}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_running_build_finish_before_ci_service_exits() {
    let mut stack = Stack::start().await.expect("stack starts");
    let before = stack.manifest_repo.head("main").unwrap();
    let (commit, _) = stack.push_example_app("flask-app: built across a SIGTERM");

    // Wait until the build is past checkout (running), then ask ci-service to stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let builds: Value = reqwest::get(format!("{}/builds", stack.ci_url)).await.unwrap().json().await.unwrap();
        let running = builds
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["commit"] == commit.as_str() && b["state"] == "running" && b["steps"].as_array().is_some_and(|s| s.len() >= 2));
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the build did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stack.terminate("ci-service", BUILD_LIMIT).unwrap();
    assert!(status.success(), "ci-service exits 0 after SIGTERM: {status:?}\n{}", stack.service_log("ci-service"));
    let log = stack.service_log("ci-service");
    assert!(log.contains("shutting down: no new pushes, finishing running builds"), "{log}");

    // The build it was running finished: its event is in the stream and cd-service deployed it.
    let events = stack.nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(events.len(), 1, "the running build published before the process exited:\n{log}");
    assert_eq!(ImageBuilt::from_json(&events[0].1).unwrap().source.commit, commit);
    let head = stack.wait_manifest_commit(&before, Duration::from_secs(60)).await.unwrap();
    assert_eq!(new_tag(&stack.manifest_repo.show(&head, STAGING)), commit[..12]);

    let status = stack.terminate("cd-service", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "cd-service exits 0 after SIGTERM: {status:?}");
}

//! How builds run, against the real dockerd, registry and NATS: two replicas share one queue and
//! no build runs twice; a replica that dies mid-build hands its job to the other; a newer push
//! cancels the older build of its branch, also when the older job comes back after the newer
//! build ended; cancel by request; a step over its time limit fails and leaves no container;
//! logs stream live over Server-Sent Events; a failed registry push is retried by hand without
//! rebuilding; the end of a build is stored across a NATS outage; a NATS file store too small
//! for the log stream is named at startup; a step's last line without a newline is in the log
//! of every build (the engine's output is drained after the container exits).

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::AckKind;
use futures::StreamExt;

use common::{app_repo, steps, Ci};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use conveyor_testkit::{docker::BUSYBOX_IMAGE, TestDocker, TestNats, TestRegistry, WorkClone};
use serde_json::Value;

/// A Dockerfile whose build runs `sleep <secs>` with a unique marker in the command line.
fn slow_dockerfile(secs: u32, marker: &str) -> String {
    format!("FROM conveyor/busybox:latest\nRUN sleep {secs} && echo {marker}\nCOPY . /app\nWORKDIR /app\n")
}

async fn wait_step(ci: &Ci, id: u64, step: &str) -> Value {
    ci.wait_for(id, &format!("step {step} running"), |b| {
        b["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == step && s["state"] == "running"))
    })
    .await
}

/// Commits `files` on main and pushes; returns the commit.
fn commit(work: &WorkClone, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        work.write(path, content);
    }
    let c = work.commit_all(message);
    work.push();
    c
}

async fn no_container_with(marker: &str) {
    conveyor_testkit::wait_until("the build containers to be gone", Duration::from_secs(20), || async {
        TestDocker::containers_running_command_with(marker).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_queue_and_no_build_runs_twice() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let keep_all = |c: &mut ci_service::Config| c.cancel_superseded = false;
    let (a, b) = (Ci::start(&nats, &registry.addr, keep_all).await, Ci::start(&nats, &registry.addr, keep_all).await);
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, first) = app_repo(dir.path(), &[]);
    let mut ids = vec![a.push_commit(&bare, "refs/heads/main", &first).await];
    for i in 2..=6 {
        let c = commit(&work, &[("VERSION", &i.to_string())], &format!("v{i}"));
        let via = if i % 2 == 0 { &b } else { &a };
        ids.push(via.push_commit(&bare, "refs/heads/main", &c).await);
    }
    let mut replicas = HashSet::new();
    for id in &ids {
        let build = a.wait_finished(*id).await;
        assert_eq!(build["state"], "succeeded", "{build}");
        assert_eq!(build["attempts"], 1, "built once: {build}");
        assert_eq!(a.logs(*id).await.matches("[conveyor] step build").count(), 1);
        replicas.insert(build["replica"].as_str().unwrap().to_string());
    }
    assert_eq!(replicas, HashSet::from([a.replica.clone(), b.replica.clone()]), "both replicas took work");
    let events: Vec<ImageBuilt> =
        nats.stream_messages(EVENTS_STREAM).await.iter().map(|(_, p)| ImageBuilt::from_json(p).unwrap()).collect();
    let built: HashSet<String> = events.iter().map(|e| e.build_id.clone()).collect();
    assert_eq!((events.len(), built.len()), (6, 6), "one event per build, none twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_dies_mid_build_leaves_its_job_to_another() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let short_lease = |c: &mut ci_service::Config| c.ack_wait_secs = 3;
    let doomed = Ci::start(&nats, &registry.addr, short_lease).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", uuid::Uuid::now_v7().simple());
    let (bare, _work, c) = app_repo(dir.path(), &[("Dockerfile", &slow_dockerfile(4, &marker))]);
    let id = doomed.push_commit(&bare, "refs/heads/main", &c).await;
    wait_step(&doomed, id, "build").await;
    let dead = doomed.replica.clone();
    doomed.kill();

    let survivor = Ci::start(&nats, &registry.addr, short_lease).await;
    let build = survivor.wait_for(id, "handed over and finished", |b| b["state"] == "succeeded" && b["attempts"] == 2).await;
    assert_eq!(build["replica"].as_str(), Some(survivor.replica.as_str()), "the other replica finished it (not {dead})");
    // Record and log outlived the replica that wrote them: both attempts are in the log, and the
    // step the dead replica was running is marked failed, not left running.
    let log = survivor.logs(id).await;
    assert!(log.contains(&format!("on {dead} (delivery 1)")) && log.contains("(delivery 2)"), "{log}");
    assert!(log.contains(&format!("{dead} stopped during this build")), "{log}");
    let states: Vec<(&str, &str)> =
        build["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(&states[..3], [("checkout", "succeeded"), ("build", "failed"), ("checkout", "succeeded")], "{states:?}");
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_push_cancels_the_older_build_of_its_branch_and_cancel_by_request() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", uuid::Uuid::now_v7().simple());
    let (bare, work, slow) = app_repo(dir.path(), &[("Dockerfile", &slow_dockerfile(60, &marker))]);
    let old = ci.push_commit(&bare, "refs/heads/main", &slow).await;
    wait_step(&ci, old, "build").await;

    let fast = commit(&work, &[("Dockerfile", "FROM conveyor/busybox:latest\nCOPY . /app\nWORKDIR /app\n")], "fast build");
    let new = ci.push_commit(&bare, "refs/heads/main", &fast).await;
    let cancelled = ci.wait_finished(old).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["reason"], format!("superseded by build {new} of the same branch"));
    assert_eq!(cancelled["steps"].as_array().unwrap().last().unwrap()["state"], "cancelled");
    let newer = ci.wait_finished(new).await;
    assert_eq!(newer["state"], "succeeded", "{newer}\n{}", ci.logs(new).await);
    no_container_with(&marker).await;
    let events = nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(events.len(), 1);
    assert_eq!(ImageBuilt::from_json(&events[0].1).unwrap().source.commit, fast, "only the newer commit was published");

    // A queued build is superseded too: while a build of another branch holds the only worker,
    // two pushes of main queue up; the older one is skipped when the worker gets to it.
    let marker3 = format!("marker-{}", uuid::Uuid::now_v7().simple());
    let blocker = commit(&work, &[("Dockerfile", &slow_dockerfile(60, &marker3))], "slow, on another branch");
    conveyor_testkit::run(std::process::Command::new("git").arg("-C").arg(&work.path).args([
        "push",
        "-q",
        "origin",
        "HEAD:refs/heads/other",
    ]));
    let busy = ci.push_commit(&bare, "refs/heads/other", &blocker).await;
    wait_step(&ci, busy, "build").await;
    let queued_old = commit(&work, &[("Dockerfile", "FROM conveyor/busybox:latest\nCOPY . /app\n"), ("VERSION", "q1")], "queued 1");
    let q1 = ci.push_commit(&bare, "refs/heads/main", &queued_old).await;
    let queued_new = commit(&work, &[("VERSION", "q2")], "queued 2");
    let q2 = ci.push_commit(&bare, "refs/heads/main", &queued_new).await;
    assert_eq!(ci.build(q1).await["state"], "queued");
    let (status, _) = ci.post(&format!("/builds/{busy}/cancel"), &[("content-type", "application/json")], vec![]).await;
    assert_eq!(status, 202);
    let skipped = ci.wait_finished(q1).await;
    assert_eq!((skipped["state"].as_str(), skipped["steps"].as_array().map(Vec::len)), (Some("cancelled"), Some(0)), "{skipped}");
    assert_eq!(skipped["reason"], format!("superseded by build {q2} of the same branch"));
    assert_eq!(ci.wait_finished(q2).await["state"], "succeeded");
    no_container_with(&marker3).await;

    // Cancel by request: a running build stops; an ended one cannot be cancelled again.
    let marker2 = format!("marker-{}", uuid::Uuid::now_v7().simple());
    let slow2 = commit(&work, &[("Dockerfile", &slow_dockerfile(60, &marker2))], "slow again");
    let id = ci.push_commit(&bare, "refs/heads/main", &slow2).await;
    wait_step(&ci, id, "build").await;
    let (status, body) = ci.post(&format!("/builds/{id}/cancel"), &[("content-type", "application/json")], vec![]).await;
    assert_eq!(status, 202, "{body}");
    let build = ci.wait_finished(id).await;
    assert_eq!((build["state"].as_str(), build["reason"].as_str()), (Some("cancelled"), Some("cancelled by request")));
    let (status, body) = ci.post(&format!("/builds/{id}/cancel"), &[("content-type", "application/json")], vec![]).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("already_finished")));
    no_container_with(&marker2).await;
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), 2, "the newer push and the queued winner");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_over_its_time_limit_fails_and_leaves_no_container() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, c) = app_repo(dir.path(), &[(".conveyor.yml", "test: echo started; sleep 60\ntimeouts: { test: 2 }\n")]);
    let id = ci.push_commit(&bare, "refs/heads/main", &c).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed");
    assert_eq!(build["reason"], "test: test timed out after 2 s");
    assert!(build["steps"][2]["duration_ms"].as_u64().unwrap() < 10_000, "stopped at the limit: {build}");
    assert!(TestDocker::containers_labelled("io.conveyor.replica", &ci.replica).is_empty(), "the test container was removed");
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty());
}

/// Reads Server-Sent Events until the stream ends; returns (event, data) pairs and, for each,
/// the build state seen when it arrived.
async fn read_sse(ci: &Ci, id: u64) -> Vec<(String, String, String)> {
    let mut resp =
        reqwest::Client::new().get(ci.url(&format!("/builds/{id}/logs"))).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (mut buf, mut out) = (String::new(), Vec::new());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await.expect("events keep coming").unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:"))).collect();
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let state = ci.build(id).await["state"].as_str().unwrap_or("").to_string();
            out.push((event, data.join("\n"), state));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_live_over_sse_until_the_build_ends() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, c) = app_repo(dir.path(), &[(".conveyor.yml", "test: echo line-1; sleep 2; echo line-2; sleep 2; echo line-3\n")]);
    let id = ci.push_commit(&bare, "refs/heads/main", &c).await;
    let events = read_sse(&ci, id).await;

    let first = events.iter().find(|(_, data, _)| data.contains("line-1")).expect("line-1 streamed");
    assert_eq!(first.2, "running", "line-1 arrived while the build was still running");
    let text: String = events.iter().filter(|(e, _, _)| e == "log").map(|(_, d, _)| format!("{d}\n")).collect();
    let (p1, p3) = (text.find("line-1").unwrap(), text.find("line-3").expect("line-3 streamed"));
    assert!(p1 < p3, "in order");
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("end", "succeeded"), "the stream ends with the build");
    // The plain-text log holds the same lines, and a finished build's stream replays and ends.
    assert!(ci.logs(id).await.contains("line-3"));
    let replay = read_sse(&ci, id).await;
    assert!(replay.iter().any(|(_, d, _)| d.contains("line-2")) && replay.last().unwrap().0 == "end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_registry_push_is_retried_by_hand_without_rebuilding() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, mut registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |c| c.step_attempts = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, c) = app_repo(dir.path(), &[]);
    registry.stop();
    let id = ci.push_commit(&bare, "refs/heads/main", &c).await;
    let failed = ci.wait_finished(id).await;
    assert_eq!(failed["state"], "failed");
    assert!(failed["reason"].as_str().unwrap().starts_with("push:"), "{failed}");
    assert!(ci.logs(id).await.contains("push attempt 1 of 2 failed"), "the push was retried on its own first");
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty());

    registry.restart().await;
    let (status, body) = ci.post(&format!("/builds/{id}/retry"), &[("content-type", "application/json")], vec![]).await;
    assert_eq!(status, 202, "{body}");
    let build = ci.wait_for(id, "retried", |b| b["state"] == "succeeded" || (b["state"] == "failed" && b["attempts"] == 2)).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", ci.logs(id).await);
    assert_eq!(steps(&build), ["checkout", "build", "test", "push", "push", "publish"], "nothing was rebuilt");
    assert_eq!(registry.manifest_digest("busybox-app", &c[..12]).await.as_deref(), build["digest"].as_str());
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), 1);

    // Only a build that failed at push or publish can be retried that way.
    let (status, body) = ci.post(&format!("/builds/{id}/retry"), &[("content-type", "application/json")], vec![]).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("not_retryable")));
}

/// A worker takes the older push's job and goes silent (it lost NATS) while the newer push of
/// the branch is built, pushed and published, and its job leaves the queue. When the older job
/// comes back it must be cancelled as superseded: built now, it would start after the newer
/// build and be deployed over it. (Found by the fault suite's `nats-restart`.)
#[tokio::test(flavor = "multi_thread")]
async fn an_older_job_that_comes_back_after_the_newer_build_ended_is_superseded() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let api = Ci::start(&nats, &registry.addr, |c| c.workers = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, older_commit) = app_repo(dir.path(), &[]);
    let older = api.push_commit(&bare, "refs/heads/main", &older_commit).await;

    // The silent worker: the workers' own consumer hands it the older job.
    let config = ci_service::Config::defaults();
    let queue = ci_service::queue::Queue::open(
        &nats.jetstream().await,
        Duration::from_secs(config.dedup_window_secs),
        Duration::from_secs(config.ack_wait_secs),
        config.max_deliver,
        config.records_max_age(),
        1,
    )
    .await
    .unwrap();
    let mut taken = queue.consumer().await.unwrap().fetch().max_messages(1).messages().await.unwrap();
    let stalled = taken.next().await.unwrap().unwrap();
    assert_eq!(stalled.info().unwrap().stream_sequence, older);

    let newer_commit = commit(&work, &[("VERSION", "2")], "newer");
    let newer = api.push_commit(&bare, "refs/heads/main", &newer_commit).await;
    let worker = Ci::start(&nats, &registry.addr, |_| {}).await;
    let built = loop {
        // Keep the older job's lease alive until the newer build ended and left the queue.
        stalled.ack_with(AckKind::Progress).await.unwrap();
        let b = worker.build(newer).await;
        if b["finished_at"].is_string() {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(built["state"], "succeeded", "{built}");
    conveyor_testkit::wait_until("the newer job to leave the queue", Duration::from_secs(20), || async {
        queue.job(newer).await.unwrap().is_none()
    })
    .await;
    stalled.ack_with(AckKind::Nak(None)).await.unwrap();

    let back = worker.wait_finished(older).await;
    assert_eq!(back["state"], "cancelled", "{back}");
    assert_eq!(back["reason"], format!("superseded by build {newer} of the same branch"));
    let events = nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(events.len(), 1, "only the newer push was published");
    assert_eq!(ImageBuilt::from_json(&events[0].1).unwrap().source.commit, newer_commit);
}

/// NATS hangs while a build's tests run and dies without coming back: the build's end, sent
/// into the hung server's connection, is never stored, and the worker must write it again
/// once NATS is back instead of leaving the record at "running" for ever (the job is acked
/// either way). Found by the fault suite's `nats-restart`, which waited for such a build until
/// its 30-minute limit.
#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_a_build_reaches_its_record_across_a_nats_outage() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (mut nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |c| c.test_command = "sleep 3; exit 3".into()).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, c) = app_repo(dir.path(), &[]);
    let id = ci.push_commit(&bare, "refs/heads/main", &c).await;
    wait_step(&ci, id, "test").await;
    nats.freeze();
    // The tests fail (exit 3) about 3 s later; writing the end waits 5 s for an ack and gives up.
    tokio::time::sleep(Duration::from_secs(10)).await;
    nats.restart().await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed", "{build}");
    assert!(build["reason"].as_str().is_some_and(|r| r.contains("exited with code 3")), "{build}");
    assert_eq!(build["steps"].as_array().unwrap().last().unwrap()["state"], "failed", "{build}");
}

/// The log stream reserves `CONVEYOR_LOGS_MAX_BYTES` (1 GiB) of NATS's file store, which
/// nats-server sizes at 75% of the free disk unless told: on a nearly full disk ci-service must
/// say what to change, and start with a reservation that fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_store_too_small_for_the_log_stream_is_named_at_startup() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start_with_max_file_store(256 << 20).await, TestRegistry::start().await);
    let Err(e) = Ci::try_start(&nats, &registry.addr, |_| {}).await else {
        panic!("ci-service started on a 256 MiB store with 1 GiB of logs")
    };
    let message = e.to_string();
    for needle in ["1073741824 bytes", "CONVEYOR_LOGS_MAX_BYTES", "max_file_store"] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }

    let ci = Ci::start(&nats, &registry.addr, |c| c.logs_max_bytes = 64 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, c) = app_repo(dir.path(), &[]);
    let id = ci.push_commit(&bare, "refs/heads/main", &c).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    assert!(ci.logs(id).await.contains("tests-passed"), "{}", ci.logs(id).await);
}

#[derive(Default, Clone)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl ci_service::build::docker::LogSink for Lines {
    fn line(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

/// Output on both streams, a burst of lines, then a last line with no newline, quick to exit:
/// the shape whose last line went missing.
/// `printf_args` print the last line.
fn burst_then_unterminated(printf_args: &str) -> String {
    format!("i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done; echo err >&2; printf {printf_args}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steps_last_line_without_a_newline_is_never_lost() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let docker = bollard::Docker::connect_with_local_defaults().unwrap().negotiate_version().await.unwrap();
    let mut missing = Vec::new();
    for i in 0..24 {
        let lines = Lines::default();
        let labels = HashMap::from([("conveyor.test".to_string(), "step-logs".to_string())]);
        let command = burst_then_unterminated(&format!("'tail-of-run-{i}'"));
        ci_service::build::docker::run_tests(&docker, BUSYBOX_IMAGE, &command, labels, Duration::from_secs(60), &lines)
            .await
            .expect("the command exits 0");
        let got = lines.0.lock().unwrap().clone();
        assert_eq!(got.iter().filter(|l| l.starts_with("line ")).count(), 200, "run {i}: every full line, once: {got:?}");
        assert_eq!(got.iter().filter(|l| l.starts_with("tail-of-run-")).count(), 1, "run {i}: the last line once: {got:?}");
        if got.last().map(String::as_str) != Some(format!("tail-of-run-{i}").as_str()) {
            missing.push((i, got.last().cloned()));
        }
    }
    assert!(missing.is_empty(), "runs whose last line is missing or not last: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_builds_log_ends_with_the_tests_last_line_even_without_a_newline() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!("branches: [\"t/*\"]\ntest: |-\n  {}\n", burst_then_unterminated("'tail-of-build-%s' \"$(cat /app/VERSION)\""));
    let (bare, work, _) = app_repo(dir.path(), &[(".conveyor.yml", &pipeline)]);
    // Twelve builds, each of its own branch (a newer push would cancel an older one of its branch).
    let mut builds = Vec::new();
    for n in 1..=12 {
        work.write("VERSION", &n.to_string());
        let commit = work.commit_all(&format!("version {n}"));
        let out = std::process::Command::new("git")
            .current_dir(&work.path)
            .args(["push", "-q", "origin", &format!("HEAD:refs/heads/t/{n}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        builds.push((n, ci.push_commit(&bare, &format!("refs/heads/t/{n}"), &commit).await));
    }
    let mut missing = Vec::new();
    for (n, id) in builds {
        let build = ci.wait_finished(id).await;
        assert_eq!(build["state"], "succeeded", "{build}");
        let logs = ci.logs(id).await;
        let test_part: Vec<&str> = logs.lines().skip_while(|l| *l != "line 0").collect();
        assert_eq!(test_part.iter().filter(|l| l.starts_with("line ")).count(), 200, "build {id}:\n{logs}");
        // The step's output is whole, and its last line is the step's last before the next step.
        let tail = format!("tail-of-build-{n}");
        match test_part.iter().position(|l| *l == tail) {
            Some(at) if test_part[..at].iter().filter(|l| l.starts_with("line ")).count() == 200 => {}
            _ => missing.push((id, logs)),
        }
    }
    assert!(missing.is_empty(), "builds whose log lost the test's last line: {missing:#?}");
}

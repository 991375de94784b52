//! ci-service against the real Docker Engine, registry and NATS: a push is checked out, built,
//! tested in the image, pushed and published; a red test publishes nothing; bad requests get
//! JSON 4xx answers and the service keeps running.

use std::{net::SocketAddr, path::Path, time::Duration};

use ci_service::{App, Config};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use conveyor_testkit::{copy_tree, docker::BUSYBOX_IMAGE, BareRepo, TestDocker, TestNats, TestRegistry, WorkClone};
use serde_json::{json, Value};
use tokio::sync::oneshot;

struct Ci {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _workdir: tempfile::TempDir,
}

impl Ci {
    async fn start(nats: &TestNats, registry: &TestRegistry, test_command: &str) -> Ci {
        let workdir = tempfile::tempdir().unwrap();
        let mut cfg = Config::defaults();
        cfg.nats_url = nats.url.clone();
        cfg.registry = registry.addr.clone();
        cfg.workdir = workdir.path().to_path_buf();
        cfg.test_command = test_command.to_string();
        cfg.build_timeout_secs = 120;
        cfg.test_timeout_secs = 60;
        let app = App::connect(cfg).await.expect("ci-service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ci { addr, _stop: stop, _workdir: workdir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn push(&self, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new().post(self.url("/hooks/push")).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn wait_finished(&self, id: &str) -> Value {
        let url = self.url(&format!("/builds/{id}"));
        let mut last = Value::Null;
        for _ in 0..1200 {
            last = reqwest::get(&url).await.unwrap().json().await.unwrap();
            if matches!(last["state"].as_str(), Some("succeeded" | "failed")) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("build {id} did not finish: {last}");
    }

    async fn logs(&self, id: &str) -> String {
        reqwest::get(self.url(&format!("/builds/{id}/logs"))).await.unwrap().text().await.unwrap()
    }
}

/// A bare app repo with the busybox fixture app committed on main; returns (bare, commit).
fn app_repo(dir: &Path, extra: &[(&str, &str)]) -> (BareRepo, String) {
    let bare = BareRepo::create(dir.join("busybox-app.git"));
    let work = WorkClone::init(dir.join("work"), &bare);
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/busybox-app"), &work.path);
    work.write("secret.txt", "do not ship");
    work.write("build.log", "noise");
    for (path, content) in extra {
        work.write(path, content);
    }
    let commit = work.commit_all("app");
    work.push();
    (bare, commit)
}

const GREEN: &str = "sh /app/run-tests.sh";

#[tokio::test(flavor = "multi_thread")]
async fn green_build_is_pushed_and_published_with_the_registry_digest() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry, GREEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, commit) = app_repo(dir.path(), &[]);

    let (status, body) = ci.push(json!({ "repo_url": bare.url(), "ref": "refs/heads/main", "commit": commit })).await;
    assert_eq!(status, 202, "{body}");
    let id = body["build_id"].as_str().unwrap().to_string();
    let build = ci.wait_finished(&id).await;
    let logs = ci.logs(&id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");
    assert!(logs.contains("tests-passed version=1"), "test output is in the build log:\n{logs}");
    let steps: Vec<&str> = build["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["checkout", "build", "test", "push", "publish"]);

    // The registry really has the image, under the digest the build recorded.
    let tag = &commit[..12];
    let served = registry.manifest_digest("busybox-app", tag).await.expect("image is in the registry");
    assert_eq!(build["digest"].as_str(), Some(served.as_str()));
    assert_eq!(build["image"].as_str().unwrap(), format!("{}/busybox-app:{tag}", registry.addr));

    // Exactly one event, valid, naming that image, commit and digest.
    let msgs = nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(msgs.len(), 1);
    let event = ImageBuilt::from_json(&msgs[0].1).expect("a valid event");
    assert_eq!(event.app, "busybox-app");
    assert_eq!(event.image.repository, format!("{}/busybox-app", registry.addr));
    assert_eq!(event.image.tag, tag);
    assert_eq!(event.image.digest, served);
    assert_eq!(event.source.commit, commit);
    assert_eq!(event.source.branch, "main");
    assert_eq!(event.build_id, id);
    assert_eq!(build["event_sequence"].as_u64(), Some(msgs[0].0));
    assert!(TestDocker::containers_of_build(&id).is_empty(), "the test container was removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_tests_fail_the_build_and_publish_nothing() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry, "echo running-tests; exit 3").await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, commit) = app_repo(dir.path(), &[]);

    let (status, body) = ci.push(json!({ "repo_url": bare.url(), "ref": "refs/heads/main", "commit": commit })).await;
    assert_eq!(status, 202);
    let id = body["build_id"].as_str().unwrap();
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed");
    let reason = build["failure"].as_str().unwrap();
    assert!(reason.contains("test") && reason.contains("code 3"), "{reason}");
    assert!(ci.logs(id).await.contains("running-tests"), "test output is kept for the failed build");
    let steps: Vec<&str> = build["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["checkout", "build", "test"], "nothing after the failed test ran");
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty(), "no event for a red build");
    assert_eq!(registry.manifest_digest("busybox-app", &commit[..12]).await, None, "nothing pushed");
    assert!(TestDocker::containers_of_build(id).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_dockerfile_or_unknown_commit_fails_with_the_reason() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry, GREEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, commit) = app_repo(dir.path(), &[("Dockerfile", "FROM conveyor/busybox:latest\nRUN exit 7\n")]);

    let (_, body) = ci.push(json!({ "repo_url": bare.url(), "ref": "refs/heads/main", "commit": commit })).await;
    let build = ci.wait_finished(body["build_id"].as_str().unwrap()).await;
    assert_eq!(build["state"], "failed");
    assert!(build["failure"].as_str().unwrap().starts_with("build:"), "{build}");

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let (_, body) = ci.push(json!({ "repo_url": bare.url(), "ref": "refs/heads/main", "commit": unknown })).await;
    let build = ci.wait_finished(body["build_id"].as_str().unwrap()).await;
    assert_eq!(build["state"], "failed");
    let reason = build["failure"].as_str().unwrap();
    assert!(reason.starts_with("checkout:") && reason.contains(unknown), "{reason}");
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_and_the_service_keeps_running() {
    TestDocker::ensure(&[]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry, GREEN).await;
    let client = reqwest::Client::new();
    let post = |body: reqwest::Body, content_type: &'static str| {
        client.post(ci.url("/hooks/push")).header("content-type", content_type).body(body).send()
    };
    let cases: Vec<(reqwest::Body, &str, u16, &str)> = vec![
        ("{not json".into(), "application/json", 400, "malformed_json"),
        ("{}".into(), "text/plain", 415, "unsupported_media_type"),
        (r#"{"repo_url":"/x.git"}"#.into(), "application/json", 422, "invalid_payload"),
        (r#"{"repo_url":"/x.git","ref":"refs/heads/main","commit":"abc"}"#.into(), "application/json", 422, "invalid_push"),
        (
            r#"{"repo_url":"/x.git","ref":"refs/tags/v1","commit":"0123456789abcdef0123456789abcdef01234567"}"#.into(),
            "application/json",
            422,
            "invalid_push",
        ),
        (vec![b' '; 2 * 1024 * 1024].into(), "application/json", 413, "body_too_large"),
    ];
    for (body, ct, status, code) in cases {
        let resp = post(body, ct).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "expected {code}");
        let json: Value = resp.json().await.expect("error bodies are JSON");
        assert_eq!(json["error"], code, "{json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A deletion is acknowledged and ignored.
    let (status, body) = ci.push(json!({"repo_url":"/x.git","ref":"refs/heads/main","commit":"0".repeat(40)})).await;
    assert_eq!((status, body["ignored"].as_str()), (200, Some("branch deletion")));
    let resp = reqwest::get(ci.url("/builds/nope")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "build_not_found");
    // Nothing was queued by any of them, and the service still answers.
    let builds: Value = reqwest::get(ci.url("/builds")).await.unwrap().json().await.unwrap();
    assert_eq!(builds.as_array().unwrap().len(), 0);
    assert_eq!(reqwest::get(ci.url("/healthz")).await.unwrap().status().as_u16(), 200);
}

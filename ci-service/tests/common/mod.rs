//! What the ci-service integration tests share: ci-service started in-process against the real
//! NATS, dockerd and registry, a signed push, waiting for a build, and app repositories made
//! from the busybox fixture app.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{net::SocketAddr, path::Path, time::Duration};

use ci_service::{secrets::Secret, webhook::signature, App, Config};
use conveyor_testkit::{copy_tree, BareRepo, TestNats, WorkClone};
use serde_json::Value;
use tokio::sync::oneshot;

/// The webhook secret every test service accepts.
pub const SECRET: &str = "test-webhook-secret-1";
/// The busybox fixture app's test command.
pub const GREEN: &str = "sh /app/run-tests.sh";

pub fn sign(body: &[u8]) -> String {
    format!("sha256={}", signature::sign(&Secret::new(SECRET), body))
}

/// ci-service running in this process; stops when dropped.
pub struct Ci {
    pub addr: SocketAddr,
    /// This instance's replica name (unique per test); its containers carry it as a label.
    pub replica: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _workdir: tempfile::TempDir,
}

impl Ci {
    /// Starts ci-service on a free port; `adjust` changes the configuration first.
    pub async fn start(nats: &TestNats, registry: &str, adjust: impl FnOnce(&mut Config)) -> Ci {
        Self::try_start(nats, registry, adjust).await.expect("ci-service starts")
    }

    /// As `start`, but returns ci-service's startup error.
    pub async fn try_start(nats: &TestNats, registry: &str, adjust: impl FnOnce(&mut Config)) -> Result<Ci, ci_service::StartError> {
        let workdir = tempfile::tempdir().unwrap();
        let replica = format!("test-{}", uuid::Uuid::now_v7().simple());
        let mut cfg = Config::defaults();
        cfg.nats = nats.ci_args();
        cfg.signing_key_file = Some(nats.keys.ci_key.clone());
        cfg.registry = registry.to_string();
        cfg.workdir = workdir.path().to_path_buf();
        cfg.replica = Some(replica.clone());
        cfg.webhook_secrets = vec![Secret::new(SECRET)];
        // The test repositories are bare repositories on disk.
        cfg.allow_local_repos = true;
        cfg.test_command = GREEN.into();
        cfg.build_timeout_secs = 120;
        cfg.test_timeout_secs = 60;
        adjust(&mut cfg);
        let app = App::connect(cfg).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Ci { addr, replica, stop: Some(stop), done: Some(done), _workdir: workdir })
    }

    /// Tears the replica down at once, running builds and all, as if its process died.
    pub fn kill(mut self) {
        drop(self.stop.take());
        if let Some(done) = self.done.take() {
            done.abort();
        }
    }

    /// Stops taking work and waits until running builds ended.
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(120), done).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to `path` with `headers`; returns the status and the JSON answer.
    pub async fn post<K: AsRef<str>, V: AsRef<str>>(&self, path: &str, headers: &[(K, V)], body: Vec<u8>) -> (u16, Value) {
        let mut req = reqwest::Client::new().post(self.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(k.as_ref(), v.as_ref());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A signed generic push (what the post-receive hook sends).
    pub async fn push(&self, body: Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let headers = [("content-type", "application/json".to_string()), ("x-conveyor-signature-256", sign(&bytes))];
        self.post("/hooks/push", &headers, bytes).await
    }

    /// Pushes `commit` of `bare`'s main branch and returns the build number.
    pub async fn push_commit(&self, bare: &BareRepo, git_ref: &str, commit: &str) -> u64 {
        let (status, body) = self.push(serde_json::json!({ "repo_url": bare.url(), "ref": git_ref, "commit": commit })).await;
        assert_eq!(status, 202, "{body}");
        let queued: conveyor_api::ci::BuildQueued = serde_json::from_value(body).expect("the API's BuildQueued");
        assert_eq!(queued.status_url, format!("/builds/{}", queued.build_id));
        queued.build_id
    }

    pub async fn build(&self, id: u64) -> Value {
        reqwest::get(self.url(&format!("/builds/{id}"))).await.unwrap().json().await.unwrap()
    }

    /// Waits until build `id` satisfies `done` (within 3 minutes) and returns its record.
    pub async fn wait_for(&self, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..1800 {
            last = self.build(id).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("build {id} never got {what}: {last}\n{}", self.logs(id).await);
    }

    pub async fn wait_finished(&self, id: u64) -> Value {
        self.wait_for(id, "finished", |b| matches!(b["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "skipped"))).await
    }

    pub async fn logs(&self, id: u64) -> String {
        reqwest::get(self.url(&format!("/builds/{id}/logs"))).await.unwrap().text().await.unwrap()
    }

    pub async fn builds(&self) -> Vec<Value> {
        let v: Value = reqwest::get(self.url("/builds?limit=1000")).await.unwrap().json().await.unwrap();
        v.as_array().unwrap().clone()
    }
}

/// A webhook payload from `tests/fixtures/webhooks/` (the forges' documented shapes).
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `Content-Type: application/json` and the `extra` headers.
pub fn json_headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

/// The names of a build record's steps, in order.
pub fn steps(build: &Value) -> Vec<String> {
    build["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

/// A bare app repo with the busybox fixture app (plus `extra` files) committed on main;
/// returns the repo, a clone to make more commits in, and the commit.
pub fn app_repo(dir: &Path, extra: &[(&str, &str)]) -> (BareRepo, WorkClone, String) {
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
    (bare, work, commit)
}

//! One scenario's world on 127.0.0.1: NATS with JetStream, a registry, app repositories made from
//! the busybox fixture app, a manifest repository with one deployment per app, and the ways the
//! suite feeds and reads them (signed pushes, events, the stream, the manifest history).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::bail;
use conveyor_proto::signing::EventSigner;
use conveyor_proto::{ImageBuilt, ImageRef, SourceRef, EVENTS_STREAM, EVENT_VERSION};
use conveyor_testkit::{copy_tree, repo_root, BareRepo, TestNats, TestRegistry, WorkClone};
use time::OffsetDateTime;

use crate::procs::{Replicas, Service};

pub const SECRET: &str = "fault-suite-webhook-secret";
/// The durable consumer cd-service replicas share.
pub const CD_CONSUMER: &str = "cd-service";

/// What the suite reads of a build record.
#[derive(Debug, Clone)]
pub struct Build {
    pub state: String,
    pub reason: String,
    /// How many times a worker took the build up (more than one: a replica died under it).
    pub attempts: u64,
}

pub struct World {
    pub nats: TestNats,
    pub registry: TestRegistry,
    pub manifests: BareRepo,
    pub dir: tempfile::TempDir,
    pub bin_dir: PathBuf,
    pub http: reqwest::Client,
}

/// An app repository and a clone to commit in.
pub struct AppRepo {
    pub app: String,
    pub bare: BareRepo,
    pub work: WorkClone,
    /// Commits pushed so far, oldest first.
    pub pushed: Vec<String>,
}

impl World {
    /// `apps`: the manifest repository gets `apps/<app>/deployment.yaml` for each, at tag `initial`.
    pub async fn new(apps: &[String]) -> anyhow::Result<World> {
        Self::new_on(apps, TestNats::start().await).await
    }

    /// As `new`, on the given NATS (e.g. a three-node cluster).
    pub async fn new_on(apps: &[String], nats: TestNats) -> anyhow::Result<World> {
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir()?;
        let manifests = BareRepo::create(dir.path().join("git/manifests.git"));
        let seed = WorkClone::init(dir.path().join("seed"), &manifests);
        for app in apps {
            seed.write(&format!("apps/{app}/deployment.yaml"), &manifest(&registry.addr, app, "initial"));
        }
        seed.commit_all("initial manifests");
        seed.push();
        let bin_dir = conveyor_e2e::bin_dir()?;
        Ok(World { nats, registry, manifests, dir, bin_dir, http: reqwest::Client::new() })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `n` replicas of ci-service, each with `workers` build workers.
    pub fn start_ci(&self, n: usize, workers: usize) -> Replicas {
        self.start_ci_with(n, workers, &[])
    }

    /// Like `start_ci`, with extra variables.
    pub fn start_ci_with(&self, n: usize, workers: usize, extra: &[(&str, &str)]) -> Replicas {
        let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (nats, registry, dir) = (self.nats.ci_env(), self.registry.addr.clone(), self.path().to_path_buf());
        Replicas::start(Service::Ci, &self.bin_dir, self.path(), n, move |i, port| {
            let mut v = vars(&[
                ("CONVEYOR_LISTEN", format!("127.0.0.1:{port}")),
                ("CONVEYOR_REGISTRY", registry.clone()),
                ("CONVEYOR_WORKDIR", dir.join(format!("ci-{i}")).display().to_string()),
                ("CONVEYOR_REPLICA", format!("ci-{i}")),
                ("CONVEYOR_WEBHOOK_SECRET", SECRET.into()),
                ("CONVEYOR_ALLOW_LOCAL_REPOS", "true".into()),
                ("CONVEYOR_TEST_COMMAND", "sh /app/run-tests.sh".into()),
                ("CONVEYOR_WORKERS", workers.to_string()),
                // A killed replica's job goes back to the queue after this long.
                ("CONVEYOR_ACK_WAIT_SECS", "5".into()),
                ("RUST_LOG", "info".into()),
            ]);
            v.extend(nats.iter().map(|(k, val)| (k.to_string(), val.clone())));
            v.extend(extra.iter().cloned());
            v
        })
    }

    /// `n` replicas of cd-service on the one durable consumer, each with its own clone.
    pub fn start_cd(&self, n: usize) -> Replicas {
        let (nats, repo, dir) = (self.nats.cd_env(), self.manifests.url(), self.path().to_path_buf());
        Replicas::start(Service::Cd, &self.bin_dir, self.path(), n, move |i, port| {
            let mut v = vars(&[
                ("CONVEYOR_CD_LISTEN", format!("127.0.0.1:{port}")),
                ("CONVEYOR_MANIFEST_REPO", repo.clone()),
                ("CONVEYOR_WORKDIR", dir.join(format!("cd-{i}")).display().to_string()),
                ("CONVEYOR_ACK_WAIT_SECS", "2".into()),
                ("CONVEYOR_API_TOKEN", conveyor_testkit::API_TOKEN.into()),
                ("RUST_LOG", "info".into()),
            ]);
            v.extend(nats.iter().map(|(k, val)| (k.to_string(), val.clone())));
            v
        })
    }

    /// A bare repository `<app>.git` holding the busybox fixture app (ci-service names the app
    /// after the repository).
    pub fn app_repo(&self, app: &str) -> AppRepo {
        let bare = BareRepo::create(self.path().join(format!("git/{app}.git")));
        let work = WorkClone::init(self.path().join(format!("work/{app}")), &bare);
        copy_tree(&repo_root().join("ci-service/tests/fixtures/busybox-app"), &work.path);
        AppRepo { app: app.to_string(), bare, work, pushed: Vec::new() }
    }

    /// A bare repository `<app>.git` holding a hostile app (`dev/fault-suite/fixtures/hostile-app`)
    /// whose build, test and smoke steps try to connect to each `(name, host, port)` of `targets`.
    pub fn hostile_repo(&self, app: &str, targets: &[(&str, String, u16)]) -> AppRepo {
        let bare = BareRepo::create(self.path().join(format!("git/{app}.git")));
        let work = WorkClone::init(self.path().join(format!("work/{app}")), &bare);
        copy_tree(&repo_root().join("dev/fault-suite/fixtures/hostile-app"), &work.path);
        let lines: String = targets.iter().map(|(name, host, port)| format!("{name} {host} {port}\n")).collect();
        work.write("targets", &lines);
        AppRepo { app: app.to_string(), bare, work, pushed: Vec::new() }
    }

    /// Commits a change to `repo` and pushes it to the bare repository; returns the commit.
    pub fn commit_and_push(repo: &mut AppRepo, n: usize) -> String {
        repo.work.write("VERSION", &format!("{n}\n"));
        let commit = repo.work.commit_all(&format!("{}: change {n}", repo.app));
        repo.work.push();
        repo.pushed.push(commit.clone());
        commit
    }

    /// Every image-built event in the stream, in order.
    pub async fn events(&self) -> Vec<(u64, ImageBuilt)> {
        self.nats
            .stream_messages(EVENTS_STREAM)
            .await
            .into_iter()
            .filter_map(|(seq, payload)| ImageBuilt::from_json(&payload).ok().map(|e| (seq, e)))
            .collect()
    }

    /// Every `Conveyor-Event-Id` trailer on the manifest branch.
    pub fn committed_event_ids(&self) -> Vec<String> {
        self.manifests.trailer_values("main", "Conveyor-Event-Id")
    }

    /// The tag `apps/<app>/deployment.yaml` deploys on the manifest branch.
    pub fn deployed_tag(&self, app: &str) -> String {
        let text = self.manifests.show("main", &format!("apps/{app}/deployment.yaml"));
        text.lines()
            .find_map(|l| l.trim().strip_prefix("image: "))
            .and_then(|image| image.rsplit_once(':'))
            .map(|(_, tag)| tag.to_string())
            .unwrap_or_default()
    }

    /// Waits until the cd-service consumer acknowledged every event in the stream.
    pub async fn wait_cd_done(&self, limit: Duration) -> anyhow::Result<()> {
        let last = self.events().await.last().map(|(seq, _)| *seq).unwrap_or(0);
        if last == 0 {
            return Ok(());
        }
        if tokio::time::timeout(limit, self.nats.wait_consumer_done(EVENTS_STREAM, CD_CONSUMER, last, limit)).await.is_ok() {
            return Ok(());
        }
        let consumer = async {
            let mut c = self
                .nats
                .jetstream()
                .await
                .get_stream(EVENTS_STREAM)
                .await
                .ok()?
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(CD_CONSUMER)
                .await
                .ok()?;
            let i = c.info().await.ok()?.clone();
            Some(format!(
                "ack floor {}, {} not yet delivered, {} delivered and not acked, {} redelivered, delivered up to {}",
                i.ack_floor.stream_sequence, i.num_pending, i.num_ack_pending, i.num_redelivered, i.delivered.stream_sequence
            ))
        };
        let state = consumer.await.unwrap_or_else(|| "consumer state unreadable".into());
        bail!("cd-service did not acknowledge every event up to {last} within {limit:?} ({state})")
    }

    /// Build records by commit, read from any replica that answers.
    pub async fn builds(&self, urls: &[String]) -> HashMap<String, Vec<Build>> {
        for url in urls {
            let Ok(r) = self.http.get(format!("{url}/builds?limit=1000")).timeout(Duration::from_secs(10)).send().await else { continue };
            let Ok(list) = r.json::<Vec<serde_json::Value>>().await else { continue };
            let mut out: HashMap<String, Vec<Build>> = HashMap::new();
            for b in list {
                let commit = b["commit"].as_str().unwrap_or_default().to_string();
                out.entry(commit).or_default().push(Build {
                    state: b["state"].as_str().unwrap_or_default().to_string(),
                    reason: b["reason"].as_str().unwrap_or_default().to_string(),
                    attempts: b["attempts"].as_u64().unwrap_or(0),
                });
            }
            return out;
        }
        HashMap::new()
    }
}

/// Sends the push of `commit` to a ci-service replica, as the post-receive hook does. Like a
/// load balancer with a forge's redelivery behind it, it tries the next replica when one is
/// down and again after a 503 (NATS away), for up to `limit`. Returns the tries it took.
pub async fn send_push(
    http: &reqwest::Client,
    urls: &[String],
    start: usize,
    repo_url: &str,
    commit: &str,
    limit: Duration,
) -> anyhow::Result<usize> {
    let body = serde_json::to_vec(&serde_json::json!({
        "repo_url": repo_url, "ref": "refs/heads/main", "commit": commit,
    }))?;
    let deadline = Instant::now() + limit;
    let mut tries = 0;
    loop {
        let url = &urls[(start + tries) % urls.len()];
        tries += 1;
        let answer = http
            .post(format!("{url}/hooks/push"))
            .header("content-type", "application/json")
            .header("x-conveyor-signature-256", sign(&body))
            .timeout(Duration::from_secs(10))
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 200 => return Ok(tries),
            Ok(r) if r.status().is_client_error() => {
                bail!("push of {commit} refused: {} {}", r.status(), r.text().await.unwrap_or_default())
            }
            _ if Instant::now() > deadline => bail!("push of {commit} not accepted within {limit:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Publishes `event` signed by `signer` with its contract `Nats-Msg-Id`, retrying while NATS is
/// away (a retry of an event that did land is dropped by the stream's de-duplication). Returns
/// its sequence.
pub async fn publish(client: &async_nats::Client, signer: &EventSigner, event: &ImageBuilt, limit: Duration) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + limit;
    loop {
        match conveyor_proto::stream::publish_event(&js, event, signer).await {
            Ok((seq, _)) => return Ok(seq),
            Err(e) if Instant::now() > deadline => bail!("publish {}: {e}", event.event_id),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub fn manifest(registry: &str, app: &str, tag: &str) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\nspec:\n  template:\n    spec:\n      containers:\n        - name: {app}\n          image: {registry}/{app}:{tag}\n")
}

/// An image-built event of `app` as a build would publish it (no build behind it): the cd side
/// of the suite.
pub fn event(registry: &str, app: &str, round: usize, t0: OffsetDateTime) -> ImageBuilt {
    let tag = format!("r{round}");
    let started = t0 + time::Duration::milliseconds(round as i64);
    let digest: String = format!("{app}{tag}").bytes().map(|b| format!("{b:02x}")).collect::<String>().chars().cycle().take(64).collect();
    ImageBuilt {
        version: EVENT_VERSION,
        event_id: format!("evt-{app}-{tag}"),
        app: app.into(),
        image: ImageRef { repository: format!("{registry}/{app}"), tag, digest: format!("sha256:{digest}") },
        source: SourceRef { repo_url: format!("/srv/git/{app}.git"), commit: format!("{:040x}", round), branch: "main".into() },
        build_id: format!("{app}-{round}"),
        build_started_at: started,
        built_at: started,
        traceparent: None,
        deploy: None,
    }
}

/// The `X-Conveyor-Signature-256` value for `body` under `secret`, as the hook computes it.
pub fn sign_with(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", ci_service::webhook::signature::sign(&ci_service::secrets::Secret::new(secret), body))
}

pub fn sign(body: &[u8]) -> String {
    sign_with(SECRET, body)
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

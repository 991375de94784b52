//! Load for ci-service's webhook intake, shared by the benchmarks: the service binary started
//! with given settings, distinct signed GitHub push webhooks, and a closed-loop sender.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use ci_service::{secrets::Secret, webhook::signature};
use conveyor_testkit::{free_port, ChildGuard, TestNats};

pub const SECRET: &str = "bench-webhook-secret";

pub struct Ci {
    pub url: String,
    pub child: ChildGuard,
}

/// Starts the ci-service binary from `bin` with `workers` workers and extra environment.
pub async fn start_ci(bin: &Path, nats: &TestNats, registry: &str, workers: u16, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Ci> {
    start_ci_under(&[], bin, nats, registry, workers, dir, env).await
}

/// [`start_ci`] under a wrapper command (e.g. `valgrind --tool=callgrind`).
pub async fn start_ci_under(
    wrapper: &[String],
    bin: &Path,
    nats: &TestNats,
    registry: &str,
    workers: u16,
    dir: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Ci> {
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("ci-service-{port}.log")))?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin.join("ci-service"));
            c
        }
        None => Command::new(bin.join("ci-service")),
    };
    let child = command
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .envs(nats.ci_env())
        .env("CONVEYOR_REGISTRY", registry)
        .env("CONVEYOR_WORKDIR", dir.join(format!("work-{port}")))
        .env("CONVEYOR_WORKERS", workers.to_string())
        .env("CONVEYOR_WEBHOOK_SECRET", SECRET)
        .env("CONVEYOR_ALLOW_LOCAL_REPOS", "true")
        .env("CONVEYOR_TEST_COMMAND", "sh /app/run-tests.sh")
        .env("RUST_LOG", std::env::var("BENCH_CI_LOG").unwrap_or_else(|_| "info".into()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start ci-service (run benches/run)")?;
    let ci = Ci { url: format!("http://127.0.0.1:{port}"), child: ChildGuard(child) };
    let health = format!("{}/healthz", ci.url);
    conveyor_testkit::wait_until("ci-service to answer", Duration::from_secs(120), || {
        let health = health.clone();
        async move { reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    Ok(ci)
}

/// Distinct signed GitHub push webhooks: (body, signature header).
pub fn webhooks(n: usize, offset: usize) -> Vec<(Vec<u8>, String)> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci-service/tests/fixtures/webhooks/github-push.json");
    let template: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).expect("fixture")).expect("json");
    (offset..offset + n)
        .map(|i| {
            let mut push = template.clone();
            let sha = format!("{:040x}", i + 1);
            push["after"] = sha.clone().into();
            push["head_commit"]["id"] = sha.into();
            let body = serde_json::to_vec(&push).expect("json");
            let sig = format!("sha256={}", signature::sign(&Secret::new(SECRET), &body));
            (body, sig)
        })
        .collect()
}

pub async fn send(client: &reqwest::Client, url: &str, body: &[u8], sig: &str) -> anyhow::Result<u16> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", sig)
        .body(body.to_vec())
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// Sends every webhook once from `connections` concurrent senders, each as fast as answers come
/// back; returns the latencies of the accepted ones (unsorted), how many were refused, and the
/// elapsed time.
pub async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<(Vec<u8>, String)>>,
    connections: usize,
) -> anyhow::Result<(Vec<Duration>, usize, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, bodies, next) = (client.clone(), url.to_string(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut refused = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, sig)) = bodies.get(i) else { break };
                let t = Instant::now();
                match send(&client, &url, body, sig).await {
                    Ok(202) => lat.push(t.elapsed()),
                    _ => refused += 1,
                }
            }
            (lat, refused)
        }));
    }
    let (mut lat, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (l, r) = t.await?;
        lat.extend(l);
        refused += r;
    }
    Ok((lat, refused, start.elapsed()))
}

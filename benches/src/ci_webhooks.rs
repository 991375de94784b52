//! ci-service intake against the floors of issue 3, with load from this separate process on
//! loopback: signed GitHub push webhooks per second (closed loop, many connections), accept
//! latency at a steady 5,000 requests/s (open loop, measured from each request's scheduled
//! time), push accepted -> build started with a free worker (real builds of a small app), and
//! the idle RSS. Every webhook is a distinct commit, so each one is verified and queued.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use ci_service::{secrets::Secret, webhook::signature};
use conveyor_benches::{
    env_num, ms, percentile, rss_kib, verdict,
    webhooks::{closed_loop, send, start_ci, webhooks, SECRET},
};
use conveyor_testkit::{copy_tree, BareRepo, TestNats, TestRegistry, WorkClone};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let connections = env_num("BENCH_CONNECTIONS", 32);
    let closed_n = env_num("BENCH_WEBHOOKS", 30_000);
    let rate = env_num("BENCH_WEBHOOK_RATE", 5_000);
    let open_secs = env_num("BENCH_WEBHOOK_SECS", 10);
    let builds = env_num("BENCH_BUILDS", 30);
    let bin = PathBuf::from(std::env::var("CONVEYOR_BIN_DIR").context("CONVEYOR_BIN_DIR: run benches/run")?);
    let dir = tempfile::tempdir()?;
    println!("ci-webhooks: signed GitHub push webhooks from a separate process on loopback ({connections} connections)");

    // An API-only replica (no workers): intake only, as the floors define it.
    let nats = TestNats::start().await;
    let ci = start_ci(&bin, &nats, "127.0.0.1:5000", 0, dir.path(), &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(ci.child.0.id());
    let url = format!("{}/hooks/push", ci.url);
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).build()?;

    // Warm-up, then the closed loop: `connections` senders as fast as answers come back.
    for (body, sig) in webhooks(500, 10_000_000) {
        ensure!(send(&client, &url, &body, &sig).await? == 202, "warm-up webhook refused");
    }
    let bodies = Arc::new(webhooks(closed_n, 0));
    let (mut closed_lat, refused, closed_elapsed) = closed_loop(&client, &url, bodies, connections).await?;
    closed_lat.sort();
    let throughput = closed_lat.len() as f64 / closed_elapsed.as_secs_f64();

    // The open loop: a steady `rate`, latency counted from when each request was due.
    let n = rate * open_secs;
    let bodies = Arc::new(webhooks(n, 1_000_000));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let begin = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let due = begin + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        handles.push(tokio::spawn(async move {
            let (body, sig) = &bodies[i];
            let sent = tokio::time::Instant::now();
            let ok = matches!(send(&client, &url, body, sig).await, Ok(202));
            (ok, sent.elapsed(), due.elapsed())
        }));
    }
    let (mut open_lat, mut open_sched, mut open_refused) = (Vec::with_capacity(n), Vec::with_capacity(n), 0);
    for h in handles {
        let (ok, l, from_due) = h.await?;
        if ok {
            open_lat.push(l);
            open_sched.push(from_due);
        } else {
            open_refused += 1
        }
    }
    open_lat.sort();
    open_sched.sort();
    let achieved = open_lat.len() as f64 / (Instant::now() - begin.into_std()).as_secs_f64().max(open_secs as f64);

    // Every accepted webhook is one queued job.
    let js = nats.jetstream().await;
    let queued = js.get_stream(ci_service::queue::STREAM).await?.info().await?.state.messages;
    drop(ci);

    // Push accepted -> build started, with a free worker: sequential pushes of a small real app.
    let (nats2, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = start_ci(&bin, &nats2, &registry.addr, 1, dir.path(), &[]).await?;
    let bare = BareRepo::create(dir.path().join("busybox-app.git"));
    let work = WorkClone::init(dir.path().join("app"), &bare);
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci-service/tests/fixtures/busybox-app"), &work.path);
    let mut start_lat = Vec::new();
    for i in 0..builds {
        work.write("VERSION", &i.to_string());
        let commit = work.commit_all(&format!("v{i}"));
        work.push();
        let body = serde_json::to_vec(&serde_json::json!({ "repo_url": bare.url(), "ref": "refs/heads/main", "commit": commit }))?;
        let sig = format!("sha256={}", signature::sign(&Secret::new(SECRET), &body));
        let answer: serde_json::Value = client
            .post(format!("{}/hooks/push", ci.url))
            .header("content-type", "application/json")
            .header("x-conveyor-signature-256", sig)
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        let id = answer["build_id"].as_u64().context("no build id")?;
        let rec = loop {
            let rec: serde_json::Value = reqwest::get(format!("{}/builds/{id}", ci.url)).await?.json().await?;
            if matches!(rec["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "skipped")) {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ensure!(rec["state"] == "succeeded", "bench build failed: {rec}");
        let parse = |k: &str| time::OffsetDateTime::parse(rec[k].as_str().unwrap_or(""), &time::format_description::well_known::Rfc3339);
        let waited = parse("started_at")? - parse("queued_at")?;
        start_lat.push(Duration::from_secs_f64(waited.as_seconds_f64().max(0.0)));
    }
    start_lat.sort();
    drop(ci);

    let (p50, p99) = (percentile(&closed_lat, 0.5), percentile(&closed_lat, 0.99));
    let (op50, op99) = (percentile(&open_lat, 0.5), percentile(&open_lat, 0.99));
    let (sp50, sp99) = (percentile(&start_lat, 0.5), percentile(&start_lat, 0.99));
    println!();
    println!("| measure | ci-service | floor |");
    println!("|---|---|---|");
    println!(
        "| webhooks accepted per second ({} signed pushes, {connections} connections, {refused} refused) | {throughput:.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | >= 5,000 req/s: {} |",
        closed_lat.len(),
        ms(p50),
        ms(p99),
        verdict(throughput >= 5000.0 && refused == 0)
    );
    println!(
        "| accept latency at {rate} req/s for {open_secs} s, request sent -> answer ({} accepted, {open_refused} refused, {achieved:.0} req/s achieved) | p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms | p99 < 5 ms: {} |",
        open_lat.len(),
        ms(op50),
        ms(op99),
        ms(*open_lat.last().unwrap_or(&Duration::ZERO)),
        verdict(op99 < Duration::from_millis(5) && open_refused == 0)
    );
    println!(
        "| the same, counted from each request's scheduled time (adds the load generator's own timer and scheduling delay) | p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms | (for reference) |",
        ms(percentile(&open_sched, 0.5)),
        ms(percentile(&open_sched, 0.99)),
        ms(*open_sched.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "| jobs in the queue after both runs | {queued} (expected {}) | one per accepted webhook: {} |",
        500 + closed_lat.len() + open_lat.len(),
        verdict(queued as usize == 500 + closed_lat.len() + open_lat.len())
    );
    println!(
        "| push accepted -> build started, free worker ({builds} builds) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p99 < 50 ms: {} |",
        ms(sp50),
        ms(sp99),
        ms(*start_lat.last().unwrap_or(&Duration::ZERO)),
        verdict(sp99 < Duration::from_millis(50))
    );
    match idle_rss {
        Some(kib) => println!("| ci-service idle RSS | {:.1} MB | < 30 MB: {} |", kib as f64 / 1024.0, verdict(kib < 30 * 1024)),
        None => println!("| ci-service idle RSS | unreadable | < 30 MB: FAIL |"),
    }
    Ok(())
}

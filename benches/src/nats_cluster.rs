//! What JetStream replication costs (issue 18): the same two loads on a single nats-server and
//! on a three-node JetStream cluster on loopback with every stream on three replicas, in one run
//! on the same machine, with the ratio. The loads are `cd-gitops`'s burst (events over 100 apps,
//! published one after the other as CI would, cd-service draining them into the manifest
//! repository; every final tag checked) and `ci-webhooks`'s closed loop (signed GitHub pushes
//! from this process, 32 connections, each queued as a job).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use conveyor_benches::{
    env_num,
    gitops::{event, manifest, seed, start_cd, wait_consumer_exists},
    percentile,
    webhooks::{closed_loop, send, start_ci, webhooks},
};
use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::TestNats;
use time::OffsetDateTime;

struct Figures {
    burst: Duration,
    commits: usize,
    wrong: usize,
    throughput: f64,
    p99: Duration,
    refused: usize,
}

async fn measure(
    nats: &TestNats,
    bin: &std::path::Path,
    dir: &std::path::Path,
    events_n: usize,
    apps: usize,
    webhooks_n: usize,
    connections: usize,
) -> anyhow::Result<Figures> {
    // cd-service's burst.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let burst: Vec<(usize, String)> = (0..events_n)
        .map(|i| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng % apps as u64) as usize, format!("r{}-{i}", nats.replicas))
        })
        .collect();
    let mut expected = std::collections::HashMap::new();
    for (app, tag) in &burst {
        expected.insert(*app, tag.clone());
    }
    let repo = seed(dir, &format!("manifests-r{}", nats.replicas), apps);
    let work = dir.join(format!("cd-r{}", nats.replicas));
    std::fs::create_dir_all(&work)?;
    let cd = start_cd(bin, nats, &repo, &work)?;
    wait_consumer_exists(nats).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = OffsetDateTime::now_utc();
    let start = Instant::now();
    let mut last = 0;
    for (i, (app, tag)) in burst.iter().enumerate() {
        last = nats.publish_event(&event(*app, tag, t0 + time::Duration::milliseconds(i as i64))).await;
    }
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", last, Duration::from_secs(600)).await;
    let burst_time = start.elapsed();
    drop(cd);
    let commits = repo.count("main") - 1;
    let wrong = expected
        .iter()
        .filter(|(app, tag)| repo.show("main", &format!("apps/app{app:03}/deployment.yaml")) != manifest(**app, tag))
        .count();

    // ci-service's intake.
    let ci = start_ci(bin, nats, "127.0.0.1:5000", 0, dir, &[]).await?;
    let url = format!("{}/hooks/push", ci.url);
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).build()?;
    let offset = usize::from(nats.replicas) * 100_000_000;
    for (body, sig) in webhooks(500, offset + 10_000_000) {
        ensure!(send(&client, &url, &body, &sig).await? == 202, "warm-up webhook refused");
    }
    let bodies = Arc::new(webhooks(webhooks_n, offset));
    let (mut lat, refused, elapsed) = closed_loop(&client, &url, bodies, connections).await?;
    lat.sort();
    drop(ci);
    Ok(Figures {
        burst: burst_time,
        commits,
        wrong,
        throughput: lat.len() as f64 / elapsed.as_secs_f64(),
        p99: percentile(&lat, 0.99),
        refused,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let events_n = env_num("BENCH_EVENTS", 1000);
    let apps = env_num("BENCH_APPS", 100);
    let webhooks_n = env_num("BENCH_WEBHOOKS", 20_000);
    let connections = env_num("BENCH_CONNECTIONS", 32);
    let bin = PathBuf::from(std::env::var("CONVEYOR_BIN_DIR").context("CONVEYOR_BIN_DIR: run benches/run")?);
    let dir = tempfile::tempdir()?;
    println!("nats-cluster: {events_n} events over {apps} apps, then {webhooks_n} webhooks over {connections} connections, on one node and on three (R3)");

    let single = TestNats::start().await;
    let one = measure(&single, &bin, dir.path(), events_n, apps, webhooks_n, connections).await?;
    drop(single);
    let cluster = TestNats::start_cluster().await;
    let three = measure(&cluster, &bin, dir.path(), events_n, apps, webhooks_n, connections).await?;
    let replicas = cluster.jetstream().await.get_stream(EVENTS_STREAM).await?.info().await?.config.num_replicas;
    drop(cluster);
    ensure!(replicas == 3, "the cluster's event stream has {replicas} replicas, not 3");

    println!();
    println!("| measure | one node (R1) | three-node cluster (R3) | R3 / R1 |");
    println!("|---|---|---|---|");
    println!(
        "| {events_n} events over {apps} apps, publish -> all committed | {:.2} s ({} commits, {} wrong final tags) | {:.2} s ({} commits, {} wrong final tags) | {:.2}x the time |",
        one.burst.as_secs_f64(),
        one.commits,
        one.wrong,
        three.burst.as_secs_f64(),
        three.commits,
        three.wrong,
        three.burst.as_secs_f64() / one.burst.as_secs_f64()
    );
    println!(
        "| webhooks accepted per second ({webhooks_n}, {connections} connections) | {:.0} req/s (p99 {:.1} ms, {} refused) | {:.0} req/s (p99 {:.1} ms, {} refused) | {:.2}x the throughput |",
        one.throughput,
        one.p99.as_secs_f64() * 1000.0,
        one.refused,
        three.throughput,
        three.p99.as_secs_f64() * 1000.0,
        three.refused,
        three.throughput / one.throughput
    );
    ensure!(one.wrong == 0 && three.wrong == 0, "a final tag is wrong");
    Ok(())
}

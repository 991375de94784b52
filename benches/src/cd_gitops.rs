//! cd-service against the baseline of issue 4: a Jenkins-style CD job that, per event, clones
//! the manifest repo, `sed`s the tag, commits and pushes. Both write to a bare repository on
//! local disk with the same 100-app tree. Prints throughput on a burst (all final tags checked),
//! publish -> commit latency at a steady rate, and cd-service's idle RSS, beside their goals.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use conveyor_benches::{
    env_num,
    gitops::{event, manifest, repository, seed, start_cd, wait_consumer_exists},
    percentile, rss_kib,
};
use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::{BareRepo, TestNats};
use time::OffsetDateTime;

/// The baseline: what a CD job's shell step does for one event.
const BASELINE_SCRIPT: &str = r#"set -e
w=$(mktemp -d)
git clone -q "$REMOTE" "$w/m"
cd "$w/m"
sed -i "s#image: $REPO:[^ ]*#image: $REPO:$TAG#" "apps/$APP/deployment.yaml"
git -c user.name=jenkins -c user.email=jenkins@ci commit -q -am "deploy $APP:$TAG"
git push -q origin HEAD:main
rm -rf "$w"
"#;

fn run_baseline(bare: &BareRepo, events: &[(usize, String)]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for (app, tag) in events {
        let status = Command::new("bash")
            .args(["-c", BASELINE_SCRIPT])
            .env("REMOTE", bare.url())
            .env("REPO", repository(*app))
            .env("APP", format!("app{app:03}"))
            .env("TAG", tag)
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "baseline step failed for app{app:03}:{tag}");
    }
    Ok(start.elapsed())
}

/// Event ids in the trailers of the commits between `from` (exclusive) and `to`.
fn landed_events(repo: &git2::Repository, from: git2::Oid, to: git2::Oid) -> anyhow::Result<Vec<String>> {
    let mut walk = repo.revwalk()?;
    walk.push(to)?;
    walk.hide(from)?;
    let mut ids = Vec::new();
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        ids.extend(conveyor_proto::trailers::values(commit.message().unwrap_or_default(), conveyor_proto::trailers::EVENT_ID));
    }
    Ok(ids)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let events_n = env_num("BENCH_EVENTS", 1000);
    let apps = env_num("BENCH_APPS", 100);
    let rate = env_num("BENCH_RATE", 10);
    let latency_n = env_num("BENCH_LATENCY_EVENTS", 300);
    let bin = PathBuf::from(std::env::var("CONVEYOR_BIN_DIR").context("CONVEYOR_BIN_DIR: run benches/run")?);
    let dir = tempfile::tempdir()?;
    println!("cd-gitops: {events_n} events over {apps} apps, bare repository on local disk");

    // The burst: every app gets events_n/apps builds, in build order.
    let t0 = OffsetDateTime::now_utc();
    let rounds = events_n.div_ceil(apps);
    let mut burst = Vec::with_capacity(events_n);
    'outer: for round in 1..=rounds {
        for app in 0..apps {
            if burst.len() == events_n {
                break 'outer;
            }
            burst.push((app, format!("r{round}")));
        }
    }
    let mut expected: HashMap<usize, String> = HashMap::new();
    for (app, tag) in &burst {
        expected.insert(*app, tag.clone());
    }

    // Baseline.
    let base_repo = seed(dir.path(), "baseline", apps);
    let baseline = run_baseline(&base_repo, &burst)?;
    for (app, tag) in &expected {
        ensure!(
            base_repo.show("main", &format!("apps/app{app:03}/deployment.yaml")) == manifest(*app, tag),
            "baseline left app{app:03} wrong"
        );
    }

    // Conveyor: the events are published as CI would, then cd-service drains them.
    let nats = TestNats::start().await;
    let conveyor_repo = seed(dir.path(), "conveyor", apps);
    let work = dir.path().join("cd");
    std::fs::create_dir_all(&work)?;
    let cd = start_cd(&bin, &nats, &conveyor_repo, &work)?;
    wait_consumer_exists(&nats).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(cd.0.id());

    let start = Instant::now();
    let mut last = 0;
    for (i, (app, tag)) in burst.iter().enumerate() {
        last = nats.publish_event(&event(*app, tag, t0 + time::Duration::milliseconds(i as i64))).await;
    }
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", last, Duration::from_secs(600)).await;
    let conveyor = start.elapsed();
    let commits = conveyor_repo.count("main") - 1;
    let mut wrong = 0;
    for (app, tag) in &expected {
        if conveyor_repo.show("main", &format!("apps/app{app:03}/deployment.yaml")) != manifest(*app, tag) {
            wrong += 1;
        }
    }

    // Latency at a steady rate: publish -> the commit carrying the event is on the remote.
    let repo = git2::Repository::open_bare(&conveyor_repo.path)?;
    let mut seen_head = repo.refname_to_id("refs/heads/main")?;
    let mut published: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(latency_n);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = OffsetDateTime::now_utc();
    let mut next_send = Instant::now();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(latency_n as u64 / rate as u64 + 60);
    while latencies.len() < latency_n && Instant::now() < deadline {
        if sent < latency_n && Instant::now() >= next_send {
            let ev = event(sent % apps, &format!("l{sent}"), started + time::Duration::milliseconds(sent as i64));
            published.insert(ev.event_id.clone(), Instant::now());
            nats.publish_event(&ev).await;
            sent += 1;
            next_send += interval;
        }
        let head = repo.refname_to_id("refs/heads/main")?;
        if head != seen_head {
            let now = Instant::now();
            for id in landed_events(&repo, seen_head, head)? {
                if let Some(t) = published.remove(&id) {
                    latencies.push(now - t);
                }
            }
            seen_head = head;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    latencies.sort();
    drop(cd);

    let speedup = baseline.as_secs_f64() / conveyor.as_secs_f64();
    println!();
    println!("| measure | baseline (clone + sed + commit + push per event) | cd-service | goal |");
    println!("|---|---|---|---|");
    println!(
        "| {events_n} events over {apps} apps | {:.1} s ({:.1} ms/event) | {:.2} s ({} commits, {} wrong final tags) | >= 50x faster, all tags right: {:.0}x {} |",
        baseline.as_secs_f64(),
        baseline.as_secs_f64() * 1000.0 / events_n as f64,
        conveyor.as_secs_f64(),
        commits,
        wrong,
        speedup,
        if speedup >= 50.0 && wrong == 0 { "PASS" } else { "FAIL" }
    );
    if latencies.is_empty() {
        println!("| publish -> commit on remote | - | no event landed | p99 < 250 ms: FAIL |");
    } else {
        let p50 = percentile(&latencies, 0.50);
        let p99 = percentile(&latencies, 0.99);
        println!(
            "| publish -> commit on remote, {rate} events/s, {} events | - | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms | p99 < 250 ms: {} |",
            latencies.len(),
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            latencies.last().expect("not empty").as_secs_f64() * 1000.0,
            if p99 < Duration::from_millis(250) && latencies.len() == latency_n { "PASS" } else { "FAIL" }
        );
    }
    match idle_rss {
        Some(kib) => println!(
            "| cd-service idle RSS | - | {:.1} MB | < 30 MB: {} |",
            kib as f64 / 1024.0,
            if kib < 30 * 1024 { "PASS" } else { "FAIL" }
        ),
        None => println!("| cd-service idle RSS | - | unreadable | < 30 MB: FAIL |"),
    }
    Ok(())
}

//! The cluster scenarios: a three-node JetStream cluster on loopback, every stream and bucket of
//! both services on three replicas (`CONVEYOR_STREAM_REPLICAS=3`), every node in their
//! `CONVEYOR_NATS_URL`. During a steady burst of pushes and events:
//! - `nats-node-loss`: a random node is killed with SIGKILL a quarter of the way in and started
//!   again after half of the burst;
//! - `nats-leader-loss`: the node leading the image-built events stream is killed, then (after it
//!   came back) the node leading the build queue.
//!
//! Both end like every scenario: nothing lost, nothing duplicated, no crash, every app at its
//! newest build.

use std::time::Duration;

use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::TestNats;

use crate::{
    scenarios::{apps, check_commits, check_pushes, check_tags, count_crashes, drain, wait_builds_finished, wait_ready, PUSH_LIMIT},
    world::{event, publish, send_push, AppRepo, World},
    Rng, Row, Scale,
};

/// ci-service's build queue.
const JOBS_STREAM: &str = "CONVEYOR_CI_JOBS";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// A random node, SIGKILL, back after a while.
    AnyNode,
    /// The leader of the events stream, then the leader of the jobs stream.
    Leaders,
}

pub async fn nats_node_loss(scale: &Scale, rng: Rng) -> anyhow::Result<Row> {
    lose_nodes(scale, rng, Loss::AnyNode).await
}

pub async fn nats_leader_loss(scale: &Scale, rng: Rng) -> anyhow::Result<Row> {
    lose_nodes(scale, rng, Loss::Leaders).await
}

async fn lose_nodes(scale: &Scale, mut rng: Rng, loss: Loss) -> anyhow::Result<Row> {
    let ci_names = apps("app", 2);
    let cd_names = apps("svc", 5);
    let mut world = World::new_on(&[ci_names.clone(), cd_names.clone()].concat(), TestNats::start_cluster().await).await?;
    let mut ci = world.start_ci(2, 2);
    let mut cd = world.start_cd(2);
    let ci_urls = ci.urls();
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let mut repos: Vec<AppRepo> = ci_names.iter().map(|a| world.app_repo(a)).collect();
    let client = world.nats.connect_admin().await;
    let signer = world.nats.keys.ci_signer();
    let rounds = scale.nats_events / cd_names.len();
    let steps = scale.nats_pushes.max(rounds);
    let t0 = time::OffsetDateTime::now_utc();
    let pace = Duration::from_millis(400);
    let (http, registry) = (world.http.clone(), world.registry.addr.clone());

    let mut redelivered = 0;
    let inputs = async {
        for step in 0..steps {
            if step < scale.nats_pushes {
                let repo = &mut repos[step % ci_names.len()];
                let commit = World::commit_and_push(repo, step);
                redelivered += send_push(&http, &ci_urls, step, &repo.bare.url(), &commit, PUSH_LIMIT).await? - 1;
            }
            if step < rounds {
                for app in &cd_names {
                    publish(&client, &signer, &event(&registry, app, step + 1, t0), PUSH_LIMIT).await?;
                }
            }
            tokio::time::sleep(pace).await;
        }
        anyhow::Ok(())
    };
    let burst = pace * steps as u32;
    let nats = &mut world.nats;
    let mut killed: Vec<String> = Vec::new();
    let faults = async {
        match loss {
            Loss::AnyNode => {
                tokio::time::sleep(burst / 4).await;
                let i = rng.below(nats.node_count());
                nats.kill_node(i);
                killed.push(format!("n{i}"));
                tokio::time::sleep(burst / 2).await;
                nats.start_node(i).await;
            }
            Loss::Leaders => {
                for (at, stream) in [(burst / 5, EVENTS_STREAM), (burst / 4, JOBS_STREAM)] {
                    tokio::time::sleep(at).await;
                    let i = nats.leader_of(stream).await.unwrap_or(0);
                    nats.kill_node(i);
                    killed.push(format!("n{i} (leading {stream})"));
                    tokio::time::sleep(burst / 5).await;
                    nats.start_node(i).await;
                }
            }
        }
    };
    let (sent, ()) = tokio::join!(inputs, faults);
    sent?;
    let leaders_after = (world.nats.leader_of(EVENTS_STREAM).await, world.nats.leader_of(JOBS_STREAM).await);
    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    let mut row = Row {
        scenario: if loss == Loss::AnyNode { "nats-node-loss" } else { "nats-leader-loss" },
        injected: killed.len(),
        faults: match loss {
            Loss::AnyNode => "1 of 3 NATS nodes kill -9, back later".into(),
            Loss::Leaders => "stream leaders kill -9 (events, jobs)".into(),
        },
        inputs: format!("{} pushes, {} events", scale.nats_pushes, rounds * cd_names.len()),
        ..Row::default()
    };
    row.notes.push(format!(
        "killed {}; leaders afterwards: events n{}, jobs n{}; {redelivered} webhook deliveries were answered 503 or not at all and sent again",
        killed.join(", "),
        leaders_after.0.map_or("?".into(), |i| i.to_string()),
        leaders_after.1.map_or("?".into(), |i| i.to_string()),
    ));
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_tags(&world, &cd_names, rounds, &mut row);
    check_commits(&world, &mut row);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

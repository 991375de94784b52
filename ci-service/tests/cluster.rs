//! ci-service on a three-node JetStream cluster (the testkit's, on loopback): every stream and
//! bucket it creates has three replicas, `--nats-url` lists every node, and a push sent right
//! after the node leading the build queue is killed is taken (the enqueue waits out the
//! election, within a forge's 10 s; a longer election is a 503 and a redelivery) and built; a stream that exists with another
//! replica count is named at start instead of being used.

mod common;

use common::{app_repo, Ci};
use conveyor_testkit::{docker::BUSYBOX_IMAGE, TestDocker, TestNats, TestRegistry};

const CI_STREAMS: [&str; 5] =
    ["CONVEYOR_IMAGES", "CONVEYOR_CI_JOBS", "CONVEYOR_CI_LOGS", "KV_conveyor_ci_builds", "KV_CONVEYOR_CI_BRANCH_HEADS"];

#[tokio::test(flavor = "multi_thread")]
async fn on_a_three_node_cluster_every_stream_has_three_replicas_and_a_lost_leader_costs_no_build() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (mut nats, registry) = (TestNats::start_cluster().await, TestRegistry::start().await);
    assert_eq!(nats.ci_args().servers().len(), 3, "the services are given every node");
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let js = nats.jetstream().await;
    for name in CI_STREAMS {
        let info = js.get_stream(name).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        assert_eq!(info.cluster.as_ref().map(|c| c.replicas.len()), Some(2), "{name} has two followers");
    }
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, first) = app_repo(dir.path(), &[]);
    let id = ci.push_commit(&bare, "refs/heads/main", &first).await;
    assert_eq!(ci.wait_finished(id).await["state"], "succeeded");

    // The node leading the build queue dies (SIGKILL): the next push is still queued, built
    // and published once the cluster has elected another leader.
    let leader = nats.leader_of("CONVEYOR_CI_JOBS").await.expect("the queue has a leader");
    nats.kill_node(leader);
    work.write("VERSION", "2\n");
    let second = work.commit_all("second");
    work.push();
    // Queueing waits out the election (up to 9.3 s) instead of answering 503 at once: each
    // delivery is answered before a forge's 10 s. An election longer than that (a loaded
    // machine) gets a 503, and the sender delivers again, as a forge's redelivery would.
    let mut deliveries = Vec::new();
    let (status, answer) = loop {
        let sent = std::time::Instant::now();
        let (status, answer) = ci.push(serde_json::json!({"repo_url": bare.url(), "ref": "refs/heads/main", "commit": second})).await;
        deliveries.push((status, sent.elapsed()));
        assert!(sent.elapsed() < std::time::Duration::from_secs(10), "answered after {:?}: a forge gives up at 10 s", sent.elapsed());
        if status != 503 || deliveries.len() == 3 {
            break (status, answer);
        }
    };
    eprintln!("deliveries of the push after the queue leader's node was killed (status, time to answer): {deliveries:?}");
    assert_eq!(status, 202, "{answer}; deliveries {deliveries:?}");
    let build = ci.wait_finished(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    let after = nats.leader_of("CONVEYOR_CI_JOBS").await.expect("a new leader");
    assert_ne!(after, leader, "another node leads the queue now");
    nats.start_node(leader).await;
    let events = nats.stream_messages(conveyor_proto::EVENTS_STREAM).await;
    assert_eq!(events.len(), 2, "one event per build, none lost or doubled");
    ci.shutdown().await;

    // Told one replica where the streams have three: refused at start, naming the stream.
    let err = Ci::try_start(&nats, &registry.addr, |cfg| cfg.nats.stream_replicas = 1).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("has 3 replica(s), not the 1 of --stream-replicas"), "{text}");
}

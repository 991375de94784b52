//! cd-service as a process under faults: SIGKILL at several points of a burst leaves every final
//! tag right and no event committed twice; pushes by others during a burst are all kept; two
//! replicas on the one durable consumer both commit, and no event twice.

mod common;
use common::image_built;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use conveyor_testkit::{BareRepo, ChildGuard, TestNats, WorkClone};

const APPS: usize = 10;

fn repository(app: usize) -> String {
    format!("registry.example.test/team/app{app}")
}

fn manifest(app: usize, tag: &str) -> String {
    format!("spec:\n  containers:\n    - name: app{app}\n      image: {}:{tag} # CI\n", repository(app))
}

fn event(app: usize, round: usize, t0: time::OffsetDateTime) -> ImageBuilt {
    image_built(&format!("app{app}"), &repository(app), &format!("r{round}"), t0 + time::Duration::seconds(round as i64))
}

fn seeded_repo(dir: &Path) -> BareRepo {
    let fixture = dir.join("fixture");
    for app in 0..APPS {
        std::fs::create_dir_all(fixture.join(format!("apps/app{app}"))).unwrap();
        std::fs::write(fixture.join(format!("apps/app{app}/deployment.yaml")), manifest(app, "0")).unwrap();
    }
    common::seeded_repo(dir, &fixture)
}

/// Publishes `rounds` builds of every app; returns the last stream sequence.
async fn publish_burst(nats: &TestNats, rounds: usize) -> u64 {
    nats.ensure_events_stream().await;
    let t0 = time::OffsetDateTime::now_utc();
    let mut last = 0;
    for round in 1..=rounds {
        for app in 0..APPS {
            last = nats.publish_event(&event(app, round, t0)).await;
        }
    }
    last
}

fn spawn_cd(nats: &TestNats, bare: &BareRepo, workdir: &Path, batch_max: usize) -> ChildGuard {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(workdir.join("cd-service.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cd-service"))
        .envs(nats.cd_env())
        .env("CONVEYOR_API_TOKEN", conveyor_testkit::API_TOKEN)
        .env("CONVEYOR_CD_LISTEN", "127.0.0.1:0")
        .env("CONVEYOR_MANIFEST_REPO", bare.url())
        .env("CONVEYOR_WORKDIR", workdir.join("work"))
        .env("CONVEYOR_BATCH_MAX", batch_max.to_string())
        .env("CONVEYOR_ACK_WAIT_SECS", "2")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cd-service");
    ChildGuard(child)
}

/// Every `Conveyor-Event-Id` trailer on the branch, oldest commit last.
fn committed_event_ids(bare: &BareRepo) -> Vec<String> {
    bare.trailer_values("main", "Conveyor-Event-Id")
}

fn assert_final_tags(bare: &BareRepo, rounds: usize) {
    for app in 0..APPS {
        assert_eq!(bare.show("main", &format!("apps/app{app}/deployment.yaml")), manifest(app, &format!("r{rounds}")), "app{app}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_burst_leaves_every_tag_right_and_no_event_committed_twice() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path());
    let rounds = 40;
    let last = publish_burst(&nats, rounds).await;

    // Small batches, so that there are many commits to be killed in the middle of. Each kill
    // waits for fresh progress on the remote, then strikes a few milliseconds later.
    let mut kills = 0;
    for pause_ms in [5u64, 30, 0, 45, 15] {
        let before = committed_event_ids(&bare).len();
        let mut cd = spawn_cd(&nats, &bare, dir.path(), 4);
        conveyor_testkit::wait_until("cd-service to commit", Duration::from_secs(30), || {
            let bare = &bare;
            async move { committed_event_ids(bare).len() > before }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        cd.0.kill().expect("SIGKILL cd-service");
        cd.0.wait().unwrap();
        kills += 1;
    }
    // The kills fell in the middle of the burst: some of it landed, not all of it.
    let landed_before_restart = committed_event_ids(&bare).len();
    assert!(
        landed_before_restart > 0 && landed_before_restart < APPS * rounds,
        "{landed_before_restart} events landed before the last restart"
    );
    let _cd = spawn_cd(&nats, &bare, dir.path(), 4);
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", last, Duration::from_secs(120)).await;

    let log = std::fs::read_to_string(dir.path().join("cd-service.log")).unwrap_or_default();
    assert_final_tags(&bare, rounds);
    let ids = committed_event_ids(&bare);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "an event was committed twice after {kills} kills:\n{log}");
    assert!(bare.count("main") > 2, "the burst was spread over several commits");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_by_others_during_a_burst_are_all_kept() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path());
    let rounds = 20;
    let _cd = spawn_cd(&nats, &bare, dir.path(), 3);

    // A human keeps committing elsewhere in the repository while the burst is applied.
    let human = WorkClone::clone_of(dir.path().join("human"), &bare);
    let outside = std::thread::spawn(move || {
        for i in 0..15 {
            human.write(&format!("docs/note-{i}.md"), &format!("note {i}\n"));
            human.commit_all(&format!("docs: note {i}"));
            human.push_rebasing(50);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let last = publish_burst(&nats, rounds).await;
    outside.join().expect("outside pusher");
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", last, Duration::from_secs(120)).await;

    assert_final_tags(&bare, rounds);
    let log = bare.log_oneline("main");
    for i in 0..15 {
        assert!(log.contains(&format!("docs: note {i}")), "outside commit {i} lost:\n{log}");
        assert_eq!(bare.show("main", &format!("docs/note-{i}.md")), format!("note {i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_consumer_and_commit_every_event_at_most_once() {
    let nats = TestNats::start().await;
    nats.ensure_events_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path());
    let (a, b) = (dir.path().join("replica-a"), dir.path().join("replica-b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Two processes, each with its own warm clone, on the one durable consumer.
    let _a = spawn_cd(&nats, &bare, &a, 4);
    let _b = spawn_cd(&nats, &bare, &b, 4);
    for replica in [&a, &b] {
        conveyor_testkit::wait_until("both replicas consuming", Duration::from_secs(30), || async move {
            std::fs::read_to_string(replica.join("cd-service.log")).is_ok_and(|l| l.contains("consuming image-built events"))
        })
        .await;
    }
    let rounds = 30;
    let last = publish_burst(&nats, rounds).await;
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", last, Duration::from_secs(120)).await;

    assert_final_tags(&bare, rounds);
    let ids = committed_event_ids(&bare);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "no event is committed by both replicas");
    let log = |dir: &Path| std::fs::read_to_string(dir.join("cd-service.log")).unwrap_or_default();
    for (name, dir) in [("a", &a), ("b", &b)] {
        assert!(log(dir).contains("manifest commit pushed"), "replica {name} took part:\n{}", log(dir));
    }
}

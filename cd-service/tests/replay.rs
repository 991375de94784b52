//! Replays and deploy history against real NATS JetStream and a real manifest repository, driven
//! through the `conveyor` command line: three builds deploy, a replay rolls back to the first,
//! "previous" redeploys the third, and both the manifest history and `conveyor history` show
//! each step; bad input gets clear errors; a dry run commits nothing; events that aged out of
//! the stream name the oldest replayable one; a replay racing a new build ends consistently.

mod common;

use std::{path::Path, process::Command};

use common::{applied, image_built, seeded_repo, start_cd, try_start_cd, RunningCd};
use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::{BareRepo, TestNats};
use serde_json::Value;

const REPO: &str = "registry.example.test/team/web";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests");

fn build(tag: &str, minute: i64) -> conveyor_proto::ImageBuilt {
    image_built("web", REPO, tag, time::macros::datetime!(2026-11-23 10:00 UTC) + time::Duration::minutes(minute))
}

/// Runs the `conveyor` CLI against `cd`; returns (success, stdout, stderr).
fn conveyor(cd: &RunningCd, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(conveyor_testkit::conveyor_cli())
        .args(args)
        .env("CONVEYOR_CD_URL", format!("http://{}", cd.http))
        .env("CONVEYOR_API_TOKEN", conveyor_testkit::API_TOKEN)
        .env("USER", "alice")
        .output()
        .expect("run conveyor");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn conveyor_json(cd: &RunningCd, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = conveyor(cd, &all);
    assert!(ok, "conveyor {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn deployed_tag(bare: &BareRepo) -> String {
    let text = bare.show("main", "apps/web/deployment.yaml");
    let line = text.lines().find(|l| l.contains("image: registry.example.test/team/web:")).unwrap();
    line.split("team/web:").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

async fn three_builds(nats: &TestNats) -> [u64; 3] {
    let mut seqs = [0; 3];
    for (i, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        seqs[i] = nats.publish_event(&build(tag, i as i64)).await;
        applied(nats, seqs[i]).await;
    }
    seqs
}

#[tokio::test(flavor = "multi_thread")]
async fn three_builds_a_rollback_to_the_first_and_a_redeploy_of_the_third() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    let [s1, _s2, _s3] = three_builds(&nats).await;
    assert_eq!(deployed_tag(&bare), "v3");

    // Roll back to the first build by its stream sequence: past the out-of-order guard.
    let (ok, out, err) = conveyor(&cd, &["replay", "web", "--seq", &s1.to_string()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("queued: rollback web/default to registry.example.test/team/web:v1 (replay of event evt-web-v1"), "{out}");
    let seq = out.trim().rsplit("stream sequence ").next().unwrap().trim_end_matches(')').parse().unwrap();
    applied(&nats, seq).await;
    assert_eq!(deployed_tag(&bare), "v1", "rolled back");
    let msg = bare.message("main");
    assert!(msg.starts_with("rollback(web): registry.example.test/team/web:v1\n"), "{msg}");
    assert!(
        msg.contains(&format!(
            "roll back default to registry.example.test/team/web:v1 (replay of event evt-web-v1, stream sequence {s1}, requested by alice)"
        )),
        "{msg}"
    );
    assert!(msg.contains("Conveyor-Replay: rollback evt-web-v1 by alice"), "{msg}");

    // "previous": one step back in the history is the third build; newer than v1, so a redeploy.
    let plan = conveyor_json(&cd, &["replay", "web", "--to", "previous"]);
    assert_eq!((plan["kind"].as_str(), plan["image"].as_str()), (Some("redeploy"), Some("registry.example.test/team/web:v3")));
    applied(&nats, plan["sequence"].as_u64().unwrap()).await;
    assert_eq!(deployed_tag(&bare), "v3");

    // The history, newest first, in both the manifest repository and `conveyor history`.
    let history = conveyor_json(&cd, &["history", "web"]);
    let rows: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["tag"].as_str().unwrap().to_string()))
        .collect();
    let want = [("redeploy", "v3"), ("rollback", "v1"), ("build", "v3"), ("build", "v2"), ("build", "v1")];
    assert_eq!(rows, want.map(|(k, t)| (k.to_string(), t.to_string())));
    let git_log = conveyor_testkit::run(Command::new("git").arg("-C").arg(&bare.path).args(["log", "--format=%H", "-5", "main"]));
    let commits: Vec<&str> = git_log.lines().collect();
    for (d, commit) in history.as_array().unwrap().iter().zip(&commits) {
        assert_eq!(d["manifest_commit"].as_str(), Some(*commit), "each step is its own manifest commit");
        assert!(d["sequence"].is_u64() && d["digest"].as_str().unwrap().starts_with("sha256:") && d["deployed_at"].is_string());
    }
    assert_eq!(history[1]["of_event"], "evt-web-v1");
    let (ok, table, _) = conveyor(&cd, &["history", "web"]);
    assert!(ok && table.lines().count() == 6, "{table}");
    assert!(table.lines().nth(2).unwrap().contains("rollback") && table.contains("(of evt-web-v1)"), "{table}");

    // A later build still deploys normally after a replay.
    applied(&nats, nats.publish_event(&build("v4", 10)).await).await;
    assert_eq!(deployed_tag(&bare), "v4");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_replays_get_clear_errors_and_a_dry_run_commits_nothing() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    let [s1, ..] = three_builds(&nats).await;
    let other = nats.publish_event(&image_built("api", "registry.example.test/team/api", "1.0.1", time::OffsetDateTime::now_utc())).await;
    applied(&nats, other).await;
    let head = bare.head("main").unwrap();
    let events = nats.stream_messages(EVENTS_STREAM).await.len();

    let refused = |args: &[&str], needle: &str| {
        let (ok, out, err) = conveyor(&cd, args);
        assert!(!ok, "conveyor {args:?} should fail: {out}");
        assert!(err.contains(needle), "conveyor {args:?}: {err}");
    };
    refused(&["replay", "nope", "--to", "previous"], "unknown app \"nope\"");
    refused(&["replay", "web", "--tag", "v9"], "no image-built event for web:v9 in the stream");
    refused(
        &["replay", "web", "--tag", "v9"],
        &format!("the oldest replayable event is sequence {s1} (registry.example.test/team/web:v1)"),
    );
    refused(&["replay", "web", "--seq", "999"], "stream sequence 999 is out of range: the stream holds 1..=4");
    refused(&["replay", "web", "--seq", &other.to_string()], "is an event of app api, not web");
    refused(&["replay", "web", "--to", "yesterday"], "`to` must be \"previous\"");
    refused(&["replay", "web", "--env", "production", "--to", "previous"], "app web has no environment \"production\"");
    refused(&["history", "nope"], "nothing was ever deployed or built for app \"nope\"");

    let (ok, out, err) = conveyor(&cd, &["replay", "web", "--tag", "v1", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("dry run: rollback web/default to registry.example.test/team/web:v1"), "{out}");
    assert!(out.contains("-        image: registry.example.test/team/web:v3 # updated by CI"), "{out}");
    assert!(out.contains("+        image: registry.example.test/team/web:v1 # updated by CI"), "{out}");
    assert_eq!(bare.head("main").unwrap(), head, "a dry run commits nothing");
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), events, "and publishes nothing");
    assert_eq!(deployed_tag(&bare), "v3");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_that_aged_out_name_the_oldest_replayable_one() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    // cd-service creates the stream here, with its retention limit of 3 events.
    let cd = try_start_cd(&nats, &bare.url(), |c| c.stream_max_messages = 3).await.unwrap();
    let mut last = 0;
    for (i, tag) in ["v1", "v2", "v3", "v4", "v5"].iter().enumerate() {
        last = nats.publish_event(&build(tag, i as i64)).await;
    }
    applied(&nats, last).await;
    let (ok, _, err) = conveyor(&cd, &["replay", "web", "--seq", "1"]);
    assert!(!ok);
    assert!(
        err.contains(
            "stream sequence 1 has aged out of the stream; the oldest replayable event is sequence 3 (registry.example.test/team/web:v3)"
        ),
        "{err}"
    );
    let (ok, _, err) = conveyor(&cd, &["replay", "web", "--tag", "v2"]);
    assert!(!ok && err.contains("(never built, or aged out); the oldest replayable event is sequence 3"), "{err}");
    let plan = conveyor_json(&cd, &["replay", "web", "--seq", "3"]);
    applied(&nats, plan["sequence"].as_u64().unwrap()).await;
    assert_eq!(deployed_tag(&bare), "v3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_racing_a_new_build_ends_with_the_later_of_the_two() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    three_builds(&nats).await;
    let url = format!("http://{}/replay", cd.http);
    let body = serde_json::json!({ "app": "web", "tag": "v1", "requested_by": "alice" });
    let v4 = build("v4", 10);
    let (replayed, built) = tokio::join!(
        async {
            let req = reqwest::Client::new().post(&url).bearer_auth(conveyor_testkit::API_TOKEN).json(&body);
            req.send().await.unwrap().json::<Value>().await.unwrap()
        },
        nats.publish_event(&v4)
    );
    let replay_seq = replayed["sequence"].as_u64().expect("replay queued");
    applied(&nats, replay_seq.max(built)).await;
    let winner = if replay_seq > built { "v1" } else { "v4" };
    assert_eq!(deployed_tag(&bare), winner, "the queue's order decides: replay {replay_seq}, build {built}");
    let history = conveyor_json(&cd, &["history", "web", "--limit", "2"]);
    let tags: Vec<&str> = history.as_array().unwrap().iter().map(|d| d["tag"].as_str().unwrap()).collect();
    let expected = if winner == "v1" { ["v1", "v4"] } else { ["v4", "v1"] };
    assert_eq!(tags, expected, "both landed, in queue order");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_environment_replays_and_a_replay_into_another_environment_is_a_promotion() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/environments")));
    let cd = start_cd(&nats, &bare.url()).await;
    let tag_in = |env: &str| {
        let k = bare.show("main", &format!("overlays/{env}/kustomization.yaml"));
        k.lines().find_map(|l| l.trim().strip_prefix("newTag: ")).unwrap().trim_matches('"').to_string()
    };
    applied(&nats, nats.publish_event(&build("v2", 1)).await).await;
    applied(&nats, nats.publish_event(&build("v3", 2)).await).await;
    assert_eq!((tag_in("staging").as_str(), tag_in("production").as_str()), ("v3", "1.0.0"));

    let (ok, _, err) = conveyor(&cd, &["replay", "web", "--to", "previous"]);
    assert!(!ok && err.contains("app web has several environments (production, staging): say which one"), "{err}");
    let plan = conveyor_json(&cd, &["replay", "web", "--env", "staging", "--to", "previous"]);
    assert_eq!((plan["kind"].as_str(), plan["environment"].as_str()), (Some("rollback"), Some("staging")));
    applied(&nats, plan["sequence"].as_u64().unwrap()).await;
    assert_eq!((tag_in("staging").as_str(), tag_in("production").as_str()), ("v2", "1.0.0"), "only staging went back");

    let plan = conveyor_json(&cd, &["replay", "web", "--env", "staging", "--tag", "v3", "--into", "production"]);
    assert_eq!((plan["kind"].as_str(), plan["environment"].as_str()), (Some("promotion"), Some("production")));
    applied(&nats, plan["sequence"].as_u64().unwrap()).await;
    assert_eq!((tag_in("staging").as_str(), tag_in("production").as_str()), ("v2", "v3"));
    let production = conveyor_json(&cd, &["history", "web", "--env", "production"]);
    assert_eq!((production[0]["kind"].as_str(), production[0]["tag"].as_str()), (Some("promotion"), Some("v3")));
    assert_eq!(production.as_array().unwrap().len(), 1, "production's own history");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reaches_cd_service_over_https_with_a_private_ca_and_refuses_an_unknown_one() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    applied(&nats, nats.publish_event(&build("v1", 0)).await).await;
    // TLS in front of cd-service, as an ingress would put it.
    let tls = conveyor_testkit::TlsProxy::start(cd.http).await;
    let run = |ca: Option<&Path>| {
        let mut cmd = Command::new(conveyor_testkit::conveyor_cli());
        cmd.args(["history", "web", "--json", "--url", &tls.url()]).env_remove("CONVEYOR_CA_FILE");
        if let Some(ca) = ca {
            cmd.env("CONVEYOR_CA_FILE", ca);
        }
        let out = cmd.output().expect("run conveyor");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, out, err) = run(Some(&tls.ca_file()));
    assert!(ok, "{err}");
    let rows: Vec<conveyor_api::cd::Deployment> = serde_json::from_str(&out).expect("the API's Deployment list");
    assert_eq!(rows.iter().map(|d| d.tag.as_str()).collect::<Vec<_>>(), ["v1"]);

    let (ok, _, err) = run(None);
    assert!(!ok && err.contains("cannot reach cd-service") && err.to_lowercase().contains("certificate"), "{err}");
}

//! Environments from `conveyor.yaml`: builds go to `auto` environments only; a `manual`
//! environment moves by promotion (HTTP or CLI), through the same queue, recorded in the commit;
//! events the configuration does not know are dead-lettered.

mod common;
use common::{applied, image_built, seeded_repo, start_cd, RunningCd};

use std::{path::Path, process::Command};

use conveyor_api::cd::{EnvironmentStatus, Outcome, OutcomeRecord};
use conveyor_proto::{headers, ImageBuilt, DEADLETTER_STREAM};
use conveyor_testkit::{BareRepo, TestNats, WorkClone};
use serde_json::{json, Value};

const REPO: &str = "registry.example.test/team/web";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/environments");

fn build(app: &str, repository: &str, tag: &str, minute: i64) -> ImageBuilt {
    image_built(app, repository, tag, time::macros::datetime!(2026-11-23 10:00 UTC) + time::Duration::minutes(minute))
}

async fn start(nats: &TestNats, bare: &BareRepo) -> RunningCd {
    start_cd(nats, &bare.url()).await
}

fn tag_in(bare: &BareRepo, env: &str) -> String {
    let k = bare.show("main", &format!("overlays/{env}/kustomization.yaml"));
    k.lines().find_map(|l| l.trim().strip_prefix("newTag: ")).unwrap().trim_matches('"').to_string()
}

async fn post_promote(cd: &RunningCd, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/promote", cd.http))
        .bearer_auth(conveyor_testkit::API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// `GET /outcomes?<query>`, read as the API's type.
async fn outcomes(cd: &RunningCd, query: &str) -> Vec<OutcomeRecord> {
    reqwest::get(format!("http://{}/outcomes?{query}", cd.http)).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_reach_auto_environments_and_production_moves_only_by_promotion() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start(&nats, &bare).await;

    applied(&nats, nats.publish_event(&build("web", REPO, "v2", 1)).await).await;
    assert_eq!((tag_in(&bare, "staging").as_str(), tag_in(&bare, "production").as_str()), ("v2", "1.0.0"), "manual production waits");
    assert!(bare.show("main", "base/deployment.yaml").contains("team/web:base"), "files outside the environments' paths are not touched");
    let msg = bare.message("main");
    assert!(msg.starts_with("deploy web to staging: v2\n"), "commit subject from the template:\n{msg}");
    assert!(msg.contains("Conveyor-Environment: staging"));
    applied(&nats, nats.publish_event(&build("web", REPO, "v3", 2)).await).await;
    assert_eq!(tag_in(&bare, "staging"), "v3");

    // Promote v2 (not the newest) to production over HTTP.
    let (status, body) = post_promote(&cd, json!({"app": "web", "environment": "production", "tag": "v2", "requested_by": "alice"})).await;
    assert_eq!(status, 202, "{body}");
    applied(&nats, body["sequence"].as_u64().unwrap()).await;
    assert_eq!((tag_in(&bare, "staging").as_str(), tag_in(&bare, "production").as_str()), ("v3", "v2"));
    let msg = bare.message("main");
    assert!(msg.starts_with("deploy web to production: v2\n"), "{msg}");
    assert!(
        msg.contains("promote registry.example.test/team/web:v2 to production (requested by alice")
            && msg.contains("Conveyor-Promotion: evt-web-v2 by alice"),
        "{msg}"
    );

    // And v3 with the CLI.
    let out = Command::new(conveyor_testkit::conveyor_cli())
        .args(["promote", "web", "--to", "production", "--tag", "v3", "--as", "bob", "--url", &format!("http://{}", cd.http)])
        .env("CONVEYOR_API_TOKEN", conveyor_testkit::API_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("queued: promote registry.example.test/team/web:v3 to production"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq: u64 = stdout.trim().rsplit(' ').next().unwrap().trim_end_matches(')').parse().unwrap();
    applied(&nats, seq).await;
    assert_eq!(tag_in(&bare, "production"), "v3");
    assert!(bare.message("main").contains("by bob"));

    // `GET /environments` (the console's matrix): every app and environment of conveyor.yaml,
    // with its policy and what was deployed there last, by what.
    let envs: Vec<EnvironmentStatus> = reqwest::get(format!("http://{}/environments", cd.http)).await.unwrap().json().await.unwrap();
    let row = |app: &str, env: &str| {
        envs.iter().find(|e| e.app == app && e.environment == env).unwrap_or_else(|| panic!("{app}/{env} in {envs:?}"))
    };
    assert_eq!(envs.len(), 3, "{envs:?}");
    let (staging, production, api) = (row("web", "staging"), row("web", "production"), row("api", "staging"));
    assert_eq!((staging.policy.as_str(), production.policy.as_str()), ("auto", "manual"));
    let (s, p) = (staging.current.as_ref().unwrap(), production.current.as_ref().unwrap());
    assert_eq!((s.tag.as_str(), s.kind.as_str()), ("v3", "build"));
    assert_eq!((p.tag.as_str(), p.kind.as_str(), p.requested_by.as_deref()), ("v3", "promotion", Some("bob")));
    assert!(api.current.is_none(), "nothing was deployed to api: {api:?}");

    // Refusals are JSON with a stable code, and queue nothing.
    for (body, status, code) in [
        (json!({"app": "web", "environment": "production", "tag": "v9"}), 404, "unknown_tag"),
        (json!({"app": "web", "environment": "qa", "tag": "v2"}), 404, "unknown_environment"),
        (json!({"app": "billing", "environment": "production", "tag": "v2"}), 404, "unknown_app"),
        (json!({"app": "web", "environment": "production", "tag": "-bad"}), 422, "invalid_request"),
        (json!({"app": "web"}), 422, "invalid_request"),
    ] {
        let (s, b) = post_promote(&cd, body.clone()).await;
        assert_eq!((s, b["error"].as_str()), (status, Some(code)), "{body} -> {b}");
    }
    let out = Command::new(conveyor_testkit::conveyor_cli())
        .args(["promote", "web", "--to", "production", "--tag", "v9", "--url", &format!("http://{}", cd.http)])
        .env("CONVEYOR_API_TOKEN", conveyor_testkit::API_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no image-built event for web:v9"));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_the_configuration_does_not_know_are_dead_lettered() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    // A human's clone, to break and fix conveyor.yaml later.
    let seed = WorkClone::clone_of(dir.path().join("human"), &bare);
    let cd = start(&nats, &bare).await;

    nats.publish_event(&build("billing", "registry.example.test/team/billing", "v1", 1)).await;
    nats.publish_event(&build("web", "registry.example.test/team/other", "v1", 1)).await;
    // A path of conveyor.yaml that does not exist: a clear reason, nothing lost.
    seed.write(
        "conveyor.yaml",
        &std::fs::read_to_string(Path::new(FIXTURE).join("conveyor.yaml")).unwrap().replace("overlays/staging", "overlays/stagin"),
    );
    seed.commit_all("typo in a path");
    seed.push_rebasing(10);
    let last = nats.publish_event(&build("web", REPO, "v5", 5)).await;
    applied(&nats, last).await;

    let dead = nats.stream_messages_with_headers(DEADLETTER_STREAM).await;
    let reasons: Vec<String> =
        dead.iter().map(|(_, _, h)| h.get(headers::DEAD_REASON).map(|v| v.to_string()).unwrap_or_default()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("unknown app \"billing\""), "{reasons:?}");
    assert!(reasons[1].contains("is not app web's image"), "{reasons:?}");
    assert!(reasons[2].contains("overlays/stagin") && reasons[2].contains("does not exist"), "{reasons:?}");
    assert_eq!(bare.count("main"), 2, "nothing committed");

    // The same is visible over HTTP, newest first.
    let listed = outcomes(&cd, "outcome=dead_lettered").await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].app.as_deref(), Some("web"));
    assert!(matches!(&listed[0].outcome, Outcome::DeadLettered { detail } if detail.contains("does not exist")), "{listed:?}");
    assert_eq!(listed[2].app.as_deref(), Some("billing"));

    // A pin in conveyor.yaml holds staging; the skip and its reason are visible too.
    let config = std::fs::read_to_string(Path::new(FIXTURE).join("conveyor.yaml")).unwrap();
    seed.write("conveyor.yaml", &config.replacen("        policy: auto\n", "        policy: auto\n        pinned: \"INC-42 hold\"\n", 1));
    seed.commit_all("pin web staging");
    seed.push_rebasing(10);
    applied(&nats, nats.publish_event(&build("web", REPO, "v6", 6)).await).await;
    assert_eq!(tag_in(&bare, "staging"), "1.0.0", "pinned staging did not move");
    let held = outcomes(&cd, "outcome=held&limit=5").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].image.as_deref(), Some("registry.example.test/team/web:v6"));
    let Outcome::Held { detail } = &held[0].outcome else { panic!("{held:?}") };
    assert!(detail.contains("staging: pinned in conveyor.yaml: INC-42 hold") && detail.contains("production: manual policy"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_key_paths_digest_pinning_and_the_trace_id_trailer() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let _cd = start(&nats, &bare).await;

    let mut ev = build("api", "registry.example.test/team/api", "0.2.0", 1);
    ev.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    applied(&nats, nats.publish_event(&ev).await).await;

    let values = std::fs::read_to_string(Path::new(FIXTURE).join("charts/api/values.yaml")).unwrap();
    assert_eq!(
        bare.show("main", "charts/api/values.yaml"),
        values.replacen("\"0.1.0\"", "\"0.2.0\"", 1),
        "only the configured key changed"
    );
    let job = bare.show("main", "charts/api/job.yaml");
    assert!(job.contains(&format!("image: registry.example.test/team/api:0.2.0@{}\n", ev.image.digest)), "pin_digest pins:\n{job}");
    let msg = bare.message("main");
    assert!(msg.contains("Conveyor-Trace-Id: 4bf92f3577b34da6a3ce929d0e0e4736"), "{msg}");
    assert!(msg.starts_with("deploy api to staging: 0.2.0\n"), "{msg}");
}

/// No silent partial deploys: a reference the rewriter cannot write keeps its environment
/// unchanged (all or nothing), and an event applied to one environment but refused in another is
/// recorded as `partial`, dead-lettered with each reference left behind (file:line and why) and
/// counted; pinning the reference clears the refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_reference_left_behind_makes_the_event_partial_and_names_it() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let seed = WorkClone::clone_of(dir.path().join("human"), &bare);
    let config = std::fs::read_to_string(Path::new(FIXTURE).join("conveyor.yaml")).unwrap();
    seed.write("conveyor.yaml", &config.replace("policy: manual", "policy: auto"));
    let sidecar = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-self\ndata:\n  SELF_IMAGE: \"{REPO}:1.0.0\"\n");
    seed.write("overlays/production/self.yaml", &sidecar);
    seed.commit_all("production: an app that reads its own image from a ConfigMap");
    seed.push_rebasing(10);
    let cd = start(&nats, &bare).await;
    let commits = bare.count("main");

    applied(&nats, nats.publish_event(&build("web", REPO, "v2", 1)).await).await;
    assert_eq!(bare.count("main"), commits + 1, "staging's commit:\n{}", bare.log_oneline("main"));
    assert_eq!((tag_in(&bare, "staging").as_str(), tag_in(&bare, "production").as_str()), ("v2", "1.0.0"));
    assert_eq!(bare.show("main", "overlays/production/self.yaml"), sidecar, "nothing of production was written");

    let dead = nats.stream_messages_with_headers(DEADLETTER_STREAM).await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0].2.get(headers::DEAD_REASON).map(|v| v.to_string()).unwrap_or_default();
    let head = bare.head("main").unwrap();
    assert!(
        reason.starts_with(&format!(
            "partly deployed: applied to staging in {head}; refused for production: 1 reference(s) to {REPO} cannot be rewritten"
        )),
        "{reason}"
    );
    assert!(reason.contains(&format!("overlays/production/self.yaml:6: `SELF_IMAGE` holds {REPO}:1.0.0")), "{reason}");
    let listed = outcomes(&cd, "outcome=partial").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].outcome.commit(), listed[0].outcome.detail()), (Some(head.as_str()), Some(reason.as_str())));
    assert!(matches!(&listed[0].outcome, Outcome::Partial { applied, .. } if applied == &["staging"]), "{listed:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", cd.http)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("conveyor_cd_events_total{outcome=\"partial\"} 1"), "{metrics}");

    // The operator pins it on purpose: the next build reaches both environments.
    seed.write("overlays/production/self.yaml", &sidecar.replace("1.0.0\"\n", "1.0.0\" # conveyor:pin reports the first release\n"));
    seed.commit_all("pin the self-reference");
    seed.push_rebasing(10);
    applied(&nats, nats.publish_event(&build("web", REPO, "v3", 2)).await).await;
    assert_eq!((tag_in(&bare, "staging").as_str(), tag_in(&bare, "production").as_str()), ("v3", "v3"));
    assert_eq!(nats.stream_messages_with_headers(DEADLETTER_STREAM).await.len(), 1, "no new dead letter");
}

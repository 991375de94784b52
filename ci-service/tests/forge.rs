//! ci-service and the forges, against the real Docker Engine, registry and NATS, with the
//! testkit's forge API (GitHub, GitLab, Gitea as their API docs give them): commit statuses from
//! queued to the end, with the link to the build, each forge's path, auth header and body; a
//! forge that is down or refuses the token never fails or slows a build, and a rotated token
//! file is used without a restart. Pull-request builds: built, tested, never pushed or
//! published, a fork's without the service's build args, an older one cancelled by a newer head.
//! Image housekeeping keeps the newest images of an app.

mod common;

use std::{path::Path, time::Duration};

use common::{app_repo, fixture, json_headers, sign, steps, Ci, SECRET};
use conveyor_proto::EVENTS_STREAM;
use conveyor_testkit::{docker::BUSYBOX_IMAGE, forge::Recorded, BareRepo, TestDocker, TestForge, TestNats, TestRegistry, WorkClone};
use serde_json::{json, Value};

/// A secrets file with one forge entry (`host` -> the test forge's `kind` API).
fn secrets_file(dir: &Path, host: &str, kind: &str, api_url: &str, token_file: &Path) -> std::path::PathBuf {
    let path = dir.join("secrets.yaml");
    let text = format!(
        "default: [{SECRET}]\nforges:\n  {host}:\n    kind: {kind}\n    api_url: {api_url}\n    token_file: {}\n",
        token_file.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A GitHub push of `commit` of `bare` as `team/busybox-app` on `github.test`.
fn github_push(bare: &BareRepo, commit: &str) -> Value {
    let mut push = fixture("github-push.json");
    push["repository"]["full_name"] = json!("team/busybox-app");
    push["repository"]["clone_url"] = json!(bare.url());
    push["repository"]["html_url"] = json!("https://github.test/team/busybox-app");
    push["after"] = json!(commit);
    push["head_commit"]["id"] = json!(commit);
    push["head_commit"]["message"] = json!("change");
    push
}

async fn post_github(ci: &Ci, event: &str, payload: &Value) -> u64 {
    let body = serde_json::to_vec(payload).unwrap();
    let headers = json_headers(&[("x-github-event", event), ("x-hub-signature-256", &sign(&body))]);
    let (status, answer) = ci.post("/hooks/push", &headers, body).await;
    assert_eq!(status, 202, "{answer}");
    answer["build_id"].as_u64().unwrap()
}

async fn metric(ci: &Ci, line_start: &str) -> f64 {
    let text = reqwest::get(ci.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

fn states(rs: &[Recorded], sha: &str) -> Vec<String> {
    rs.iter().filter(|r| r.path.contains(sha)).map(|r| r.body["state"].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn github_statuses_go_from_pending_to_the_end_with_a_link_to_the_build() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry, forge) = (TestNats::start().await, TestRegistry::start().await, TestForge::start("gh-token-1").await);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gh-token");
    std::fs::write(&token_file, "gh-token-1\n").unwrap();
    let secrets = secrets_file(dir.path(), "github.test", "github", &forge.api_url("github"), &token_file);
    let ci = Ci::start(&nats, &registry.addr, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets.clone());
        cfg.console_url = Some("http://console.test:8070/".into());
    })
    .await;
    let (bare, work, commit) = app_repo(dir.path(), &[]);

    let id = post_github(&ci, "push", &github_push(&bare, &commit)).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    let got = forge.wait_accepted("the success status", 30, |rs| states(rs, &commit).last().is_some_and(|s| s == "success")).await;
    let ours: Vec<&Recorded> = got.iter().filter(|r| r.path.contains(&commit)).collect();
    let words = states(&got, &commit);
    assert!(words.len() >= 2 && words[..words.len() - 1].iter().all(|s| s == "pending"), "pending, then the end: {words:?}");
    assert!(ours.iter().any(|r| r.body["description"].as_str().unwrap().contains("running")), "{ours:#?}");
    for r in &ours {
        assert_eq!(r.path, format!("/repos/team/busybox-app/statuses/{commit}"));
        assert_eq!(r.header("authorization"), Some("Bearer gh-token-1"));
        assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert!(r.header("user-agent").is_some_and(|u| u.starts_with("conveyor-ci/")), "{r:?}");
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
        assert_eq!(r.body["context"], "conveyor/build");
        assert_eq!(r.body["target_url"], format!("http://console.test:8070/#/builds/{id}"));
        let description = r.body["description"].as_str().unwrap();
        assert!(!description.is_empty() && description.chars().count() <= 140, "{description}");
        let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["context", "description", "state", "target_url"], "only the documented fields");
    }
    let last = ours.last().unwrap();
    assert!(last.body["description"].as_str().unwrap().contains(&format!("{}/busybox-app:{}", registry.addr, &commit[..12])), "{last:?}");

    // A red build ends as `failure`, naming the failed step.
    work.write(".conveyor.yml", "test: echo red; exit 3\n");
    let red = work.commit_all("red");
    work.push();
    let id = post_github(&ci, "push", &github_push(&bare, &red)).await;
    assert_eq!(ci.wait_finished(id).await["state"], "failed");
    let got = forge.wait_accepted("the failure status", 30, |rs| states(rs, &red).last().is_some_and(|s| s == "failure")).await;
    let last = got.iter().rfind(|r| r.path.contains(&red)).unwrap();
    assert!(last.body["description"].as_str().unwrap().contains("failed: test"), "{last:?}");
    assert!(metric(&ci, "conveyor_ci_commit_statuses_total{forge=\"github\",result=\"posted\"}").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forge_that_is_down_or_refuses_never_fails_or_slows_a_build_and_rotated_tokens_are_used() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry, forge) = (TestNats::start().await, TestRegistry::start().await, TestForge::start("gl-token").await);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gl-token");
    std::fs::write(&token_file, "gl-token").unwrap();
    let secrets = secrets_file(dir.path(), "gitlab.test", "gitlab", &forge.api_url("gitlab"), &token_file);
    let ci = Ci::start(&nats, &registry.addr, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets.clone());
        cfg.public_url = Some("https://ci.test".into());
        // Long enough that a build waiting for its statuses could not finish in time.
        cfg.status_attempts = 8;
    })
    .await;
    let (bare, work, commit) = app_repo(dir.path(), &[]);
    let gitlab_push = |commit: &str| {
        let mut push = fixture("gitlab-push.json");
        push["project"]["id"] = json!(5);
        push["project"]["path_with_namespace"] = json!("mike/busybox-app");
        push["project"]["git_http_url"] = json!(bare.url());
        push["project"]["web_url"] = json!("http://gitlab.test/mike/busybox-app");
        push["after"] = json!(commit);
        push["checkout_sha"] = json!(commit);
        push["commits"] = json!([{"id": commit, "message": "change"}]);
        serde_json::to_vec(&push).unwrap()
    };
    let headers = json_headers(&[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", SECRET)]);

    forge.set_down(true);
    let started = std::time::Instant::now();
    let (status, answer) = ci.post("/hooks/push", &headers, gitlab_push(&commit)).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["build_id"].as_u64().unwrap();
    assert_eq!(ci.wait_finished(id).await["state"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(25), "the build took {:?} with the forge down", started.elapsed());
    assert!(forge.accepted().is_empty() && !forge.requests().is_empty(), "statuses were tried while it was down");
    forge.set_down(false);
    let got = forge
        .wait_accepted("the success status once the forge is back", 90, |rs| states(rs, &commit).contains(&"success".to_string()))
        .await;
    let last = got.iter().rfind(|r| r.path.contains(&commit)).unwrap();
    assert_eq!(last.path, format!("/api/v4/projects/5/statuses/{commit}"));
    assert_eq!(last.header("private-token"), Some("gl-token"));
    assert_eq!(
        (last.body["state"].as_str(), last.body["name"].as_str(), last.body["ref"].as_str()),
        (Some("success"), Some("conveyor/build"), Some("main"))
    );
    assert_eq!(last.body["target_url"], format!("https://ci.test/builds/{id}"));
    assert!(forge.requests().iter().all(|r| r.status != 400), "no transition GitLab refuses (same state twice): {:#?}", forge.requests());
    assert!(metric(&ci, "conveyor_ci_commit_statuses_total{forge=\"gitlab\",result=\"retried\"}").await >= 1.0);

    // The token is refused (revoked): builds still succeed; the failures are counted.
    forge.set_token("gl-token-2");
    work.write("VERSION", "2\n");
    let second = work.commit_all("second");
    work.push();
    let (status, answer) = ci.post("/hooks/push", &headers, gitlab_push(&second)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ci.wait_finished(answer["build_id"].as_u64().unwrap()).await["state"], "succeeded");
    tokio::time::timeout(Duration::from_secs(20), async {
        while metric(&ci, "conveyor_ci_commit_statuses_total{forge=\"gitlab\",result=\"failed\"}").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a refused status is counted as failed");
    assert!(forge.requests().iter().any(|r| r.path.contains(&second) && r.status == 401));
    assert!(!forge.accepted().iter().any(|r| r.path.contains(&second)));

    // Rotation: the new token goes into the file; the next build's statuses use it, no restart.
    std::fs::write(&token_file, "gl-token-2\n").unwrap();
    work.write("VERSION", "3\n");
    let third = work.commit_all("third");
    work.push();
    let (status, answer) = ci.post("/hooks/push", &headers, gitlab_push(&third)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ci.wait_finished(answer["build_id"].as_u64().unwrap()).await["state"], "succeeded");
    let got = forge.wait_accepted("statuses with the rotated token", 30, |rs| states(rs, &third).contains(&"success".to_string())).await;
    assert!(got.iter().filter(|r| r.path.contains(&third)).all(|r| r.header("private-token") == Some("gl-token-2")));
}

/// A bare repository whose `refs/pull/<n>/head` holds a commit of a feature branch, as GitHub
/// and Gitea keep them; returns that commit.
fn open_pull_request(work: &WorkClone, n: u64, files: &[(&str, &str)]) -> String {
    work.git(&["checkout", "-q", "-B", &format!("feature-{n}"), "main"]);
    for (path, content) in files {
        work.write(path, content);
    }
    let commit = work.commit_all(&format!("pull request {n}"));
    work.git(&["push", "-q", "-f", "origin", &format!("HEAD:refs/pull/{n}/head")]);
    work.git(&["checkout", "-q", "main"]);
    commit
}

fn github_pull_request(bare: &BareRepo, n: u64, action: &str, sha: &str, fork: bool) -> Value {
    let mut pr = fixture("github-pull-request.json");
    pr["action"] = json!(action);
    pr["number"] = json!(n);
    pr["repository"]["full_name"] = json!("team/busybox-app");
    pr["repository"]["clone_url"] = json!(bare.url());
    pr["repository"]["html_url"] = json!("https://github.test/team/busybox-app");
    pr["pull_request"]["base"]["repo"]["full_name"] = json!("team/busybox-app");
    pr["pull_request"]["head"]["sha"] = json!(sha);
    pr["pull_request"]["head"]["ref"] = json!(format!("feature-{n}"));
    pr["pull_request"]["head"]["repo"]["full_name"] = json!(if fork { "mallory/busybox-app" } else { "team/busybox-app" });
    if fork {
        pr["pull_request"]["head"]["repo"]["id"] = json!(4242);
    }
    pr
}

const BUILD_ARG_DOCKERFILE: &str = "ARG BASE_IMAGE=conveyor/busybox:latest\nFROM ${BASE_IMAGE}\nARG DEPLOY_TOKEN\n\
RUN echo \"token=[${DEPLOY_TOKEN}]\" > /token.txt\nCOPY . /app\nWORKDIR /app\n";

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_are_built_and_tested_never_pushed_and_a_fork_gets_no_build_args() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry, forge) = (TestNats::start().await, TestRegistry::start().await, TestForge::start("gh").await);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gh-token");
    std::fs::write(&token_file, "gh").unwrap();
    let secrets = secrets_file(dir.path(), "github.test", "github", &forge.api_url("github"), &token_file);
    let ci = Ci::start(&nats, &registry.addr, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets.clone());
        cfg.build_args = vec![("DEPLOY_TOKEN".into(), "service-build-arg-value".into())];
    })
    .await;
    let files = [("Dockerfile", BUILD_ARG_DOCKERFILE), (".conveyor.yml", "test: cat /token.txt && sh /app/run-tests.sh\n")];
    let (bare, work, _) = app_repo(dir.path(), &[]);

    // The base repository's own pull request: it gets the service's build args.
    let own = open_pull_request(&work, 7, &files);
    let id = post_github(&ci, "pull_request", &github_pull_request(&bare, 7, "opened", &own, false)).await;
    let build = ci.wait_finished(id).await;
    let logs = ci.logs(id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");
    assert_eq!(steps(&build), ["checkout", "build", "test"], "no push, no publish");
    assert!(logs.contains("token=[service-build-arg-value]"), "{logs}");
    assert_eq!(build["tags"], json!([format!("pr-7-{}", &own[..12])]));
    assert!(build["digest"].is_null() && build["event_id"].is_null());
    assert!(
        registry.manifest_digest("busybox-app", &own[..12]).await.is_none()
            && registry.manifest_digest("busybox-app", &format!("pr-7-{}", &own[..12])).await.is_none()
    );
    let local = std::process::Command::new("docker")
        .args(["image", "inspect", &format!("conveyor-pr/busybox-app:pr-7-{}", &own[..12])])
        .output()
        .unwrap();
    assert!(!local.status.success(), "a pull request's image leaves the engine with its build");
    let got = forge.wait_accepted("the pull request's success", 30, |rs| states(rs, &own).last().is_some_and(|s| s == "success")).await;
    let last = got.iter().rfind(|r| r.path.contains(&own)).unwrap();
    assert_eq!(
        (last.body["context"].as_str(), last.path.as_str()),
        (Some("conveyor/build/pr"), format!("/repos/team/busybox-app/statuses/{own}").as_str())
    );

    // A fork's: built and tested without the service's build args.
    let forked = open_pull_request(&work, 8, &[files[0], files[1], ("VERSION", "fork\n")]);
    let id = post_github(&ci, "pull_request", &github_pull_request(&bare, 8, "opened", &forked, true)).await;
    let build = ci.wait_finished(id).await;
    let logs = ci.logs(id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");
    assert!(logs.contains("token=[]") && !logs.contains("service-build-arg-value"), "{logs}");
    assert!(logs.contains("from a fork"), "{logs}");

    // A newer head cancels the older pull-request build (its test would take a minute).
    let slow = open_pull_request(&work, 9, &[(".conveyor.yml", "test: sleep 60\n")]);
    let older = post_github(&ci, "pull_request", &github_pull_request(&bare, 9, "opened", &slow, false)).await;
    ci.wait_for(older, "its test step", |b| b["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "test"))).await;
    work.git(&["checkout", "-q", "feature-9"]);
    work.write(".conveyor.yml", "test: sh /app/run-tests.sh\n");
    let fast = work.commit_all("faster");
    work.git(&["push", "-q", "-f", "origin", "HEAD:refs/pull/9/head"]);
    work.git(&["checkout", "-q", "main"]);
    let newer = post_github(&ci, "pull_request", &github_pull_request(&bare, 9, "synchronize", &fast, false)).await;
    let old = ci.wait_finished(older).await;
    assert_eq!(old["state"], "cancelled", "{old}");
    assert!(old["reason"].as_str().unwrap().contains(&format!("superseded by build {newer}")), "{old}");
    assert_eq!(ci.wait_finished(newer).await["state"], "succeeded");
    forge.wait_accepted("the cancelled build's error status", 30, |rs| states(rs, &slow).last().is_some_and(|s| s == "error")).await;

    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty(), "no pull request publishes an image-built event");
}

#[tokio::test(flavor = "multi_thread")]
async fn older_images_of_an_app_leave_the_engine_and_the_newest_stay() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |cfg| cfg.keep_images = 1).await;
    let dir = tempfile::tempdir().unwrap();
    // Content no other test builds: no build cache layer is shared with a build elsewhere.
    let unique = uuid::Uuid::now_v7().to_string();
    let (bare, work, first) = app_repo(dir.path(), &[("unique.txt", unique.as_str())]);
    let mut commits = vec![first];
    for n in 2..=3 {
        work.write("VERSION", &format!("{n}\n"));
        commits.push(work.commit_all(&format!("v{n}")));
        work.push();
    }
    for commit in &commits {
        let id = ci.push_commit(&bare, "refs/heads/main", commit).await;
        let build = ci.wait_finished(id).await;
        assert_eq!(build["state"], "succeeded", "{build}\n{}", ci.logs(id).await);
    }
    let local = || {
        let out = std::process::Command::new("docker")
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", &format!("{}/busybox-app", registry.addr)])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let newest = format!("{}/busybox-app:{}", registry.addr, &commits[2][..12]);
    // The sweep runs after the build's end: its removals, then its counter, then the disk use.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (images, removed, bytes) =
            (local(), metric(&ci, "conveyor_ci_images_removed_total").await, metric(&ci, "conveyor_ci_engine_image_bytes").await);
        if images == [newest.clone()] && removed >= 2.0 && bytes > 1_000_000.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only the newest image should stay, two removals counted, the disk use read: {images:?}, {removed}, {bytes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for commit in &commits {
        assert!(registry.manifest_digest("busybox-app", &commit[..12]).await.is_some(), "the registry keeps every pushed image");
    }
}

//! ci-service against the real Docker Engine, registry and NATS: a push is checked out, built,
//! tested in the image, smoke-tested as a running service, pushed and published; a red test or
//! a red smoke test publishes nothing; `.conveyor.yml` sets the pipeline and a broken one is the
//! build's failure reason; tag pushes build a tag-named image; `[skip ci]` and branch filters skip.

mod common;

use std::process::Command;

use common::{app_repo, steps, Ci};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use conveyor_testkit::{docker::BUSYBOX_IMAGE, TestDocker, TestNats, TestRegistry};

/// A `.conveyor.yml` whose smoke test serves `www/` with busybox httpd and checks it.
fn smoke_pipeline(expect: &str) -> String {
    format!(
        "test: sh /app/run-tests.sh\nsmoke:\n  command: busybox httpd -f -p $PORT -h /app/www\n  health: /healthz\n  checks:\n    - {{ path: /index.html, contains: \"{expect}\" }}\n"
    )
}

const WWW: [(&str, &str); 2] = [("www/index.html", "busybox-app version 1\n"), ("www/healthz", "ok\n")];

fn label(image: &str, key: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", &format!("{{{{index .Config.Labels \"{key}\"}}}}"), image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn green_build_is_smoke_tested_pushed_and_published_with_the_registry_digest() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = smoke_pipeline("version 1");
    let (bare, _work, commit) = app_repo(dir.path(), &[WWW[0], WWW[1], (".conveyor.yml", &pipeline)]);

    let id = ci.push_commit(&bare, "refs/heads/main", &commit).await;
    let build = ci.wait_finished(id).await;
    let logs = ci.logs(id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");
    assert!(logs.contains("tests-passed version=1"), "test output is in the build log:\n{logs}");
    assert!(logs.contains("[conveyor] smoke: started"), "{logs}");
    assert_eq!(steps(&build), ["checkout", "build", "test", "smoke", "push", "publish"]);
    assert!(build["steps"].as_array().unwrap().iter().all(|s| s["state"] == "succeeded" && s["duration_ms"].is_u64()));

    // The registry really has the image, under the digest the build recorded.
    let tag = &commit[..12];
    let served = registry.manifest_digest("busybox-app", tag).await.expect("image is in the registry");
    assert_eq!(build["digest"].as_str(), Some(served.as_str()));
    assert_eq!(build["repository"].as_str().unwrap(), format!("{}/busybox-app", registry.addr));
    let image = format!("{}/busybox-app:{tag}", registry.addr);
    assert_eq!(label(&image, "org.opencontainers.image.revision"), commit);
    assert_eq!(label(&image, "org.opencontainers.image.source"), bare.url());
    assert!(label(&image, "org.opencontainers.image.created").starts_with("20"));

    // Exactly one event, valid, naming that image, commit and digest.
    let msgs = nats.stream_messages(EVENTS_STREAM).await;
    assert_eq!(msgs.len(), 1);
    let event = ImageBuilt::from_json(&msgs[0].1).expect("a valid event");
    assert_eq!((event.app.as_str(), event.image.tag.as_str(), event.image.digest.as_str()), ("busybox-app", tag, served.as_str()));
    assert_eq!((event.source.commit.as_str(), event.source.branch.as_str()), (commit.as_str(), "main"));
    assert_eq!(event.build_id, id.to_string());
    assert_eq!(build["event_sequence"].as_u64(), Some(msgs[0].0));
    assert!(TestDocker::containers_labelled("io.conveyor.replica", &ci.replica).is_empty(), "test and smoke containers removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_tests_or_smoke_checks_fail_the_build_and_publish_nothing() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, commit) = app_repo(dir.path(), &[(".conveyor.yml", "test: echo running-tests; exit 3\n")]);

    let id = ci.push_commit(&bare, "refs/heads/main", &commit).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("test") && reason.contains("code 3"), "{reason}");
    assert!(ci.logs(id).await.contains("running-tests"), "test output is kept for the failed build");
    assert_eq!(steps(&build), ["checkout", "build", "test"], "nothing after the failed test ran");

    // Green tests, but the deployed app does not serve what the smoke check expects.
    for (path, content) in WWW {
        work.write(path, content);
    }
    work.write(".conveyor.yml", &smoke_pipeline("version 2"));
    let commit = work.commit_all("smoke test expects version 2");
    work.push();
    let id = ci.push_commit(&bare, "refs/heads/main", &commit).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.starts_with("smoke:") && reason.contains("version 2"), "{reason}");
    assert_eq!(steps(&build), ["checkout", "build", "test", "smoke"]);

    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty(), "no event for a red build");
    assert_eq!(registry.manifest_digest("busybox-app", &commit[..12]).await, None, "nothing pushed");
    assert!(TestDocker::containers_labelled("io.conveyor.replica", &ci.replica).is_empty(), "no container left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_dockerfile_pipeline_file_or_unknown_commit_fail_with_the_reason() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, commit) = app_repo(dir.path(), &[("Dockerfile", "FROM conveyor/busybox:latest\nRUN exit 7\n")]);

    let build = ci.wait_finished(ci.push_commit(&bare, "refs/heads/main", &commit).await).await;
    assert_eq!(build["state"], "failed");
    assert!(build["reason"].as_str().unwrap().starts_with("build:"), "{build}");

    work.write(".conveyor.yml", "image: team/app\ntimeouts: { test: 0 }\n");
    let commit = work.commit_all("bad pipeline file");
    work.push();
    let build = ci.wait_finished(ci.push_commit(&bare, "refs/heads/main", &commit).await).await;
    assert_eq!(build["state"], "failed");
    assert_eq!(build["reason"], "invalid .conveyor.yml: timeouts.test: a timeout must be at least 1 second");

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let build = ci.wait_finished(ci.push_commit(&bare, "refs/heads/main", unknown).await).await;
    assert_eq!(build["state"], "failed");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.starts_with("checkout:") && reason.contains(unknown), "{reason}");
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_pushes_build_a_tag_named_image_and_skips_are_recorded() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, commit) = app_repo(dir.path(), &[(".conveyor.yml", "image: team/busybox\nbranches: [main, \"release/*\"]\n")]);
    // A custom image name is granted to the repository in the secrets file.
    let secrets = dir.path().join("secrets.yaml");
    let entry = format!("repos:\n  {}:\n    secrets: [{}]\n    images: [team/busybox]\n", bare.url(), common::SECRET);
    std::fs::write(&secrets, entry).unwrap();
    let ci = Ci::start(&nats, &registry.addr, |c| c.webhook_secrets_file = Some(secrets)).await;

    work.push_tag("v1.2.0");
    let build = ci.wait_finished(ci.push_commit(&bare, "refs/tags/v1.2.0", &commit).await).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", ci.logs(build["id"].as_u64().unwrap()).await);
    assert_eq!(build["tags"], serde_json::json!(["v1.2.0", &commit[..12]]));
    let by_tag = registry.manifest_digest("team/busybox", "v1.2.0").await.expect("the git tag names the image");
    assert_eq!(registry.manifest_digest("team/busybox", &commit[..12]).await, Some(by_tag.clone()), "and so does the short SHA");
    let event = ImageBuilt::from_json(&nats.stream_messages(EVENTS_STREAM).await[0].1).unwrap();
    assert_eq!(
        (event.image.tag.as_str(), event.image.digest.as_str(), event.source.branch.as_str()),
        ("v1.2.0", by_tag.as_str(), "v1.2.0")
    );

    // A branch outside `branches:`, and a commit asking to skip CI: recorded as skipped, not built.
    conveyor_testkit::run(Command::new("git").arg("-C").arg(&work.path).args(["push", "-q", "origin", "HEAD:refs/heads/feature/x"]));
    let build = ci.wait_finished(ci.push_commit(&bare, "refs/heads/feature/x", &commit).await).await;
    assert_eq!(build["state"], "skipped");
    assert!(build["reason"].as_str().unwrap().contains("feature/x"), "{build}");
    work.write("VERSION", "2");
    let skipped = work.commit_all("docs only [skip ci]");
    work.push();
    let build = ci.wait_finished(ci.push_commit(&bare, "refs/heads/main", &skipped).await).await;
    assert_eq!((build["state"].as_str(), steps(&build)), (Some("skipped"), vec!["checkout".to_string()]));
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), 1, "only the tag build published");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_are_used_and_masked_everywhere() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let password = format!("reg-pass-{}", uuid::Uuid::now_v7().simple());
    let (nats, registry) = (TestNats::start().await, TestRegistry::start_with_login("ci-bot", &password).await);
    let dir = tempfile::tempdir().unwrap();
    // A test suite that prints the secret, as careless scripts do.
    let (bare, work, commit) = app_repo(dir.path(), &[(".conveyor.yml", &format!("test: echo token={password}\n"))]);

    let password_file = dir.path().join("registry-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let ci = Ci::start(&nats, &registry.addr, |c| {
        c.registry_username = Some("ci-bot".into());
        c.registry_password_file = Some(password_file.clone());
    })
    .await;
    let id = ci.push_commit(&bare, "refs/heads/main", &commit).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    assert!(registry.manifest_digest("busybox-app", &commit[..12]).await.is_some(), "pushed with the login");
    let logs = ci.logs(id).await;
    assert!(logs.contains("token=***") && !logs.contains(&password), "masked in the log:\n{logs}");

    // A wrong password: the push fails, and neither record nor log shows the secret. (The
    // first replica leaves first: it shares the queue and would take the job.)
    ci.shutdown().await;
    let wrong = format!("wrong-pass-{}", uuid::Uuid::now_v7().simple());
    let ci = Ci::start(&nats, &registry.addr, |c| {
        c.registry_username = Some("ci-bot".into());
        c.registry_password = Some(ci_service::secrets::Secret::new(&wrong));
        c.step_attempts = 1;
    })
    .await;
    work.push_tag("v9");
    let id = ci.push_commit(&bare, "refs/tags/v9", &commit).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed", "{build}");
    assert!(build["reason"].as_str().unwrap().starts_with("push:"), "{build}");
    let everything = format!("{build}{}{}", ci.logs(id).await, serde_json::to_string(&ci.builds().await).unwrap());
    assert!(!everything.contains(&wrong), "{everything}");
}

/// A repository's `.conveyor.yml` cannot name an image granted to another repository (nor, for
/// a repository without an entry, any image but its app's): the build fails before anything is
/// built or pushed, with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_file_cannot_push_another_repositorys_image() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, format!("default: [{}]\nrepos:\n  /srv/git/protected-app.git: [other-secret]\n", common::SECRET)).unwrap();
    let ci = Ci::start(&nats, &registry.addr, |c| c.webhook_secrets_file = Some(secrets)).await;
    for image in ["protected-app", "team/anything"] {
        let (bare, _work, commit) = app_repo(&dir.path().join(image.replace('/', "-")), &[(".conveyor.yml", &format!("image: {image}\n"))]);
        let id = ci.push_commit(&bare, "refs/heads/main", &commit).await;
        let build = ci.wait_finished(id).await;
        assert_eq!(build["state"], "failed", "{build}");
        let reason = build["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("image \"{image}\" is not granted to repository")), "{reason}");
        assert_eq!(steps(&build), ["checkout"], "nothing was built: {build}");
    }
    assert!(nats.stream_messages(EVENTS_STREAM).await.is_empty());
}

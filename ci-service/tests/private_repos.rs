//! Fetching app repositories: private ones over ssh with a deploy key (host key pinned by a
//! known_hosts file) against a real sshd, with the named errors for a refused key, an unknown
//! host and a changed host key; annotated tags (and a tag of a tag) peeled to their commit at
//! checkout, in the record, the image's labels and tags, and the event. HTTPS with a token is
//! in `private_https.rs` (the CA file is process-wide).

mod common;

use std::path::Path;

use ci_service::build::checkout::{checkout, CheckoutError};
use common::{app_repo, Ci, SECRET};
use conveyor_git::{GitAuth, TransportError};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};
use conveyor_testkit::{docker::BUSYBOX_IMAGE, BareRepo, TestDocker, TestNats, TestRegistry, TestSshd, WorkClone};

fn ssh_auth(key: &Path, known_hosts: &Path) -> GitAuth {
    GitAuth { ssh_key: Some(key.to_path_buf()), known_hosts: Some(known_hosts.to_path_buf()), ..Default::default() }
}

fn try_checkout(url: &str, commit: &str, auth: &GitAuth) -> Result<ci_service::build::checkout::CheckedOut, CheckoutError> {
    let dest = tempfile::tempdir().unwrap();
    checkout(url, "refs/heads/main", commit, auth, &dest.path().join("w"))
}

#[tokio::test(flavor = "multi_thread")]
async fn private_repositories_are_fetched_over_ssh_with_a_deploy_key_and_failures_are_named() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let sshd = TestSshd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work, commit) = app_repo(dir.path(), &[]);
    let url = sshd.url_for(&bare.path);

    let ok = tokio::task::block_in_place(|| try_checkout(&url, &commit, &ssh_auth(&sshd.deploy_key(), &sshd.known_hosts())));
    assert_eq!(ok.expect("the deploy key fetches").commit, commit);
    let refused = tokio::task::block_in_place(|| try_checkout(&url, &commit, &ssh_auth(&sshd.unauthorized_key(), &sshd.known_hosts())));
    assert!(matches!(refused, Err(CheckoutError::Transport(TransportError::KeyRejected { .. }, _))), "{refused:?}\n{}", sshd.log());
    let empty = dir.path().join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let unknown = tokio::task::block_in_place(|| try_checkout(&url, &commit, &ssh_auth(&sshd.deploy_key(), &empty)));
    assert!(matches!(unknown, Err(CheckoutError::Transport(TransportError::UnknownHost { .. }, _))), "{unknown:?}");
    let changed = tokio::task::block_in_place(|| try_checkout(&url, &commit, &ssh_auth(&sshd.deploy_key(), &sshd.wrong_known_hosts())));
    assert!(matches!(changed, Err(CheckoutError::Transport(TransportError::HostKeyMismatch { .. }, _))), "{changed:?}");
    let none = tokio::task::block_in_place(|| {
        try_checkout(&url, &commit, &GitAuth { known_hosts: Some(sshd.known_hosts()), ..Default::default() })
    });
    assert!(none.is_err(), "no key, no fetch");

    // Through the service: the repository's entry in the secrets file says how to fetch it.
    let other = BareRepo::create(dir.path().join("other-app.git"));
    let seed = WorkClone::init(dir.path().join("other-work"), &other);
    conveyor_testkit::copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/busybox-app"), &seed.path);
    let other_commit = seed.commit_all("other");
    seed.push();
    let other_url = sshd.url_for(&other.path);
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        format!(
            "repos:\n  {url}:\n    secrets: [{SECRET}]\n    fetch: {{ ssh_key_file: {key}, known_hosts_file: {kh} }}\n  \
             {other_url}:\n    secrets: [{SECRET}]\n    fetch: {{ ssh_key_file: {key}, known_hosts_file: {wrong} }}\n",
            key = sshd.deploy_key().display(),
            kh = sshd.known_hosts().display(),
            wrong = sshd.wrong_known_hosts().display(),
        ),
    )
    .unwrap();
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets.clone());
    })
    .await;
    let (status, answer) = ci.push(serde_json::json!({"repo_url": url, "ref": "refs/heads/main", "commit": commit})).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.wait_finished(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", sshd.log());
    let (status, answer) = ci.push(serde_json::json!({"repo_url": other_url, "ref": "refs/heads/main", "commit": other_commit})).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.wait_finished(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!(build["state"], "failed");
    assert!(build["reason"].as_str().unwrap().contains("does not match the known_hosts entry"), "{build}");
}

#[tokio::test(flavor = "multi_thread")]
async fn annotated_tags_and_tags_of_tags_are_peeled_to_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, commit) = app_repo(dir.path(), &[]);
    work.git(&["tag", "v1-light"]);
    work.git(&["tag", "-a", "v2.0.0", "-m", "release 2.0.0"]);
    work.git(&["tag", "-a", "v2.0.0-blessed", "v2.0.0", "-m", "a tag of the tag"]);
    work.git(&["push", "-q", "origin", "--tags"]);
    let later = {
        work.write("VERSION", "later\n");
        let c = work.commit_all("later");
        work.push();
        c
    };
    let object = |tag: &str| work.git(&["rev-parse", &format!("refs/tags/{tag}")]).trim().to_string();
    for (tag, peeled_from) in [("v1-light", None), ("v2.0.0", Some(object("v2.0.0"))), ("v2.0.0-blessed", Some(object("v2.0.0-blessed")))] {
        let pushed = peeled_from.clone().unwrap_or_else(|| commit.clone());
        assert_eq!(peeled_from.is_some(), pushed != commit, "{tag}: an annotated tag's object is not the commit");
        let dest = tempfile::tempdir().unwrap();
        let out = checkout(&bare.url(), &format!("refs/tags/{tag}"), &pushed, &GitAuth::default(), &dest.path().join("w")).expect(tag);
        assert_eq!((out.commit.as_str(), out.tag_object.as_deref()), (commit.as_str(), peeled_from.as_deref()), "{tag}");
        // The commit itself (what the forge's payload or the hook may send) is checked out too.
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(
            checkout(&bare.url(), &format!("refs/tags/{tag}"), &commit, &GitAuth::default(), &dest.path().join("w")).unwrap().commit,
            commit
        );
        // A commit the tag does not lead to is refused.
        let dest = tempfile::tempdir().unwrap();
        let err = checkout(&bare.url(), &format!("refs/tags/{tag}"), &later, &GitAuth::default(), &dest.path().join("w")).unwrap_err();
        assert!(matches!(err, CheckoutError::CommitNotFound { .. }), "{tag}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_naming_an_annotated_tag_object_builds_records_and_publishes_the_commit() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, commit) = app_repo(dir.path(), &[]);
    work.git(&["tag", "-a", "v3.1.0", "-m", "release"]);
    work.git(&["push", "-q", "origin", "refs/tags/v3.1.0"]);
    let object = work.git(&["rev-parse", "refs/tags/v3.1.0"]).trim().to_string();
    assert_ne!(object, commit);

    let id = ci.push_commit(&bare, "refs/tags/v3.1.0", &object).await;
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", ci.logs(id).await);
    assert_eq!((build["commit"].as_str(), build["tag_object"].as_str()), (Some(commit.as_str()), Some(object.as_str())));
    assert_eq!(build["tags"], serde_json::json!(["v3.1.0", &commit[..12]]));
    let image = format!("{}/busybox-app:v3.1.0", registry.addr);
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{index .Config.Labels \"org.opencontainers.image.revision\"}}", &image])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), commit);
    let msgs = nats.stream_messages(EVENTS_STREAM).await;
    let event = ImageBuilt::from_json(&msgs[0].1).unwrap();
    assert_eq!((event.source.commit.as_str(), event.image.tag.as_str()), (commit.as_str(), "v3.1.0"));

    // The post-receive hook sends the commit an annotated tag names.
    bare.install_hook("post-receive", &Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/post-receive"));
    bare.set_config("conveyor.url", &ci.url(""));
    bare.set_config("conveyor.secret", SECRET);
    work.git(&["tag", "-a", "v3.2.0", "-m", "release"]);
    work.git(&["push", "-q", "origin", "refs/tags/v3.2.0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let build = loop {
        if let Some(b) = ci.builds().await.into_iter().find(|b| b["ref"] == "refs/tags/v3.2.0") {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "the hook queued no build of v3.2.0");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(build["commit"].as_str(), Some(commit.as_str()), "{build}");
}

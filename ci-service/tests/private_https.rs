//! A private app repository over HTTPS with a token (HTTP basic auth, as GitHub and GitLab take
//! tokens), against a real TLS git server: fetched with the token of its secrets-file entry, and
//! a refused or missing token named. Its own test binary: the CA file is a process-wide libgit2
//! setting.

mod common;

use ci_service::build::checkout::{checkout, CheckoutError};
use common::{app_repo, Ci, SECRET};
use conveyor_git::{GitAuth, Secret, TransportError};
use conveyor_testkit::{docker::BUSYBOX_IMAGE, TestDocker, TestGitHttps, TestNats, TestRegistry};

#[tokio::test(flavor = "multi_thread")]
async fn private_repositories_are_fetched_over_https_with_a_token() {
    TestDocker::ensure(&[BUSYBOX_IMAGE]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let (bare, work, commit) = app_repo(&root, &[]);
    let server = TestGitHttps::start(&root, "oauth2", "read-token-1").await;
    let url = server.url_for(bare.path.file_name().unwrap().to_str().unwrap());
    let token = |t: Option<&str>| GitAuth { token: t.map(Secret::new), token_user: "oauth2".into(), ..Default::default() };
    let fetch = |auth: GitAuth| {
        let dest = tempfile::tempdir().unwrap();
        tokio::task::block_in_place(|| checkout(&url, "refs/heads/main", &commit, &auth, &dest.path().join("w")))
    };
    // Before the CA is trusted: TLS verification refuses the self-signed server.
    assert!(fetch(token(Some("read-token-1"))).is_err());
    conveyor_git::set_ca_file(&server.ca_file()).unwrap();
    assert_eq!(fetch(token(Some("read-token-1"))).expect("fetched with the token").commit, commit);
    let refused = fetch(token(Some("revoked")));
    assert!(matches!(refused, Err(CheckoutError::Transport(TransportError::TokenRejected { .. }, _))), "{refused:?}\n{}", server.log());
    assert!(refused.unwrap_err().to_string().contains("refused the token"));
    let missing = fetch(token(None));
    assert!(matches!(missing, Err(CheckoutError::Transport(TransportError::NoToken { .. }, _))), "{missing:?}");

    // Through the service, with the token in a file of the repository's entry.
    let token_file = dir.path().join("read-token");
    std::fs::write(&token_file, "read-token-1\n").unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        format!("repos:\n  {url}:\n    secrets: [{SECRET}]\n    fetch: {{ token_file: {}, token_user: oauth2 }}\n", token_file.display()),
    )
    .unwrap();
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = Ci::start(&nats, &registry.addr, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets.clone());
        cfg.git_ca_file = Some(server.ca_file());
    })
    .await;
    let (status, answer) = ci.push(serde_json::json!({"repo_url": url, "ref": "refs/heads/main", "commit": commit})).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["build_id"].as_u64().unwrap();
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", server.log());
    assert!(!ci.logs(id).await.contains("read-token-1"));

    // The token in the file is revoked: the build fails at checkout, naming the cause.
    std::fs::write(&token_file, "revoked\n").unwrap();
    work.write("VERSION", "2\n");
    let second = work.commit_all("second");
    work.push();
    let (_, answer) = ci.push(serde_json::json!({"repo_url": url, "ref": "refs/heads/main", "commit": second})).await;
    let id = answer["build_id"].as_u64().unwrap();
    let build = ci.wait_finished(id).await;
    assert_eq!(build["state"], "failed", "{build}");
    assert!(build["reason"].as_str().unwrap().contains("refused the token"), "{build}");
}

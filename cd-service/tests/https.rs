//! Manifest repository over HTTPS with a token, against a real TLS git server (`git
//! http-backend`). Its own test binary: the CA file is a process-wide libgit2 setting.

mod common;
use common::image_built;

use std::path::Path;

use cd_service::{
    gitops::{GitOpsError, ManifestRepo, Secret},
    Config,
};
use conveyor_api::cd::Outcome;
use conveyor_proto::ImageBuilt;
use conveyor_testkit::{BareRepo, TestGitHttps, WorkClone};

fn event() -> ImageBuilt {
    image_built("web", "registry.example.test/team/web", "over-https", time::OffsetDateTime::now_utc())
}

fn repo_config(url: &str, token: Option<&str>, workdir: &Path) -> cd_service::gitops::RepoConfig {
    let mut cfg = Config::for_repo(url);
    cfg.workdir = workdir.to_path_buf();
    cfg.git_token = token.map(Secret::new);
    cfg.repo_config()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_over_https_with_a_token_and_names_a_refused_or_missing_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let bare = BareRepo::create(root.join("manifests.git"));
    let seed = WorkClone::init(dir.path().join("seed"), &bare);
    seed.write("apps/web/deployment.yaml", "spec:\n  containers:\n    - image: registry.example.test/team/web:1.0.0\n");
    seed.commit_all("web");
    seed.push();
    let server = TestGitHttps::start(&root, "x-access-token", "s3cret-token").await;
    cd_service::gitops::set_ca_file(&server.ca_file()).expect("trust the test server's certificate");
    let url = server.url_for("manifests.git");

    let work = tempfile::tempdir().unwrap();
    let err = tokio::task::block_in_place(|| ManifestRepo::open_or_clone(repo_config(&url, Some("wrong"), work.path())).err());
    assert!(matches!(err, Some(GitOpsError::Transport(conveyor_git::TransportError::TokenRejected { .. }))), "{err:?}\n{}", server.log());
    assert!(err.unwrap().to_string().contains("refused the token"));

    let work = tempfile::tempdir().unwrap();
    let err = tokio::task::block_in_place(|| ManifestRepo::open_or_clone(repo_config(&url, None, work.path())).err());
    assert!(matches!(err, Some(GitOpsError::Transport(conveyor_git::TransportError::NoToken { .. }))), "{err:?}");

    let work = tempfile::tempdir().unwrap();
    let outcome = tokio::task::block_in_place(|| {
        let repo = ManifestRepo::open_or_clone(repo_config(&url, Some("s3cret-token"), work.path())).expect("clone over https");
        repo.apply_batch(&[event()]).expect("apply over https")
    });
    let commit = outcome.commit.clone().expect("pushed");
    assert_eq!(outcome.outcomes, vec![Outcome::Committed { commit }]);
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:over-https"), "{}", server.log());
    let debug = format!("{:?}", repo_config(&url, Some("s3cret-token"), work.path()));
    assert!(!debug.contains("s3cret-token"), "the token never appears in Debug output: {debug}");
}

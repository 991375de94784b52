//! What the cd-service integration tests share: image-built events, a manifest repo seeded from
//! a fixture tree, cd-service started in-process, and waiting until the consumer handled an event.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{net::SocketAddr, path::Path, time::Duration};

use cd_service::{Config, Service, StartError};
use conveyor_proto::{ImageBuilt, ImageRef, SourceRef, EVENTS_STREAM, EVENT_VERSION};
use conveyor_testkit::{copy_tree, BareRepo, TestNats, TestSshd, WorkClone};
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// An image-built event with ids derived from app and tag (`evt-<app>-<tag>`), so that a test
/// can find its event in commit trailers; the digest is derived from the tag as well.
pub fn image_built(app: &str, repository: &str, tag: &str, build_started_at: OffsetDateTime) -> ImageBuilt {
    let digest_hex: String = tag.bytes().map(|b| format!("{b:02x}")).collect::<String>().chars().cycle().take(64).collect();
    ImageBuilt {
        version: EVENT_VERSION,
        event_id: format!("evt-{app}-{tag}"),
        app: app.into(),
        image: ImageRef { repository: repository.into(), tag: tag.into(), digest: format!("sha256:{digest_hex}") },
        source: SourceRef { repo_url: "/srv/git/web.git".into(), commit: "c0ffee".repeat(7)[..40].to_string(), branch: "main".into() },
        build_id: format!("b-{app}-{tag}"),
        build_started_at,
        built_at: build_started_at,
        traceparent: None,
        deploy: None,
    }
}

/// A bare manifest repo (`<dir>/manifests.git`) whose `main` holds a copy of `fixture`.
pub fn seeded_repo(dir: &Path, fixture: &Path) -> BareRepo {
    let bare = BareRepo::create(dir.join("manifests.git"));
    let work = WorkClone::init(dir.join("seed"), &bare);
    copy_tree(fixture, &work.path);
    work.commit_all("initial manifests");
    work.push();
    bare
}

/// cd-service running in this process; stops when dropped.
pub struct RunningCd {
    pub http: SocketAddr,
    _stop: oneshot::Sender<()>,
    _workdir: tempfile::TempDir,
}

/// Starts cd-service for the manifest repo at `url`, on a temp work dir and a free port;
/// `adjust` changes the configuration first (keys, policies).
pub async fn try_start_cd(nats: &TestNats, url: &str, adjust: impl FnOnce(&mut Config)) -> Result<RunningCd, StartError> {
    let workdir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_repo(url);
    cfg.nats = nats.cd_args();
    cfg.ci_public_keys = vec![nats.keys.ci_pub.clone()];
    cfg.signing_key_file = Some(nats.keys.cd_key.clone());
    cfg.api_token = Some(cd_service::gitops::Secret::new(conveyor_testkit::API_TOKEN));
    cfg.workdir = workdir.path().to_path_buf();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    adjust(&mut cfg);
    let service = Service::start(&cfg).await?;
    let http = service.http_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));
    Ok(RunningCd { http, _stop: stop, _workdir: workdir })
}

pub async fn start_cd(nats: &TestNats, url: &str) -> RunningCd {
    try_start_cd(nats, url, |_| {}).await.expect("cd-service starts")
}

/// Waits until the consumer has handled (acked or terminated) stream sequence `seq`.
pub async fn applied(nats: &TestNats, seq: u64) {
    nats.wait_consumer_done(EVENTS_STREAM, "cd-service", seq, Duration::from_secs(30)).await;
}

/// cd-service pushing to `bare` over ssh with the test sshd's deploy key and pinned host key.
pub async fn start_cd_ssh(nats: &TestNats, sshd: &TestSshd, bare: &BareRepo) -> RunningCd {
    try_start_cd(nats, &sshd.url_for(&bare.path), |cfg| {
        cfg.ssh_key = Some(sshd.deploy_key());
        cfg.known_hosts = Some(sshd.known_hosts());
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()))
}

/// Makes the next push to `bare` (over ssh: the server runs hooks) find the branch moved: its
/// pre-receive hook first pushes an outside commit (`RACE.md`) through a separate clone. Returns
/// a marker file that exists once the race happened.
pub fn race_the_next_push(dir: &Path, bare: &BareRepo) -> std::path::PathBuf {
    let marker = dir.join("raced");
    let hook = dir.join("pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ -e '{m}' ] && exit 0\ntouch '{m}'\nunset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_DIR\n\
             t=$(mktemp -d) && git clone -q '{r}' \"$t/w\" && cd \"$t/w\" && echo racing > RACE.md && git add RACE.md && \
             git -c user.name=racer -c user.email=r@x commit -qm 'racing commit' && git push -q origin main >/dev/null 2>&1\nexit 0\n",
            m = marker.display(),
            r = bare.url()
        ),
    )
    .expect("write the racing hook");
    bare.install_hook("pre-receive", &hook);
    marker
}

//! The manifest side the cd benchmarks share: a 100-app manifest tree in a bare repository,
//! the events that change it, and cd-service started from its binary on a test NATS.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use conveyor_proto::{ImageBuilt, ImageRef, SourceRef, EVENTS_STREAM, EVENT_VERSION};
use conveyor_testkit::{BareRepo, ChildGuard, TestNats, WorkClone};
use time::OffsetDateTime;

pub fn repository(app: usize) -> String {
    format!("registry.example.test/team/app{app:03}")
}

pub fn manifest(app: usize, tag: &str) -> String {
    format!(
        "# app{app:03}\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{app:03}\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: {}:{tag} # updated by CD\n          ports:\n            - containerPort: 8080\n",
        repository(app)
    )
}

pub fn seed(dir: &Path, name: &str, apps: usize) -> BareRepo {
    let bare = BareRepo::create(dir.join(format!("{name}.git")));
    let work = WorkClone::init(dir.join(format!("{name}-seed")), &bare);
    for app in 0..apps {
        work.write(&format!("apps/app{app:03}/deployment.yaml"), &manifest(app, "0"));
    }
    work.commit_all("100 apps");
    work.push();
    bare
}

pub fn event(app: usize, tag: &str, started: OffsetDateTime) -> ImageBuilt {
    ImageBuilt {
        version: EVENT_VERSION,
        event_id: format!("bench-app{app:03}-{tag}"),
        app: format!("app{app:03}"),
        image: ImageRef { repository: repository(app), tag: tag.to_string(), digest: format!("sha256:{}", "ab".repeat(32)) },
        source: SourceRef { repo_url: "/bench/src.git".into(), commit: "a".repeat(40), branch: "main".into() },
        build_id: format!("bench-{app}-{tag}"),
        build_started_at: started,
        built_at: started,
        traceparent: None,
        deploy: None,
    }
}

pub fn start_cd(bin: &Path, nats: &TestNats, bare: &BareRepo, work: &Path) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(work.join("cd-service.log"))?;
    let child = Command::new(bin.join("cd-service"))
        .envs(nats.cd_env())
        .env("CONVEYOR_ALLOW_UNAUTHENTICATED_API", "true")
        .env("CONVEYOR_CD_LISTEN", "127.0.0.1:0")
        .env("CONVEYOR_MANIFEST_REPO", bare.url())
        .env("CONVEYOR_WORKDIR", work.join("cd-work"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start cd-service (set CONVEYOR_BIN_DIR or run benches/run)")?;
    Ok(ChildGuard(child))
}

pub async fn wait_consumer_exists(nats: &TestNats) -> anyhow::Result<()> {
    let js = nats.jetstream().await;
    for _ in 0..600 {
        if let Ok(s) = js.get_stream(EVENTS_STREAM).await {
            if s.get_consumer::<async_nats::jetstream::consumer::pull::Config>("cd-service").await.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("cd-service did not create its consumer")
}

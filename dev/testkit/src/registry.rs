//! A private Debian `docker-registry` on a free loopback port (plain HTTP: 127.0.0.0/8 is an
//! insecure registry for dockerd by default). On drop it stops and removes the images the local
//! engine holds under this registry's address.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, ChildGuard};

pub struct TestRegistry {
    /// `127.0.0.1:<port>`: the image repository prefix.
    pub addr: String,
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
    login: Option<(String, String)>,
}

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

impl TestRegistry {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A registry that only accepts `user` with `password` (HTTP basic auth, bcrypt htpasswd).
    pub async fn start_with_login(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(login: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let hash = bcrypt::hash(password, 5).expect("bcrypt hash");
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("write htpasswd");
            config
                .push_str(&format!("auth:\n  htpasswd:\n    realm: conveyor-test\n    path: {}\n", dir.path().join("htpasswd").display()));
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        let login = login.map(|(u, p)| (u.to_string(), p.to_string()));
        let mut this = Self { addr, dir, child: None, login };
        this.restart().await;
        this
    }

    /// Stops the registry (pushes fail until [`TestRegistry::restart`]).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts the registry (again), on the same address and data.
    pub async fn restart(&mut self) {
        self.child = None;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry not found: run dev/setup (apt install docker-registry)");
        self.child = Some(ChildGuard(child));
        let url = format!("http://{}/v2/", self.addr);
        crate::wait_until("the registry to answer /v2/", Duration::from_secs(20), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 401) }
        })
        .await;
    }

    /// The manifest digest the registry serves for `name:tag` (name without the registry host),
    /// or `None` if it has no such tag.
    pub async fn manifest_digest(&self, name: &str, tag: &str) -> Option<String> {
        let mut req =
            reqwest::Client::new().head(format!("http://{}/v2/{name}/manifests/{tag}", self.addr)).header("Accept", MANIFEST_TYPES);
        if let Some((user, password)) = &self.login {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await.expect("registry request");
        if !resp.status().is_success() {
            return None;
        }
        resp.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        crate::docker::remove_images_with_prefix(&format!("{}/", self.addr));
    }
}

//! A private git server over HTTPS with token auth (HTTP basic, as GitHub and GitLab take
//! tokens): Python's TLS server in front of `git http-backend`, with a self-signed certificate
//! for 127.0.0.1 made by `openssl`. Serves the bare repositories under a directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, run, ChildGuard};

pub struct TestGitHttps {
    pub port: u16,
    pub user: String,
    pub token: String,
    dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl TestGitHttps {
    /// Serves the bare repositories under `root`, accepting only `user`/`token`.
    pub async fn start(root: &Path, user: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem"))
            .stderr(Stdio::null()));
        let script = d.join("server.py");
        std::fs::write(&script, include_str!("git_https_server.py")).expect("write server script");
        let port = free_port();
        let log = std::fs::File::create(d.join("server.log")).expect("log");
        let child = Command::new("python3")
            .arg(&script)
            .arg(root)
            .arg(port.to_string())
            .arg(d.join("cert.pem"))
            .arg(d.join("key.pem"))
            .args([user, token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 for the test https git server");
        let this = Self { port, user: user.to_string(), token: token.to_string(), dir, _child: ChildGuard(child) };
        crate::wait_until("the https git server to listen", Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        this
    }

    /// `https://127.0.0.1:<port>/<name>`.
    pub fn url_for(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// The server's certificate (its own CA), PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

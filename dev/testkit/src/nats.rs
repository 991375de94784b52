//! A private nats-server with JetStream on a free loopback port and a temp store dir.

use std::{path::PathBuf, process::{Command, Stdio}, time::Duration};

use async_nats::jetstream;

use crate::{free_port, ChildGuard};

pub struct TestNats {
    pub port: u16,
    pub url: String,
    store: tempfile::TempDir,
    child: Option<ChildGuard>,
}

impl TestNats {
    /// Starts `nats-server -js` and waits until JetStream answers.
    pub async fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut this = Self { port, url: format!("nats://127.0.0.1:{port}"), store, child: None };
        this.spawn().await;
        this
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.store.path().join("nats.log")).expect("log file");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server not found: run dev/setup (apt install nats-server)");
        self.child = Some(ChildGuard(child));
        let url = self.url.clone();
        crate::wait_until("nats-server to accept JetStream requests", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let Ok(client) = async_nats::connect(&url).await else { return false };
                // A raw account-info request: `query_account()` cannot parse nats-server 2.9's answer.
                let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into())).await else {
                    return false;
                };
                String::from_utf8_lossy(&reply.payload).contains("account_info_response")
            }
        })
        .await;
    }

    /// Stops the server (its store stays) — for fault tests.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn log_path(&self) -> PathBuf {
        self.store.path().join("nats.log")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.expect("connect to test nats"))
    }

    /// Every message stored in `stream`, oldest first, as (sequence, payload).
    pub async fn stream_messages(&self, stream: &str) -> Vec<(u64, Vec<u8>)> {
        let js = self.jetstream().await;
        let Ok(mut s) = js.get_stream(stream).await else { return Vec::new() };
        let info = s.info().await.expect("stream info");
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in first..=last {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push((seq, m.payload.to_vec()));
            }
        }
        out
    }
}

//! A private nats-server with JetStream on a free loopback port and a temp store dir.
//!
//! Its file store is given a size: nats-server's default is 75% of the disk's free space, which
//! on a nearly full CI disk is less than the 1 GiB ci-service's log stream reserves.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;

use crate::{free_port, ChildGuard};

/// The file store the test servers get; what the tests store is far less.
pub const DEFAULT_MAX_FILE_STORE: u64 = 8 << 30;

pub struct TestNats {
    pub port: u16,
    pub url: String,
    store: tempfile::TempDir,
    child: Option<ChildGuard>,
}

impl TestNats {
    /// Starts `nats-server` with JetStream and waits until JetStream answers.
    pub async fn start() -> Self {
        Self::start_with_max_file_store(DEFAULT_MAX_FILE_STORE).await
    }

    /// Starts it with a JetStream file store of `bytes` (`jetstream { max_file_store }`).
    pub async fn start_with_max_file_store(bytes: u64) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = format!("jetstream {{\n  store_dir: {:?}\n  max_file_store: {bytes}\n}}\n", store.path().join("js"));
        std::fs::write(store.path().join("nats.conf"), config).expect("nats config");
        let mut this = Self { port, url: format!("nats://127.0.0.1:{port}"), store, child: None };
        this.spawn().await;
        this
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.store.path().join("nats.log")).expect("log file");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"])
            .arg(self.store.path().join("nats.conf"))
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

    /// Freezes the server (SIGSTOP): its connections stay open, and what clients send is neither
    /// answered nor refused, as with a hung server. `stop` or `restart` then kills it, and what
    /// it had not read yet is gone.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("nats-server runs").0.id().to_string();
        crate::run(Command::new("kill").args(["-STOP", &pid]));
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
        self.stream_messages_with_headers(stream).await.into_iter().map(|(seq, payload, _)| (seq, payload)).collect()
    }

    /// Every message stored in `stream`, oldest first, as (sequence, payload, headers).
    pub async fn stream_messages_with_headers(&self, stream: &str) -> Vec<(u64, Vec<u8>, async_nats::HeaderMap)> {
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
                out.push((seq, m.payload.to_vec(), m.headers));
            }
        }
        out
    }
}

impl TestNats {
    /// Creates the event stream as the services define it (for events published before any
    /// service started).
    pub async fn ensure_events_stream(&self) {
        conveyor_proto::stream::open_events_stream(&self.url, "conveyor-test", 100_000, std::time::Duration::ZERO)
            .await
            .expect("create the event stream");
    }

    /// Publishes raw bytes on `subject` with a unique `Nats-Msg-Id`; returns the stream sequence.
    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>) -> u64 {
        let js = self.jetstream().await;
        let mut h = async_nats::HeaderMap::new();
        h.insert(conveyor_proto::headers::MSG_ID, uuid_like().as_str());
        js.publish_with_headers(subject.to_string(), h, payload.into()).await.expect("publish").await.expect("publish ack").sequence
    }

    /// Publishes a (valid) event on its app's subject; returns the stream sequence.
    pub async fn publish_event(&self, event: &conveyor_proto::ImageBuilt) -> u64 {
        self.publish_raw(&conveyor_proto::subject_for_app(&event.app), event.to_json().expect("valid event")).await
    }

    /// Waits until the durable consumer has acknowledged (or terminated) everything up to
    /// `sequence` and has nothing in flight.
    pub async fn wait_consumer_done(&self, stream: &str, durable: &str, sequence: u64, limit: Duration) {
        let js = self.jetstream().await;
        let what = format!("consumer {durable} to finish sequence {sequence}");
        crate::wait_until(&what, limit, || {
            let js = js.clone();
            async move {
                let Ok(s) = js.get_stream(stream).await else { return false };
                let Ok(mut c) = s.get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable).await else { return false };
                let Ok(info) = c.info().await else { return false };
                info.ack_floor.stream_sequence >= sequence && info.num_ack_pending == 0
            }
        })
        .await
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("test-{t}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

//! A private nats-server with JetStream on a free loopback port and a temp store dir, run as
//! operators run it: with Conveyor's users and permissions (`k8s-manifests/conveyor/
//! nats-auth.conf`, the one copy), fresh passwords, and no anonymous access. It also holds the
//! event-signing keys of the trusted deploy channel (made with `openssl`, as an operator
//! would), so that a test hands each service exactly what it would get in production:
//! [`TestNats::ci_env`] / [`TestNats::cd_env`] for binaries, `ci_args` / `cd_args` and the key
//! paths for in-process services.
//!
//! Its file store is given a size: nats-server's default is 75% of the disk's free space, which
//! on a nearly full CI disk is less than the 1 GiB ci-service's log stream reserves.
//!
//! [`TestNats::start_cluster`] runs a three-node JetStream cluster on loopback instead (routes
//! between the nodes, one store dir each, `server_name` n0, n1, n2): `url` then lists every node,
//! the services get `--stream-replicas 3`, and one node at a time can be killed (SIGKILL),
//! stopped and started again, or found as the leader of a stream.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use conveyor_proto::{connect::NatsArgs, signing::EventSigner};

use crate::{free_port, ChildGuard};

/// The file store the test servers get; what the tests store is far less.
pub const DEFAULT_MAX_FILE_STORE: u64 = 8 << 30;

/// Conveyor's NATS users and permissions, as shipped.
pub const AUTH_CONF: &str = include_str!("../../../k8s-manifests/conveyor/nats-auth.conf");

pub const CI_USER: &str = "conveyor-ci";
pub const CD_USER: &str = "conveyor-cd";
pub const ADMIN_USER: &str = "conveyor-admin";

/// One user's password for this server.
#[derive(Debug, Clone)]
pub struct Passwords {
    pub ci: String,
    pub cd: String,
    pub admin: String,
}

/// The event-signing keys of one test installation (PEM files, as `openssl` writes them).
#[derive(Debug, Clone)]
pub struct Keys {
    /// ci-service's private key and its public half.
    pub ci_key: PathBuf,
    pub ci_pub: PathBuf,
    /// cd-service's private key and its public half.
    pub cd_key: PathBuf,
    pub cd_pub: PathBuf,
    /// The same keys, read once.
    ci: EventSigner,
    cd: EventSigner,
}

impl Keys {
    /// Makes both key pairs in `dir` with `openssl genpkey -algorithm ed25519`.
    pub fn generate(dir: &Path) -> Self {
        let pair = |name: &str| {
            let (key, public) = (dir.join(format!("{name}-signing.pem")), dir.join(format!("{name}-signing.pub.pem")));
            crate::run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&key));
            crate::run(Command::new("openssl").arg("pkey").arg("-in").arg(&key).arg("-pubout").arg("-out").arg(&public));
            (key, public)
        };
        let (ci_key, ci_pub) = pair("ci");
        let (cd_key, cd_pub) = pair("cd");
        let read = |path: &Path| EventSigner::from_pem(&std::fs::read_to_string(path).expect("key file")).expect("openssl's key parses");
        let (ci, cd) = (read(&ci_key), read(&cd_key));
        Self { ci_key, ci_pub, cd_key, cd_pub, ci, cd }
    }

    /// ci-service's signer (what a test publishes "built" events with).
    pub fn ci_signer(&self) -> EventSigner {
        self.ci.clone()
    }

    /// cd-service's signer (for promotions and replays a test publishes itself).
    pub fn cd_signer(&self) -> EventSigner {
        self.cd.clone()
    }
}

pub struct TestNats {
    /// The first node's client port.
    pub port: u16,
    /// Every node's URL, comma-separated (one for a single server).
    pub url: String,
    pub passwords: Passwords,
    pub keys: Keys,
    /// Replicas the services' streams get: 1, or 3 on the cluster.
    pub replicas: u8,
    _store: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// One nats-server process.
struct Node {
    port: u16,
    /// Its `nats.conf` (and, beside it, its store and log).
    conf: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

/// A fresh password. It starts with letters: nats-server parses a variable's value as config
/// text, so an all-hex value such as `1234e5...` would be read as a number and refused.
fn password() -> String {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).expect("random bytes");
    format!("pw-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl TestNats {
    /// Starts `nats-server` with JetStream and waits until JetStream answers.
    pub async fn start() -> Self {
        Self::start_with_max_file_store(DEFAULT_MAX_FILE_STORE).await
    }

    /// Starts it with a JetStream file store of `bytes` (`jetstream { max_file_store }`).
    pub async fn start_with_max_file_store(bytes: u64) -> Self {
        Self::start_nodes(1, bytes).await
    }

    /// Starts a three-node JetStream cluster on loopback and waits until it has a leader.
    pub async fn start_cluster() -> Self {
        Self::start_nodes(3, DEFAULT_MAX_FILE_STORE).await
    }

    async fn start_nodes(n: usize, bytes: u64) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        std::fs::write(store.path().join("auth.conf"), AUTH_CONF).expect("nats auth config");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), if n > 1 { free_port() } else { 0 })).collect();
        let mut nodes = Vec::new();
        for (i, (port, route_port)) in ports.iter().enumerate() {
            let dir = store.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let mut config = format!(
                "server_name: n{i}\njetstream {{\n  store_dir: {:?}\n  max_file_store: {bytes}\n}}\ninclude \"../auth.conf\"\n",
                dir.join("js")
            );
            if n > 1 {
                let routes: Vec<String> =
                    ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}")).collect();
                config.push_str(&format!(
                    "cluster {{\n  name: conveyor-test\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let conf = dir.join("nats.conf");
            std::fs::write(&conf, config).expect("nats config");
            nodes.push(Node { port: *port, conf, log: dir.join("nats.log"), child: None });
        }
        let passwords = Passwords { ci: password(), cd: password(), admin: password() };
        let keys = Keys::generate(store.path());
        let url = ports.iter().map(|(p, _)| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let replicas = if n > 1 { 3 } else { 1 };
        let mut this = Self { port: ports[0].0, url, passwords, keys, replicas, _store: store, nodes };
        for i in 0..n {
            this.spawn_node(i);
        }
        this.wait_jetstream().await;
        this
    }

    /// How many nodes it runs.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's URL.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// ci-service's NATS settings (its own user).
    pub fn ci_args(&self) -> NatsArgs {
        NatsArgs { stream_replicas: self.replicas, ..NatsArgs::user(&self.url, CI_USER, &self.passwords.ci) }
    }

    /// cd-service's NATS settings (its own user).
    pub fn cd_args(&self) -> NatsArgs {
        NatsArgs { stream_replicas: self.replicas, ..NatsArgs::user(&self.url, CD_USER, &self.passwords.cd) }
    }

    /// An operator's settings (every permission): what the harness itself inspects with.
    pub fn admin_args(&self) -> NatsArgs {
        NatsArgs { stream_replicas: self.replicas, ..NatsArgs::user(&self.url, ADMIN_USER, &self.passwords.admin) }
    }

    /// The environment a ci-service binary needs: NATS URL, its user, its signing key.
    pub fn ci_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONVEYOR_NATS_URL", self.url.clone()),
            ("CONVEYOR_NATS_USER", CI_USER.into()),
            ("CONVEYOR_NATS_PASSWORD", self.passwords.ci.clone()),
            ("CONVEYOR_SIGNING_KEY_FILE", self.keys.ci_key.display().to_string()),
            ("CONVEYOR_STREAM_REPLICAS", self.replicas.to_string()),
        ]
    }

    /// The environment a cd-service binary needs: NATS URL, its user, the keys it trusts and
    /// signs with. (Its API token is the caller's to choose.)
    pub fn cd_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONVEYOR_NATS_URL", self.url.clone()),
            ("CONVEYOR_NATS_USER", CD_USER.into()),
            ("CONVEYOR_NATS_PASSWORD", self.passwords.cd.clone()),
            ("CONVEYOR_CI_PUBLIC_KEYS", self.keys.ci_pub.display().to_string()),
            ("CONVEYOR_SIGNING_KEY_FILE", self.keys.cd_key.display().to_string()),
            ("CONVEYOR_STREAM_REPLICAS", self.replicas.to_string()),
        ]
    }

    /// A client connected as the operator (every permission).
    pub async fn connect_admin(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password(ADMIN_USER.into(), self.passwords.admin.clone())
            .connect(self.servers().as_slice())
            .await
            .expect("connect to test nats as admin")
    }

    fn spawn_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-c"])
            .arg(&node.conf)
            .env("CONVEYOR_NATS_CI_PASSWORD", &self.passwords.ci)
            .env("CONVEYOR_NATS_CD_PASSWORD", &self.passwords.cd)
            .env("CONVEYOR_NATS_ADMIN_PASSWORD", &self.passwords.admin)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server not found: run dev/setup (apt install nats-server)");
        node.child = Some(ChildGuard(child));
    }

    /// Waits until JetStream answers an account-info request (on a cluster: a meta leader exists).
    async fn wait_jetstream(&self) {
        let (servers, admin) = (self.servers(), self.passwords.admin.clone());
        crate::wait_until("nats-server to accept JetStream requests", Duration::from_secs(30), || {
            let (servers, admin) = (servers.clone(), admin.clone());
            async move {
                let connect = async_nats::ConnectOptions::new().user_and_password(ADMIN_USER.into(), admin).connect(servers.as_slice());
                let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else { return false };
                // A raw account-info request: `query_account()` cannot parse nats-server 2.9's answer.
                let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into())).await else {
                    return false;
                };
                let text = String::from_utf8_lossy(&reply.payload);
                text.contains("account_info_response") && !text.contains("\"error\"")
            }
        })
        .await;
    }

    /// Stops the server (every node; the stores stay) — for fault tests.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.child = None;
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open, and what clients send is neither
    /// answered nor refused, as with a hung server. `stop` or `restart` then kills it, and what
    /// it had not read yet is gone.
    pub fn freeze(&self) {
        for node in &self.nodes {
            crate::signal(node.child.as_ref().expect("nats-server runs").0.id(), crate::Signal::STOP);
        }
    }

    /// Starts it again on the same ports and stores.
    pub async fn restart(&mut self) {
        self.stop();
        for i in 0..self.nodes.len() {
            self.spawn_node(i);
        }
        self.wait_jetstream().await;
    }

    /// Kills node `i` at once (SIGKILL): no goodbye to its routes or clients.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut guard) = self.nodes[i].child.take() {
            let _ = guard.0.kill();
            let _ = guard.0.wait();
        }
    }

    /// Stops node `i` (SIGTERM, as an operator's restart does).
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].child = None;
    }

    /// Starts node `i` again on its port and store, and waits until it answers.
    pub async fn start_node(&mut self, i: usize) {
        self.spawn_node(i);
        let port = self.nodes[i].port;
        crate::wait_until("the nats node to listen", Duration::from_secs(20), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
    }

    /// The index of the node leading `stream` (its Raft leader), if it has one now.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        let js = self.jetstream().await;
        let info = js.get_stream(stream).await.ok()?.info().await.ok()?.clone();
        let leader = info.cluster?.leader?;
        leader.strip_prefix('n')?.parse().ok()
    }

    /// The (first node's) log.
    pub fn log_path(&self) -> PathBuf {
        self.nodes[0].log.clone()
    }

    /// Node `i`'s log.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// JetStream as the operator.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.connect_admin().await)
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
        conveyor_proto::stream::open_events_stream(&self.admin_args(), "conveyor-test", 100_000, std::time::Duration::ZERO, true)
            .await
            .map(|_| ())
            .expect("create the event stream");
    }

    /// Publishes raw bytes on `subject` with a unique `Nats-Msg-Id` and no signature (as the
    /// operator); returns the stream sequence.
    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>) -> u64 {
        self.publish_with(subject, payload, None).await
    }

    /// Publishes raw bytes signed by `signer` for `subject` (as the operator).
    pub async fn publish_with(&self, subject: &str, payload: Vec<u8>, signer: Option<&EventSigner>) -> u64 {
        let js = self.jetstream().await;
        let mut h = async_nats::HeaderMap::new();
        h.insert(conveyor_proto::headers::MSG_ID, uuid_like().as_str());
        if let Some(signer) = signer {
            for (name, value) in signer.headers(subject, &payload) {
                h.insert(name, value.as_str());
            }
        }
        js.publish_with_headers(subject.to_string(), h, payload.into()).await.expect("publish").await.expect("publish ack").sequence
    }

    /// Publishes a (valid) event on its subject, signed as the real publisher would sign it: a
    /// build by ci-service's key, a promotion or replay by cd-service's; returns the sequence.
    pub async fn publish_event(&self, event: &conveyor_proto::ImageBuilt) -> u64 {
        let signer = if event.deploy.is_none() { self.keys.ci_signer() } else { self.keys.cd_signer() };
        self.publish_with(&event.subject(), event.to_json().expect("valid event"), Some(&signer)).await
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

//! cd-service configuration: flags with `CONVEYOR_*` environment variables; defaults that work
//! locally.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::gitops::{GitAuth, RepoConfig, Secret};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "cd-service",
    about = "Conveyor CD: image-built events -> image tag commits in a GitOps manifest repo",
    after_help = "Promotions, replays and history: the `conveyor` command line (conveyor --help)"
)]
pub struct Config {
    /// NATS server and this service's credentials.
    #[command(flatten)]
    pub nats: conveyor_proto::connect::NatsArgs,

    /// ci-service's public event-signing key(s), PEM (`openssl pkey -in ci-signing.pem -pubout`);
    /// a file may hold several and several files may be given (comma-separated), so a key is
    /// rotated without a gap. Only build events that verify against one of them are applied.
    #[arg(long = "ci-public-keys", env = "CONVEYOR_CI_PUBLIC_KEYS", value_delimiter = ',')]
    pub ci_public_keys: Vec<PathBuf>,

    /// This service's Ed25519 private key (PKCS#8 PEM) that signs its promotions and replays.
    #[arg(long, env = "CONVEYOR_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Older public keys of this service still trusted for promotions and replays (while rotating).
    #[arg(long = "cd-public-keys", env = "CONVEYOR_CD_PUBLIC_KEYS", value_delimiter = ',')]
    pub cd_public_keys: Vec<PathBuf>,

    /// Token that `POST /promote` and `POST /replay` require (`Authorization: Bearer <token>`).
    #[arg(long, env = "CONVEYOR_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// Start without --api-token, leaving promotions and replays open to whoever reaches the API.
    #[arg(long, env = "CONVEYOR_ALLOW_UNAUTHENTICATED_API")]
    pub allow_unauthenticated_api: bool,

    /// Address of the HTTP API (`POST /promote`, `GET /healthz`).
    #[arg(long, env = "CONVEYOR_CD_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,

    /// Manifest repository: a local path, `ssh://git@host[:port]/path` or `git@host:path`.
    #[arg(long, env = "CONVEYOR_MANIFEST_REPO")]
    pub manifest_repo: String,

    /// Branch the manifests are committed to (the one Argo CD / Flux watches).
    #[arg(long, env = "CONVEYOR_MANIFEST_BRANCH", default_value = "main")]
    pub branch: String,

    /// Where the warm clone of the manifest repository is kept.
    #[arg(long, env = "CONVEYOR_WORKDIR", default_value = "/tmp/conveyor-cd")]
    pub workdir: PathBuf,

    /// Durable consumer name; replicas with the same name share the work.
    #[arg(long, env = "CONVEYOR_CONSUMER", default_value = "cd-service")]
    pub consumer: String,

    /// Commit author name.
    #[arg(long, env = "CONVEYOR_GIT_AUTHOR_NAME", default_value = "Conveyor")]
    pub author_name: String,

    /// Commit author email.
    #[arg(long, env = "CONVEYOR_GIT_AUTHOR_EMAIL", default_value = "conveyor@localhost")]
    pub author_email: String,

    /// Private key (deploy key) for ssh manifest remotes.
    #[arg(long, env = "CONVEYOR_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,

    /// known_hosts file the ssh host key must match (default ~/.ssh/known_hosts).
    #[arg(long, env = "CONVEYOR_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,

    /// Token for https manifest remotes (sent as the HTTP basic auth password; never logged).
    #[arg(long, env = "CONVEYOR_GIT_TOKEN", hide_env_values = true)]
    pub git_token: Option<Secret>,

    /// File holding the token (e.g. a mounted Kubernetes Secret); read at start.
    #[arg(long, env = "CONVEYOR_GIT_TOKEN_FILE", conflicts_with = "git_token")]
    pub git_token_file: Option<PathBuf>,

    /// User name sent with the token.
    #[arg(long, env = "CONVEYOR_GIT_TOKEN_USER", default_value = "x-access-token")]
    pub git_token_user: String,

    /// CA bundle (PEM) for https remotes with a private CA; default: the system's.
    #[arg(long, env = "CONVEYOR_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Pushes tried when the branch moved under us, before the event is handed back to the queue.
    #[arg(long, env = "CONVEYOR_MAX_PUSH_ATTEMPTS", default_value_t = 8)]
    pub max_push_attempts: u32,

    /// Seconds an event may be in progress before JetStream redelivers it.
    #[arg(long, env = "CONVEYOR_ACK_WAIT_SECS", default_value_t = 120)]
    pub ack_wait_secs: u64,

    /// Events applied in one commit at most (events pending together are batched).
    #[arg(long, env = "CONVEYOR_BATCH_MAX", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_max: u16,

    /// Milliseconds to wait for more pending events once one arrived.
    #[arg(long, env = "CONVEYOR_BATCH_WAIT_MS", default_value_t = 20)]
    pub batch_wait_ms: u64,

    /// Events kept in the stream (used only when this service creates the stream).
    #[arg(long, env = "CONVEYOR_STREAM_MAX_MESSAGES", default_value_t = 100_000)]
    pub stream_max_messages: i64,

    /// Days events are kept in the stream, 0 for no age limit (used only when this service
    /// creates the stream); older events can no longer be replayed.
    #[arg(long, env = "CONVEYOR_STREAM_MAX_AGE_DAYS", default_value_t = 0)]
    pub stream_max_age_days: u64,
}

impl Config {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    pub fn consume_options(&self) -> crate::consume::ConsumeOptions {
        crate::consume::ConsumeOptions {
            durable: self.consumer.clone(),
            ack_wait: self.ack_wait(),
            stream_max_messages: self.stream_max_messages,
            stream_max_age: Duration::from_secs(self.stream_max_age_days * 24 * 3600),
            batch_max: self.batch_max as usize,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
        }
    }

    /// A configuration with the defaults and this manifest repository (the environment is not
    /// read, so it is the same on every machine).
    pub fn for_repo(manifest_repo: &str) -> Self {
        conveyor_proto::connect::parse_hermetic(&["cd-service", "--manifest-repo", manifest_repo])
    }

    pub fn repo_config(&self) -> RepoConfig {
        let name: String = self
            .manifest_repo
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
            .trim_matches('_')
            .chars()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        RepoConfig {
            url: self.manifest_repo.clone(),
            branch: self.branch.clone(),
            clone_dir: self.workdir.join("clones").join(format!("{name}@{}", self.branch.replace('/', "_"))),
            author_name: self.author_name.clone(),
            author_email: self.author_email.clone(),
            auth: GitAuth {
                ssh_key: self.ssh_key.clone(),
                known_hosts: self.known_hosts.clone(),
                token: self.git_token.clone(),
                token_user: self.git_token_user.clone(),
            },
            max_push_attempts: self.max_push_attempts.max(1),
        }
    }
}

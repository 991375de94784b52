//! ci-service as a library: configuration, state and the running service (HTTP intake and API,
//! queue workers, control notices), so that `main.rs`, tests and the demo start the same thing.

pub mod build;
pub mod config;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod publish;
pub mod queue;
pub mod records;
pub mod secrets;
pub mod status;
pub mod webhook;
pub mod worker;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::consumer::PullConsumer;
use bollard::{auth::DockerCredentials, Docker};
use tokio::net::TcpListener;

pub use config::Config;
use {
    build::Running,
    logs::Logs,
    publish::Publisher,
    queue::Queue,
    records::Records,
    secrets::{Masker, Secret, WebhookSecrets},
};

/// Shared state of the running service.
pub struct AppState {
    pub config: Config,
    /// This replica's name in records and logs.
    pub replica: String,
    pub secrets: WebhookSecrets,
    /// Blanks every secret value out of logs and failure reasons.
    pub masker: Masker,
    pub registry_auth: Option<DockerCredentials>,
    pub docker: Docker,
    pub publisher: Publisher,
    pub queue: Queue,
    pub records: Records,
    pub logs: Logs,
    pub running: Running,
    pub metrics: metrics::Metrics,
    /// Commit statuses to the forges (sent in the background).
    pub statuses: status::Reporter,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the Docker Engine (is dockerd running? `dev/setup` starts it): {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Nats(#[from] publish::PublishError),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error(transparent)]
    Records(#[from] records::RecordError),
    #[error(transparent)]
    Logs(#[from] logs::LogError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("{0}")]
    Refused(String),
    #[error(
        "no webhook secret is configured: set --webhook-secret / CONVEYOR_WEBHOOK_SECRET or --webhook-secrets-file, \
         or accept unsigned webhooks explicitly with --allow-unsigned-webhooks"
    )]
    NoWebhookSecret,
    #[error("cannot read the registry password file {path}: {source}")]
    PasswordFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot prepare the work directory {path}: {source}")]
    Workdir { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "no --signing-key-file / CONVEYOR_SIGNING_KEY_FILE: ci-service signs every image-built event and cd-service applies \
         nothing unsigned (make a key with `openssl genpkey -algorithm ed25519 -out ci-signing.pem`, give cd-service \
         `openssl pkey -in ci-signing.pem -pubout`)"
    )]
    NoSigningKey,
    #[error("cannot read the signing key {path}: {message}")]
    SigningKey { path: std::path::PathBuf, message: String },
}

/// Reads ci-service's event-signing key.
fn load_signer(path: Option<&std::path::Path>) -> Result<conveyor_proto::signing::EventSigner, StartError> {
    let path = path.ok_or(StartError::NoSigningKey)?;
    let fail = |message: String| StartError::SigningKey { path: path.to_path_buf(), message };
    let pem = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    conveyor_proto::signing::EventSigner::from_pem(&pem).map_err(|e| fail(e.to_string()))
}

/// A connected service, ready to serve.
pub struct App {
    pub state: Arc<AppState>,
    consumer: Option<PullConsumer>,
    control: async_nats::Subscriber,
    statuses: tokio::sync::mpsc::Receiver<status::Report>,
}

impl App {
    /// Checks the secrets, connects to the Docker Engine and NATS, and opens (creating them
    /// if needed) the event stream, the build queue, the records bucket and the log stream.
    pub async fn connect(config: Config) -> Result<Self, StartError> {
        std::fs::create_dir_all(config.workdir.join("builds"))
            .map_err(|source| StartError::Workdir { path: config.workdir.clone(), source })?;
        let file = config.webhook_secrets_file.as_deref().map(WebhookSecrets::load_file).transpose()?;
        let mut secrets = WebhookSecrets::new(config.webhook_secrets.clone(), file, config.allow_unsigned_webhooks)?;
        secrets.allow_local_repos = config.allow_local_repos;
        if secrets.is_empty() && !config.allow_unsigned_webhooks {
            return Err(StartError::NoWebhookSecret);
        }
        if config.allow_unsigned_webhooks {
            tracing::warn!("unsigned webhooks are accepted for repositories without a secret (--allow-unsigned-webhooks)");
        }
        let password = match (&config.registry_password, &config.registry_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| StartError::PasswordFile { path: path.clone(), source })?;
                Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
            (None, None) => None,
        };
        let file_tokens = secrets.file_tokens();
        let masker = Masker::new(secrets.values().chain(&file_tokens).chain(password.iter()).chain(config.api_token.iter()));
        if config.api_token.is_none() {
            tracing::warn!("no --api-token: POST /builds, cancel and retry are open to whoever reaches the API");
        }
        let registry_auth = config.registry_username.as_ref().map(|username| DockerCredentials {
            username: Some(username.clone()),
            password: password.as_ref().map(|p| p.expose().to_string()),
            serveraddress: Some(config.registry.split('/').next().unwrap_or(&config.registry).to_string()),
            ..Default::default()
        });

        if let Some(ca) = &config.git_ca_file {
            conveyor_git::set_ca_file(ca).map_err(|e| StartError::Refused(format!("cannot use the git CA file {}: {e}", ca.display())))?;
        }
        let signer = load_signer(config.signing_key_file.as_deref())?;
        tracing::info!(key = signer.key_id(), "image-built events are signed");

        let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        let events = conveyor_proto::stream::open_events_stream(
            &config.nats,
            "conveyor-ci-service",
            config.stream_max_messages,
            config.stream_max_age(),
            false,
        )
        .await?;
        let (js, refusals) = (events.js, events.refusals);
        // A NATS refusal of a permission is the likely cause of a failing open: say so.
        let named = |e: StartError| match refusals.last() {
            Some(_) => StartError::Refused(format!("{e}{}", refusals.suffix())),
            None => e,
        };
        let opened = async {
            let queue = Queue::open(
                &js,
                Duration::from_secs(config.dedup_window_secs.max(1)),
                Duration::from_secs(config.ack_wait_secs.max(3)),
                config.max_deliver,
                config.records_max_age(),
                config.nats.stream_replicas,
            )
            .await?;
            let records = Records::open(&js, config.records_max_age(), config.nats.stream_replicas).await?;
            let logs = Logs::open(&js, config.records_max_age(), config.logs_max_bytes, config.nats.stream_replicas).await?;
            let consumer = if config.workers > 0 { Some(queue.consumer().await?) } else { None };
            let control = queue.subscribe_control().await?;
            Ok::<_, StartError>((queue, records, logs, consumer, control))
        };
        let (queue, records, logs, consumer, control) = opened.await.map_err(named)?;
        let replica = config.replica.clone().unwrap_or_else(default_replica_name);
        let (statuses, status_reports) = status::Reporter::new();
        let state = Arc::new(AppState {
            config,
            replica,
            secrets,
            masker,
            registry_auth,
            docker,
            publisher: Publisher::new(js, signer),
            queue,
            records,
            logs,
            running: Running::default(),
            metrics: metrics::Metrics::default(),
            statuses,
        });
        Ok(Self { state, consumer, control, statuses: status_reports })
    }

    /// Serves HTTP on `listener` and runs builds (up to `workers` at once) until `shutdown`
    /// resolves; then stops taking pushes and jobs and waits for running builds to finish.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let App { state, consumer, control, statuses } = self;
        let _statuses = worker::AbortOnDrop(tokio::spawn(status::run(state.clone(), statuses)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Owned here: if this future is dropped, its workers and their builds go with it.
        let workers = consumer.map(|c| worker::AbortOnDrop(tokio::spawn(worker::run(state.clone(), c, stopped.clone()))));
        let _notices = worker::AbortOnDrop(tokio::spawn(worker::control(state.clone(), control)));
        tracing::info!(addr = %listener.local_addr()?, replica = %state.replica, workers = state.config.workers, "ci-service listening");
        let result = conveyor_http::serve(listener, http::router(state.clone()), shutdown).await;
        let _ = stop.send(true);
        if let Some(mut w) = workers {
            let _ = (&mut w.0).await;
        }
        result
    }
}

fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "ci".into());
    format!("{host}-{}", std::process::id())
}

//! cd-service as a library: `Service::start` opens the manifest clone and the durable consumer;
//! `Service::run` applies events until shutdown. `main.rs`, tests and the demo all use it.

pub mod config;
pub mod consume;
pub mod gitops;
pub mod http;
pub mod manifest_config;
pub mod metrics;
pub mod outcomes;
pub mod promote;
pub mod replay;
pub mod rewrite;
pub mod trust;

use std::sync::Arc;

use tokio::sync::Mutex;

pub use config::Config;
use gitops::ManifestRepo;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("manifest repository: {0}")]
    Repo(#[from] gitops::GitOpsError),
    #[error(transparent)]
    Consume(#[from] consume::ConsumeError),
    #[error("the manifest clone task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot read the git token file {path}: {source}")]
    TokenFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(
        "no --ci-public-keys / CONVEYOR_CI_PUBLIC_KEYS: cd-service applies only build events signed by ci-service \
         (give it `openssl pkey -in ci-signing.pem -pubout`)"
    )]
    NoCiKeys,
    #[error(
        "no --signing-key-file / CONVEYOR_SIGNING_KEY_FILE: cd-service signs its promotions and replays \
         (make a key with `openssl genpkey -algorithm ed25519 -out cd-signing.pem`)"
    )]
    NoSigningKey,
    #[error("{what} {path}: {message}")]
    Key { what: &'static str, path: std::path::PathBuf, message: String },
    #[error(
        "no --api-token / CONVEYOR_API_TOKEN: POST /promote and POST /replay would be open to whoever reaches the API; \
         set a token, or start with --allow-unauthenticated-api to accept that"
    )]
    NoApiToken,
}

/// Reads the keys cd-service trusts and signs with.
fn load_trust(config: &Config) -> Result<trust::Trust, StartError> {
    use conveyor_proto::signing::{EventSigner, TrustedKeys};
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| StartError::Key { what, path: path.to_path_buf(), message: e.to_string() })
    };
    let public = |what: &'static str, paths: &[std::path::PathBuf]| -> Result<Option<TrustedKeys>, StartError> {
        let mut keys = TrustedKeys::default();
        for path in paths {
            let parsed = TrustedKeys::from_pem(&read(what, path)?).map_err(|e| StartError::Key {
                what,
                path: path.clone(),
                message: e.to_string(),
            })?;
            keys.extend(&parsed);
        }
        Ok((!keys.is_empty()).then_some(keys))
    };
    let builds = public("ci-service's public key", &config.ci_public_keys)?.ok_or(StartError::NoCiKeys)?;
    let path = config.signing_key_file.as_deref().ok_or(StartError::NoSigningKey)?;
    let signer = EventSigner::from_pem(&read("the signing key", path)?).map_err(|e| StartError::Key {
        what: "the signing key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let older = public("an older public key of cd-service", &config.cd_public_keys)?;
    Ok(trust::Trust::new(builds, signer, older))
}

pub struct Service {
    pub repo: Arc<Mutex<ManifestRepo>>,
    consumer: consume::Consumer,
    listener: tokio::net::TcpListener,
    trust: Arc<trust::Trust>,
    api_token: Option<gitops::Secret>,
}

impl Service {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        if config.api_token.is_none() {
            if !config.allow_unauthenticated_api {
                return Err(StartError::NoApiToken);
            }
            tracing::warn!(
                "no --api-token: POST /promote and POST /replay are open to whoever reaches the API (--allow-unauthenticated-api)"
            );
        }
        let trust = Arc::new(load_trust(config)?);
        let (builds, intents) = trust.key_ids();
        tracing::info!(?builds, ?intents, "events are applied only when signed by these keys");
        let mut config = config.clone();
        if let Some(path) = config.git_token_file.take() {
            let token = std::fs::read_to_string(&path).map_err(|source| StartError::TokenFile { path: path.clone(), source })?;
            config.git_token = Some(gitops::Secret::new(token.trim()));
        }
        if let Some(ca) = &config.ca_file {
            gitops::set_ca_file(ca)?;
        }
        let config = &config;
        let repo_cfg = config.repo_config();
        let repo = tokio::task::spawn_blocking(move || ManifestRepo::open_or_clone(repo_cfg)).await??;
        tracing::info!(repo = %config.manifest_repo, branch = %config.branch, clone = %repo.work_tree().display(), "manifest repository ready");
        let consumer = consume::Consumer::open(&config.nats, config.consume_options(), trust.clone()).await?;
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(|source| StartError::Listen { addr: config.listen, source })?;
        tracing::info!(consumer = %config.consumer, http = %config.listen, "consuming image-built events");
        Ok(Self { repo: Arc::new(Mutex::new(repo)), consumer, listener, trust, api_token: config.api_token.clone() })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Applies events and serves HTTP until `shutdown`; the batch in progress is finished first.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let consuming = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let state = Arc::new(http::HttpState {
            js: self.consumer.jetstream(),
            trust: self.trust.clone(),
            api_token: self.api_token.clone(),
            repo: self.repo.clone(),
            recent: self.consumer.recent(),
            metrics: self.consumer.metrics(),
            consumer: self.consumer.handle(),
            consuming: consuming.clone(),
            last_read_sync: std::sync::Mutex::new(None),
        });
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = conveyor_http::serve(self.listener, http::router(state), async {
            let _ = http_stopped.await;
        });
        let server = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        self.consumer.run(self.repo, shutdown).await;
        consuming.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = stop_http.send(());
        let _ = server.await;
    }
}

//! cd-service as a library: `Service::start` opens the manifest clone and the durable consumer;
//! `Service::run` applies events until shutdown. `main.rs`, tests and the demo all use it.

pub mod config;
pub mod consume;
pub mod gitops;
pub mod manifest_config;
pub mod rewrite;

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
}

pub struct Service {
    pub repo: Arc<Mutex<ManifestRepo>>,
    consumer: consume::Consumer,
}

impl Service {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let repo_cfg = config.repo_config();
        let repo = tokio::task::spawn_blocking(move || ManifestRepo::open_or_clone(repo_cfg)).await??;
        tracing::info!(repo = %config.manifest_repo, branch = %config.branch, clone = %repo.work_tree().display(), "manifest repository ready");
        let consumer = consume::Consumer::open(&config.nats_url, config.consume_options()).await?;
        tracing::info!(consumer = %config.consumer, "consuming image-built events");
        Ok(Self { repo: Arc::new(Mutex::new(repo)), consumer })
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        self.consumer.run(self.repo, shutdown).await
    }
}

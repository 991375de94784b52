//! ci-service as a library: configuration, state and the HTTP app, so that `main.rs`, tests and
//! the demo start exactly the same service.

pub mod build;
pub mod builds;
pub mod config;
pub mod http;
pub mod publish;
pub mod webhook;

use std::{future::Future, sync::Arc};

use bollard::Docker;
use tokio::{
    net::TcpListener,
    sync::{mpsc, Semaphore},
};

pub use config::Config;
use {build::BuildJob, builds::BuildStore, publish::Publisher};

/// Shared state of the running service.
pub struct AppState {
    pub config: Config,
    pub builds: BuildStore,
    pub docker: Docker,
    pub publisher: Publisher,
    pub queue: mpsc::Sender<BuildJob>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the Docker Engine (is dockerd running? `dev/setup` starts it): {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Nats(#[from] publish::PublishError),
    #[error("cannot prepare the work directory {path}: {source}")]
    Workdir { path: std::path::PathBuf, source: std::io::Error },
}

/// A connected service, ready to serve.
pub struct App {
    pub state: Arc<AppState>,
    jobs: mpsc::Receiver<BuildJob>,
}

impl App {
    /// Connects to the Docker Engine and NATS (creating the event stream if needed).
    pub async fn connect(config: Config) -> Result<Self, StartError> {
        std::fs::create_dir_all(config.workdir.join("builds"))
            .map_err(|source| StartError::Workdir { path: config.workdir.clone(), source })?;
        let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        let publisher = Publisher::connect(&config.nats_url, config.stream_max_messages).await?;
        let (queue, jobs) = mpsc::channel(config.queue_capacity.max(1));
        let state = Arc::new(AppState { config, builds: BuildStore::default(), docker, publisher, queue });
        Ok(Self { state, jobs })
    }

    /// Serves HTTP on `listener` and runs builds (up to `workers` at once) until `shutdown`
    /// resolves; then stops accepting pushes and waits for running builds to finish.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let App { state, mut jobs } = self;
        let workers = Arc::new(Semaphore::new(state.config.workers as usize));
        let dispatcher_state = state.clone();
        let dispatcher_workers = workers.clone();
        let dispatcher = tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let permit = dispatcher_workers.clone().acquire_owned().await.expect("the worker semaphore is never closed");
                let state = dispatcher_state.clone();
                tokio::spawn(async move {
                    build::run(state, job).await;
                    drop(permit);
                });
            }
        });
        tracing::info!(addr = %listener.local_addr()?, "ci-service listening");
        let result = axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(shutdown).await;
        dispatcher.abort();
        // Running builds hold a permit each: taking them all means every build has finished.
        let _all = workers.acquire_many(state.config.workers as u32).await;
        result
    }
}

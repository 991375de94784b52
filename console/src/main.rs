//! `conveyor-console`: the web console. It serves the page (HTML, CSS and JavaScript embedded in
//! the binary, nothing from a CDN) and passes the page's API calls through to ci-service
//! (`/api/ci/...`) and cd-service (`/api/cd/...`), so the browser talks to one origin. It keeps
//! no state and holds no token: actions carry the token the person typed into the page, and the
//! services check it.

mod assets;
mod proxy;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{routing::get, Json, Router};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "conveyor-console", about = "The Conveyor web console")]
struct Args {
    /// Where the console listens.
    #[arg(long, env = "CONVEYOR_CONSOLE_LISTEN", default_value = "127.0.0.1:8070")]
    listen: SocketAddr,
    /// ci-service's HTTP address (builds, logs, cancel, retry).
    #[arg(long, env = "CONVEYOR_CI_URL", default_value = "http://127.0.0.1:8080")]
    ci_url: String,
    /// cd-service's HTTP address (environments, history, promotions, replays).
    #[arg(long, env = "CONVEYOR_CD_URL", default_value = "http://127.0.0.1:8090")]
    cd_url: String,
    /// Jaeger's UI, for the trace links (`<url>/trace/<trace id>`); opened by the browser.
    #[arg(long, env = "CONVEYOR_JAEGER_URL", default_value = "http://localhost:16686")]
    jaeger_url: String,
    /// PEM file of a private CA to trust for `https://` service URLs, besides the system's.
    #[arg(long, env = "CONVEYOR_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let upstreams = proxy::Upstreams::new(&args.ci_url, &args.cd_url, args.ca_file.as_deref())?;
    let config = serde_json::json!({ "jaeger_url": args.jaeger_url.trim_end_matches('/') });
    let app = Router::new()
        .route("/config.json", get(move || async move { Json(config.clone()) }))
        .route("/healthz", get(|| async { "ok" }))
        .merge(proxy::router(Arc::new(upstreams)))
        .merge(assets::router());
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("bind {}", args.listen))?;
    tracing::info!(listen = %args.listen, ci = %args.ci_url, cd = %args.cd_url, "console serving on http://{}/", args.listen);
    // Log streams stay open while a build runs: give open connections a few seconds, no more.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(conveyor_http::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    conveyor_http::shutdown_signal().await;
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(done) => done.context("server task")?.context("serve")?,
        Err(_) => tracing::info!("open log streams closed at shutdown"),
    }
    Ok(())
}

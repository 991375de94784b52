//! The ci-service binary: parse configuration, connect, serve until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--probe http://127.0.0.1:8080/readyz`: the container image's health check.
    conveyor_telemetry::probe::run_if_asked();
    // Logs, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when dropped.
    let config = ci_service::Config::parse();
    let telemetry = conveyor_telemetry::Telemetry::init("ci-service")?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let app = ci_service::App::connect(config).await?;
    app.serve(listener, shutdown_signal()).await?;
    // Off the async threads: a gRPC export still in flight needs them to finish.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}

async fn shutdown_signal() {
    conveyor_http::shutdown_signal().await;
    tracing::info!("shutting down: no new pushes, finishing running builds");
}

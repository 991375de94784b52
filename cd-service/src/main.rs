//! The cd-service binary: open the manifest clone and the consumer and apply events until
//! SIGINT/SIGTERM. Promotions, replays and history are asked of it with `conveyor`
//! (crate `conveyor-cli`, in `cli/`), over its HTTP API.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--probe http://127.0.0.1:8080/readyz`: the container image's health check.
    conveyor_telemetry::probe::run_if_asked();
    // Logs, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when dropped.
    let config = cd_service::Config::parse();
    let telemetry = conveyor_telemetry::Telemetry::init("cd-service")?;
    let service = cd_service::Service::start(&config).await?;
    service.run(shutdown_signal()).await;
    // Off the async threads: a gRPC export still in flight needs them to finish.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}

async fn shutdown_signal() {
    conveyor_http::shutdown_signal().await;
    tracing::info!("shutting down after the batch in progress");
}

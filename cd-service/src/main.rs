//! The cd-service binary: open the manifest clone and the consumer and apply events until
//! SIGINT/SIGTERM. Promotions, replays and history are asked of it with `conveyor`
//! (`src/bin/conveyor.rs`), over its HTTP API.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = cd_service::Config::parse();
    let service = cd_service::Service::start(&config).await?;
    service.run(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down after the batch in progress");
}

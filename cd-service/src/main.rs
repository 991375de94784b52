//! The cd-service binary: with no subcommand, open the manifest clone and the consumer and apply
//! events until SIGINT/SIGTERM; `cd-service promote` asks a running cd-service to promote an
//! image to an environment.

use clap::Parser;

/// Deploy an already built image to an environment (e.g. production with a manual policy).
#[derive(Parser)]
#[command(name = "cd-service promote")]
struct PromoteArgs {
    /// The app, as in conveyor.yaml.
    #[arg(long)]
    app: String,
    /// The environment to deploy to.
    #[arg(long = "to")]
    environment: String,
    /// The image tag to deploy (a build of this app in the event stream).
    #[arg(long)]
    tag: String,
    /// Who asks (recorded in the commit).
    #[arg(long = "as", env = "USER", default_value = "cli")]
    requested_by: String,
    /// The running cd-service's HTTP address.
    #[arg(long, env = "CONVEYOR_CD_URL", default_value = "http://127.0.0.1:8090")]
    url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().nth(1).as_deref() == Some("promote") {
        return promote(PromoteArgs::parse_from(std::env::args().skip(1))).await;
    }
    let config = cd_service::Config::parse();
    let service = cd_service::Service::start(&config).await?;
    service.run(shutdown_signal()).await;
    Ok(())
}

async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let by = if args.requested_by.trim().is_empty() { "cli" } else { args.requested_by.as_str() };
    let body = serde_json::json!({ "app": args.app, "environment": args.environment, "tag": args.tag, "requested_by": by });
    let url = format!("{}/promote", args.url.trim_end_matches('/'));
    let resp =
        reqwest::Client::new().post(&url).json(&body).send().await.map_err(|e| anyhow::anyhow!("cannot reach cd-service at {url}: {e}"))?;
    let status = resp.status();
    let answer: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("promotion refused ({status}): {}", answer["message"].as_str().unwrap_or("no reason given"));
    }
    println!(
        "queued: promote {} to {} as event {} (stream sequence {})",
        answer["image"].as_str().unwrap_or("?"),
        args.environment,
        answer["event_id"].as_str().unwrap_or("?"),
        answer["sequence"]
    );
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

//! `conveyor`: the command line for deploy history, replays (redeploys and rollbacks) and
//! promotions. It talks to a running cd-service over HTTP (`--url`, `CONVEYOR_CD_URL`): tables
//! for people, `--json` for scripts. Promotions and replays send the API token from
//! `CONVEYOR_API_TOKEN` (never a flag, so it stays out of shell history and `ps`). An `https://`
//! URL is checked against the system's CAs and `--ca-file` (`CONVEYOR_CA_FILE`). A refused
//! request exits with status 1 and the reason. It speaks the typed API of `conveyor-api` and
//! links no git and no OpenSSL.

use clap::{Parser, Subcommand};
use conveyor_api::{
    cd::{Deployment, HistoryQuery, PromoteAccepted, PromoteRequest, ReplayPlan, ReplayRequest},
    ErrorBody,
};
use serde::{de::DeserializeOwned, Serialize};

#[derive(Parser)]
#[command(name = "conveyor", about = "Deploy history, replays and promotions (talks to cd-service)")]
struct Cli {
    /// The running cd-service's HTTP address.
    #[arg(long, env = "CONVEYOR_CD_URL", default_value = "http://127.0.0.1:8090", global = true)]
    url: String,
    /// PEM file of a private CA to trust for an `https://` URL, besides the system's.
    #[arg(long, env = "CONVEYOR_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Print the service's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What was deployed, newest first.
    History {
        app: String,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Redeploy an earlier image, or roll back to it: `--to previous`, `--seq N` or `--tag T`.
    Replay {
        app: String,
        /// `previous`: one step back in the environment's history.
        #[arg(long, conflicts_with_all = ["seq", "tag"])]
        to: Option<String>,
        /// The event's stream sequence (see `history`).
        #[arg(long, conflicts_with = "tag")]
        seq: Option<u64>,
        /// The image tag of a build of this app.
        #[arg(long)]
        tag: Option<String>,
        /// The environment (needed when the app has several).
        #[arg(long)]
        env: Option<String>,
        /// Deploy into this other environment instead (a promotion).
        #[arg(long)]
        into: Option<String>,
        /// Print the diff it would commit; commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who asks (recorded in the commit).
        #[arg(long = "as", env = "USER", default_value = "cli")]
        requested_by: String,
    },
    /// Deploy a built image to an environment (e.g. production with a manual policy).
    Promote {
        app: String,
        #[arg(long = "to")]
        environment: String,
        #[arg(long)]
        tag: String,
        #[arg(long = "as", env = "USER", default_value = "cli")]
        requested_by: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("conveyor: {e}");
        std::process::exit(1);
    }
}

/// cd-service's API, typed: each call sends the request type of its route and reads back the
/// answer type, or the error body's message.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, String> {
        let req = match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        };
        let resp = req.send().await.map_err(|e| format!("cannot reach cd-service at {}: {}", self.base, chain(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("cannot read cd-service's answer: {e}"))?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<ErrorBody>(&bytes).map(|b| b.message).unwrap_or_else(|_| "no reason given".into());
            return Err(format!("{reason} ({status})"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("unexpected answer from cd-service ({e}): {}", String::from_utf8_lossy(&bytes)))
    }

    async fn history(&self, q: &HistoryQuery) -> Result<Vec<Deployment>, String> {
        self.call(self.http.get(format!("{}/history", self.base)).query(q)).await
    }

    async fn replay(&self, r: &ReplayRequest) -> Result<ReplayPlan, String> {
        self.call(self.http.post(format!("{}/replay", self.base)).json(r)).await
    }

    async fn promote(&self, r: &PromoteRequest) -> Result<PromoteAccepted, String> {
        self.call(self.http.post(format!("{}/promote", self.base)).json(r)).await
    }
}

/// An error with its causes (a TLS failure says why only in its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON prints"));
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut http = reqwest::Client::builder();
    if let Some(path) = &cli.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{} is not a PEM CA bundle: {e}", path.display()))?;
        for cert in certs {
            http = http.add_root_certificate(cert);
        }
    }
    let client = Client {
        http: http.build().map_err(|e| format!("cannot set up the HTTP client: {e}"))?,
        base: cli.url.trim_end_matches('/').to_string(),
        token: std::env::var("CONVEYOR_API_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    match cli.command {
        Command::History { app, env, limit } => {
            let deployments = client.history(&HistoryQuery { app, env, limit: Some(limit) }).await?;
            if cli.json {
                print_json(&deployments);
            } else {
                print_history(&deployments);
            }
        }
        Command::Replay { app, to, seq, tag, env, into, dry_run, requested_by } => {
            if [to.is_some(), seq.is_some(), tag.is_some()].iter().filter(|x| **x).count() != 1 {
                return Err("say where to go: --to previous, --seq N or --tag T".into());
            }
            let request = ReplayRequest { app, to, sequence: seq, tag, environment: env, into, requested_by: Some(requested_by), dry_run };
            let plan = client.replay(&request).await?;
            if cli.json {
                print_json(&plan);
                return Ok(());
            }
            let what = format!(
                "{} {}/{} to {} (replay of event {}, stream sequence {})",
                plan.kind.as_str(),
                plan.app,
                plan.environment,
                plan.image,
                plan.of_event,
                plan.of_sequence
            );
            match (plan.diff.as_deref(), plan.event_id.as_deref(), plan.sequence) {
                (Some(""), _, _) => println!("dry run: {what}\nnothing would change: the image is already deployed"),
                (Some(diff), _, _) => println!("dry run: {what}\nwould commit:\n{diff}"),
                (None, event, seq) => println!(
                    "queued: {what} as event {} (stream sequence {})",
                    event.unwrap_or("?"),
                    seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
                ),
            }
        }
        Command::Promote { app, environment, tag, requested_by } => {
            let request = PromoteRequest { app, environment: environment.clone(), tag, requested_by: Some(requested_by) };
            let answer = client.promote(&request).await?;
            if cli.json {
                print_json(&answer);
            } else {
                println!(
                    "queued: promote {} to {environment} as event {} (stream sequence {})",
                    answer.image, answer.event_id, answer.sequence
                );
            }
        }
    }
    Ok(())
}

fn short(s: Option<&str>, n: usize) -> String {
    let s = s.unwrap_or("-");
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}

fn print_history(rows: &[Deployment]) {
    println!(
        "{:<20}  {:<11}  {:<9}  {:<14}  {:<13}  {:<13}  {:>5}  {:<13}  {:<13}  EVENT",
        "DEPLOYED (UTC)", "ENV", "KIND", "TAG", "DIGEST", "SOURCE", "SEQ", "MANIFEST", "TRACE"
    );
    for d in rows {
        let when = d.deployed_at.format(&time_format()).unwrap_or_default();
        println!(
            "{:<20}  {:<11}  {:<9}  {:<14}  {:<13}  {:<13}  {:>5}  {:<13}  {:<13}  {}{}",
            when,
            short(Some(&d.environment), 11),
            d.kind,
            short(Some(&d.tag), 14),
            short(Some(&d.digest), 12),
            short(Some(&d.source_commit), 12),
            d.sequence.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            short(Some(&d.manifest_commit), 12),
            short(d.trace_id.as_deref(), 12),
            d.event_id,
            d.of_event.as_deref().map(|o| format!(" (of {o})")).unwrap_or_default(),
        );
    }
}

fn time_format() -> &'static [time::format_description::BorrowedFormatItem<'static>] {
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")
}

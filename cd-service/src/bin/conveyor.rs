//! `conveyor`: the command line for deploy history, replays (redeploys and rollbacks) and
//! promotions. It talks to a running cd-service over HTTP (`--url`, `CONVEYOR_CD_URL`): tables
//! for people, `--json` for scripts. Promotions and replays send the API token from
//! `CONVEYOR_API_TOKEN` (never a flag, so it stays out of shell history and `ps`). A refused
//! request exits with status 1 and the reason.

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "conveyor", about = "Deploy history, replays and promotions (talks to cd-service)")]
struct Cli {
    /// The running cd-service's HTTP address.
    #[arg(long, env = "CONVEYOR_CD_URL", default_value = "http://127.0.0.1:8090", global = true)]
    url: String,
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

async fn call(req: reqwest::RequestBuilder, url: &str) -> Result<Value, String> {
    let req = match std::env::var("CONVEYOR_API_TOKEN") {
        Ok(token) if !token.is_empty() => req.bearer_auth(token),
        _ => req,
    };
    let resp = req.send().await.map_err(|e| format!("cannot reach cd-service at {url}: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{} ({status})", body["message"].as_str().unwrap_or("no reason given")));
    }
    Ok(body)
}

async fn run(cli: Cli) -> Result<(), String> {
    let base = cli.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::new();
    match cli.command {
        Command::History { app, env, limit } => {
            let mut query = vec![("app", app), ("limit", limit.to_string())];
            if let Some(env) = env {
                query.push(("env", env));
            }
            let body = call(client.get(format!("{base}/history")).query(&query), &base).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&body).expect("JSON prints"));
            } else {
                print_history(&body);
            }
        }
        Command::Replay { app, to, seq, tag, env, into, dry_run, requested_by } => {
            let mut body = json!({ "app": app, "dry_run": dry_run, "requested_by": requested_by });
            match (to, seq, tag) {
                (Some(to), None, None) => body["to"] = json!(to),
                (None, Some(seq), None) => body["sequence"] = json!(seq),
                (None, None, Some(tag)) => body["tag"] = json!(tag),
                _ => return Err("say where to go: --to previous, --seq N or --tag T".into()),
            }
            if let Some(env) = env {
                body["environment"] = json!(env);
            }
            if let Some(into) = into {
                body["into"] = json!(into);
            }
            let plan = call(client.post(format!("{base}/replay")).json(&body), &base).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&plan).expect("JSON prints"));
                return Ok(());
            }
            let what = format!(
                "{} {}/{} to {} (replay of event {}, stream sequence {})",
                plan["kind"].as_str().unwrap_or("?"),
                plan["app"].as_str().unwrap_or("?"),
                plan["environment"].as_str().unwrap_or("?"),
                plan["image"].as_str().unwrap_or("?"),
                plan["of_event"].as_str().unwrap_or("?"),
                plan["of_sequence"]
            );
            match plan["diff"].as_str() {
                Some("") => println!("dry run: {what}\nnothing would change: the image is already deployed"),
                Some(diff) => println!("dry run: {what}\nwould commit:\n{diff}"),
                None => {
                    println!("queued: {what} as event {} (stream sequence {})", plan["event_id"].as_str().unwrap_or("?"), plan["sequence"])
                }
            }
        }
        Command::Promote { app, environment, tag, requested_by } => {
            let body = json!({ "app": app, "environment": environment, "tag": tag, "requested_by": requested_by });
            let answer = call(client.post(format!("{base}/promote")).json(&body), &base).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&answer).expect("JSON prints"));
            } else {
                println!(
                    "queued: promote {} to {environment} as event {} (stream sequence {})",
                    answer["image"].as_str().unwrap_or("?"),
                    answer["event_id"].as_str().unwrap_or("?"),
                    answer["sequence"]
                );
            }
        }
    }
    Ok(())
}

fn short(v: &Value, n: usize) -> String {
    let s = v.as_str().unwrap_or("-");
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}

fn print_history(body: &Value) {
    let rows = body.as_array().cloned().unwrap_or_default();
    println!(
        "{:<20}  {:<11}  {:<9}  {:<14}  {:<13}  {:<13}  {:>5}  {:<13}  {:<13}  EVENT",
        "DEPLOYED (UTC)", "ENV", "KIND", "TAG", "DIGEST", "SOURCE", "SEQ", "MANIFEST", "TRACE"
    );
    for d in rows {
        let when = d["deployed_at"].as_str().unwrap_or("").replace('T', " ");
        println!(
            "{:<20}  {:<11}  {:<9}  {:<14}  {:<13}  {:<13}  {:>5}  {:<13}  {:<13}  {}{}",
            when.get(..19).unwrap_or(&when),
            short(&d["environment"], 11),
            d["kind"].as_str().unwrap_or("?"),
            short(&d["tag"], 14),
            short(&d["digest"], 12),
            short(&d["source_commit"], 12),
            d["sequence"].as_u64().map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            short(&d["manifest_commit"], 12),
            short(&d["trace_id"], 12),
            d["event_id"].as_str().unwrap_or("?"),
            d["of_event"].as_str().map(|o| format!(" (of {o})")).unwrap_or_default(),
        );
    }
}

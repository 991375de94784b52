//! `dev/faults`: runs the fault-injection suite and prints its table; exits 1 unless every
//! scenario ended with nothing lost, nothing duplicated and no crash.

use clap::Parser;
use conveyor_fault_suite::{run, table, Scale, SCENARIOS};

#[derive(Parser)]
#[command(about = "Fault-injection suite: bursts against the real services while processes die, NATS restarts and the registry goes away")]
struct Args {
    /// `full` (500 pushes, 500 events, 10,000 bad webhooks) or `bounded` (what CI runs).
    #[arg(long, default_value = "full", value_parser = ["full", "bounded"])]
    scale: String,
    /// Seed of the random kill times (printed, so a run can be repeated).
    #[arg(long, env = "CONVEYOR_FAULTS_SEED")]
    seed: Option<u64>,
    /// Run only these scenarios (repeatable).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let scale = if args.scale == "full" { Scale::full() } else { Scale::bounded() };
    let seed = args.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("[faults] {} scale, seed {seed}", scale.name);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rows = runtime.block_on(async {
        tokio::select! {
            rows = run(&scale, seed, &args.only) => Some(rows),
            signal = stopped() => {
                eprintln!("[faults] {signal}: stopping the services the suite started");
                None
            }
        }
    });
    // Dropping the runtime drops every task still holding a scenario's world, and with it the
    // ci-service, cd-service, NATS and registry processes it started.
    drop(runtime);
    let Some(rows) = rows else { std::process::exit(130) };
    println!("\nfault-injection suite: {} scale, seed {seed}\n", scale.name);
    print!("{}", table(&rows));
    let clean = rows.iter().all(|r| r.clean());
    println!("\n{}", if clean { "zero lost, zero duplicated, zero crashes" } else { "NOT CLEAN: see the notes above" });
    std::process::exit(if clean { 0 } else { 1 });
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

//! The cost of tracing on ci-service's webhook throughput (issue 6: under 5%). The same closed
//! loop of signed GitHub push webhooks as ci-webhooks, against the release binary in three
//! settings, interleaved round by round so drift hits all alike:
//!   off       OTEL_SDK_DISABLED=true: no OpenTelemetry at all (the baseline);
//!   ids only  no endpoint: spans and trace ids are made (logs, records), nothing is sent;
//!   exported  every span sent over OTLP/HTTP (the SDK's default batching) to a receiver in
//!             this process, which keeps the bodies and decodes and counts the spans afterwards,
//!             so the figure includes real export work and shows none was dropped.
//! Each setting's figure is the median of its rounds; the order rotates from round to round. The
//! overhead is the median over rounds of each round's own ratio to "off" (the settings of one
//! round run within a minute of each other, so a slow spell of a shared machine hits them alike).
//!
//! Then the same three settings under `valgrind --tool=callgrind`, which counts the instructions
//! ci-service executes (every thread, the exporter's included): repeatable whatever else the
//! machine does. Instructions per webhook = (count after 2,500 webhooks − count after 500) / 2,000,
//! so start-up and shutdown cancel out.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use conveyor_benches::{
    cpu_time, env_num, verdict,
    webhooks::{closed_loop, send, start_ci, start_ci_under, webhooks},
};
use conveyor_testkit::{otlp::OtlpReceiver, TestNats};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    IdsOnly,
    Exported,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off (OTEL_SDK_DISABLED=true)",
            Mode::IdsOnly => "ids only (no endpoint)",
            Mode::Exported => "exported over OTLP/HTTP",
        }
    }
}

/// The service's environment for a setting.
fn env_of(mode: Mode, receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    match mode {
        Mode::Off => vec![("OTEL_SDK_DISABLED", "true".to_string())],
        Mode::IdsOnly => vec![],
        // The SDK's default batching (queue 2048, batches of 512): a 64k queue with 2048-span
        // batches measured slower (more memory churn) and is no safer; the count at the end
        // shows whether every span arrived.
        Mode::Exported => {
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_base.clone()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string())]
        }
    }
}

/// SIGTERM, then waits for the process to exit (it flushes its spans; callgrind writes its count).
async fn stop(ci: &conveyor_benches::webhooks::Ci) {
    let pid = ci.child.0.id();
    conveyor_testkit::signal(pid, conveyor_testkit::Signal::TERM);
    conveyor_testkit::wait_until("ci-service to exit", Duration::from_secs(120), || async move {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    })
    .await;
}

/// The total instruction count (`summary:` line) of a callgrind output file.
fn total_instructions(path: &std::path::Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no summary line in {}", path.display()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let connections = env_num("BENCH_CONNECTIONS", 32);
    let per_round = env_num("BENCH_TRACING_WEBHOOKS", 20_000);
    let rounds = env_num("BENCH_TRACING_ROUNDS", 5);
    let bin = PathBuf::from(std::env::var("CONVEYOR_BIN_DIR").context("CONVEYOR_BIN_DIR: run benches/run")?);
    let dir = tempfile::tempdir()?;
    println!("ci-tracing: webhooks accepted per second with tracing off, ids only, and exported ({rounds} rounds of {per_round}, {connections} connections)");

    let nats = TestNats::start().await;
    let receiver = OtlpReceiver::start().await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).build()?;
    // BENCH_TRACING_MODES=off,ids,exported (all by default): a subset, e.g. to profile one.
    let wanted = std::env::var("BENCH_TRACING_MODES").unwrap_or_else(|_| "off,ids,exported".into());
    let modes: Vec<Mode> = [("off", Mode::Off), ("ids", Mode::IdsOnly), ("exported", Mode::Exported)]
        .into_iter()
        .filter(|(n, _)| wanted.split(',').any(|w| w.trim() == *n))
        .map(|(_, m)| m)
        .collect();
    ensure!(!modes.is_empty(), "BENCH_TRACING_MODES names none of off, ids, exported");
    let mut results: Vec<(Mode, Vec<(f64, f64)>)> = modes.iter().map(|m| (*m, Vec::new())).collect();
    let mut offset = 0;
    let mut exported_sent = 0;
    for round in 0..rounds {
        // Each round starts with another setting, so no setting always runs first or last.
        let n = results.len();
        for k in 0..n {
            let (mode, figures) = &mut results[(round + k) % n];
            let env = env_of(*mode, &receiver);
            let ci = start_ci(&bin, &nats, "127.0.0.1:5000", 0, dir.path(), &env).await?;
            let url = format!("{}/hooks/push", ci.url);
            for (body, sig) in webhooks(200, 50_000_000 + offset) {
                ensure!(send(&client, &url, &body, &sig).await? == 202, "warm-up webhook refused");
            }
            offset += 200;
            let bodies = Arc::new(webhooks(per_round, offset));
            offset += per_round;
            let cpu_before = cpu_time(ci.child.0.id()).unwrap_or_default();
            let (lat, refused, elapsed) = closed_loop(&client, &url, bodies, connections).await?;
            let cpu = cpu_time(ci.child.0.id()).unwrap_or_default().saturating_sub(cpu_before);
            ensure!(refused == 0, "{refused} webhooks refused in mode {}", mode.name());
            let rate = lat.len() as f64 / elapsed.as_secs_f64();
            let cpu_per = cpu.as_secs_f64() * 1e6 / lat.len() as f64;
            println!("  round {}: {:<28} {rate:>8.0} req/s, ci-service CPU {cpu_per:.0} µs per webhook", round + 1, mode.name());
            figures.push((rate, cpu_per));
            if *mode == Mode::Exported {
                exported_sent += per_round + 200;
            }
            // SIGTERM: the service flushes what it buffered before it exits.
            stop(&ci).await;
            drop(ci);
        }
    }
    let spans = receiver.spans();
    let received = spans.iter().filter(|s| s.name == "receive").count();
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).filter(|n| *n != "receive").collect();
    names.sort_unstable();
    names.dedup();
    if !names.is_empty() {
        println!("  other spans exported: {names:?}");
    }

    // Instructions per webhook, under callgrind (BENCH_TRACING_CALLGRIND=0 skips it).
    let mut instructions: Vec<(Mode, f64)> = Vec::new();
    if std::env::var("BENCH_TRACING_CALLGRIND").as_deref() != Ok("0") {
        for (mode, _) in &results {
            let mut counts = Vec::new();
            for n in [500usize, 2500] {
                let out = dir.path().join(format!("callgrind-{}-{n}.out", *mode as u8));
                let wrapper =
                    vec!["valgrind".to_string(), "--tool=callgrind".to_string(), format!("--callgrind-out-file={}", out.display())];
                let ci = start_ci_under(&wrapper, &bin, &nats, "127.0.0.1:5000", 0, dir.path(), &env_of(*mode, &receiver)).await?;
                let url = format!("{}/hooks/push", ci.url);
                let bodies = Arc::new(webhooks(n, 90_000_000 + offset));
                offset += n;
                let (_, refused, _) = closed_loop(&client, &url, bodies, 4).await?;
                ensure!(refused == 0, "webhooks refused under callgrind");
                stop(&ci).await;
                drop(ci);
                counts.push(total_instructions(&out)?);
                if let Ok(keep) = std::env::var("BENCH_TRACING_KEEP") {
                    std::fs::copy(&out, std::path::Path::new(&keep).join(out.file_name().expect("a file name")))?;
                }
            }
            let per = (counts[1] - counts[0]) as f64 / 2000.0;
            println!("  callgrind: {:<28} {per:>10.0} instructions per webhook", mode.name());
            instructions.push((*mode, per));
        }
    }

    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rates = |f: &[(f64, f64)]| median(f.iter().map(|x| x.0).collect());
    let cpus = |f: &[(f64, f64)]| median(f.iter().map(|x| x.1).collect());
    let base = results.iter().find(|(m, _)| *m == Mode::Off).map(|(_, f)| rates(f)).unwrap_or(f64::NAN);
    let off: Option<Vec<f64>> = results.iter().find(|(m, _)| *m == Mode::Off).map(|(_, f)| f.iter().map(|x| x.0).collect());
    println!();
    println!("| tracing | webhooks accepted per second (median of {rounds}) | vs off (median of per-round ratios) | ci-service CPU per webhook | goal |");
    println!("|---|---|---|---|---|");
    for (mode, figures) in &results {
        let m = rates(figures);
        let overhead = match &off {
            Some(off) => 100.0 - median(figures.iter().zip(off).map(|(x, o)| x.0 / o * 100.0).collect()),
            None => (base - m) / base * 100.0,
        };
        let goal = match mode {
            Mode::Off => "(baseline)".to_string(),
            _ => format!("overhead < 5%: {}", verdict(overhead < 5.0)),
        };
        println!("| {} | {m:.0} req/s | {:+.1}% | {:.0} µs | {goal} |", mode.name(), -overhead, cpus(figures));
    }
    println!(
        "| spans received from the exported runs | {received} `receive` spans for {exported_sent} webhooks | | all exported: {} |",
        verdict(received == exported_sent)
    );
    if let Some((_, base)) = instructions.iter().find(|(m, _)| *m == Mode::Off).copied() {
        println!();
        println!("| tracing | ci-service instructions per webhook (callgrind, all threads) | vs off | goal |");
        println!("|---|---|---|---|");
        for (mode, per) in &instructions {
            let overhead = (per - base) / base * 100.0;
            let goal = match mode {
                Mode::Off => "(baseline)".to_string(),
                _ => format!("overhead < 5%: {}", verdict(overhead < 5.0)),
            };
            println!("| {} | {per:.0} | {overhead:+.1}% | {goal} |", mode.name());
        }
    }
    Ok(())
}

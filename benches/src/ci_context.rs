//! Build-context upload, ci-service against the `docker build` CLI (issue 3: within 1.2x of the
//! CLI's time for the same context). A generated repository of 20,000 files and 200 MB (random
//! bytes, so nothing compresses) is built by both through the same classic builder of the local
//! dockerd, alternating, after one warm-up each; the Dockerfile copies one file, so the time is
//! the context: walk, `.dockerignore`, tar, upload, and the engine reading it.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::ensure;
use ci_service::build::docker::{build_image, BuildSpec, LogSink};
use conveyor_benches::{env_num, verdict};

struct NoLog;

impl LogSink for NoLog {
    fn line(&self, _: &str) {}
}

/// `files` files of about `bytes_per_file` random bytes in 100 directories.
fn generate(root: &Path, files: usize, bytes_per_file: usize) -> anyhow::Result<u64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("src/d{:03}", i % 100));
        std::fs::create_dir_all(&dir)?;
        let mut data = Vec::with_capacity(bytes_per_file);
        while data.len() < bytes_per_file {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        total += data.len() as u64;
        std::fs::write(dir.join(format!("f{i:05}.bin")), data)?;
    }
    std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /Dockerfile\n")?;
    std::fs::write(root.join(".dockerignore"), "*.tmp\n")?;
    Ok(total)
}

fn cli(dir: &Path, tag: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = Command::new("docker").args(["build", "-q", "-t", tag]).arg(dir).env("DOCKER_BUILDKIT", "0").output()?;
    ensure!(out.status.success(), "docker build failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(start.elapsed())
}

async fn conveyor(docker: &bollard::Docker, dir: &Path, tag: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let spec = BuildSpec { context_dir: dir.to_path_buf(), dockerfile: "Dockerfile", image: tag, build_args: &[], labels: HashMap::new() };
    build_image(docker, spec, &NoLog).await?;
    Ok(start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let files = env_num("BENCH_CONTEXT_FILES", 20_000);
    let megabytes = env_num("BENCH_CONTEXT_MB", 200);
    let rounds = env_num("BENCH_CONTEXT_ROUNDS", 3);
    let dir = tempfile::tempdir()?;
    let bytes = generate(dir.path(), files, megabytes * 1024 * 1024 / files)?;
    println!("ci-context: {files} files, {:.0} MB, classic builder, {rounds} alternating rounds after a warm-up", bytes as f64 / 1048576.0);
    let docker = bollard::Docker::connect_with_local_defaults()?.negotiate_version().await?;
    let (tag_cli, tag_conveyor) = ("conveyor-bench/context:cli", "conveyor-bench/context:conveyor");
    cli(dir.path(), tag_cli)?;
    conveyor(&docker, dir.path(), tag_conveyor).await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(cli(dir.path(), tag_cli)?);
        b.push(conveyor(&docker, dir.path(), tag_conveyor).await?);
    }
    let _ = Command::new("docker").args(["rmi", "-f", tag_cli, tag_conveyor]).output();
    let (cli_t, conv_t) = (median(a.clone()), median(b.clone()));
    let ratio = conv_t.as_secs_f64() / cli_t.as_secs_f64();
    let list = |v: &[Duration]| v.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", ");
    println!();
    println!("| measure | docker build CLI | ci-service | floor |");
    println!("|---|---|---|---|");
    println!(
        "| context upload + build, median of {rounds} | {:.2} s ({} s) | {:.2} s ({} s) | within 1.2x of the CLI: {ratio:.2}x {} |",
        cli_t.as_secs_f64(),
        list(&a),
        conv_t.as_secs_f64(),
        list(&b),
        verdict(ratio <= 1.2)
    );
    Ok(())
}

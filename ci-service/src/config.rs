//! ci-service configuration: every setting is a flag with a `CONVEYOR_*` environment variable,
//! and the defaults work on a developer machine (`dev/setup` + `dev/up`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "ci-service", about = "Conveyor CI: git push -> docker build -> test -> registry push -> image-built event")]
pub struct Config {
    /// Address the HTTP API and webhook endpoint listen on.
    #[arg(long, env = "CONVEYOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// NATS server URL (JetStream must be enabled).
    #[arg(long, env = "CONVEYOR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Registry (host[:port][/path]) images are pushed to, as `<registry>/<app>:<short-sha>`.
    #[arg(long, env = "CONVEYOR_REGISTRY", default_value = "127.0.0.1:5000")]
    pub registry: String,

    /// Directory for per-build checkouts; each build's directory is removed when it ends.
    #[arg(long, env = "CONVEYOR_WORKDIR", default_value = "/tmp/conveyor-ci")]
    pub workdir: PathBuf,

    /// Command run with `/bin/sh -c` inside the built image; a non-zero exit fails the build.
    #[arg(long, env = "CONVEYOR_TEST_COMMAND", default_value = "python3 -m pytest -q -p no:cacheprovider")]
    pub test_command: String,

    /// Dockerfile path inside the repository.
    #[arg(long, env = "CONVEYOR_DOCKERFILE", default_value = "Dockerfile")]
    pub dockerfile: String,

    /// Build arguments passed to every build, `KEY=VALUE` (repeat, or comma-separate in the env var).
    #[arg(long = "build-arg", env = "CONVEYOR_BUILD_ARGS", value_delimiter = ',', value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,

    /// Builds run at the same time.
    #[arg(long, env = "CONVEYOR_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,

    /// Queued builds beyond this are refused with 503 instead of piling up.
    #[arg(long, env = "CONVEYOR_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Limit for the image build, in seconds.
    #[arg(long, env = "CONVEYOR_BUILD_TIMEOUT_SECS", default_value_t = 1800)]
    pub build_timeout_secs: u64,

    /// Limit for the test run, in seconds.
    #[arg(long, env = "CONVEYOR_TEST_TIMEOUT_SECS", default_value_t = 600)]
    pub test_timeout_secs: u64,

    /// Limit for the registry push, in seconds.
    #[arg(long, env = "CONVEYOR_PUSH_TIMEOUT_SECS", default_value_t = 600)]
    pub push_timeout_secs: u64,

    /// Events kept in the stream (older ones are dropped and can no longer be replayed).
    #[arg(long, env = "CONVEYOR_STREAM_MAX_MESSAGES", default_value_t = 100_000)]
    pub stream_max_messages: i64,
}

impl Config {
    pub fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build_timeout_secs)
    }
    pub fn test_timeout(&self) -> Duration {
        Duration::from_secs(self.test_timeout_secs)
    }
    pub fn push_timeout(&self) -> Duration {
        Duration::from_secs(self.push_timeout_secs)
    }

    /// A configuration with the defaults, for embedding the service (tests, the demo).
    pub fn defaults() -> Self {
        Self::parse_from(["ci-service"])
    }
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("build arg {s:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_parse_from_flags() {
        let c = Config::parse_from(["ci-service", "--build-arg", "BASE_IMAGE=x:1", "--build-arg", "A=b=c"]);
        assert_eq!(c.build_args, vec![("BASE_IMAGE".into(), "x:1".into()), ("A".into(), "b=c".into())]);
        assert!(Config::try_parse_from(["ci-service", "--build-arg", "novalue"]).is_err());
    }
}

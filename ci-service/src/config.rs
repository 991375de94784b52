//! ci-service configuration: every setting is a flag with a `CONVEYOR_*` environment variable,
//! and the defaults work on a developer machine (`dev/setup` + `dev/up`). Secrets come from
//! flags, env or files and are never printed (`Debug` redacts them).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::secrets::Secret;

#[derive(Debug, Clone, Parser)]
#[command(name = "ci-service", about = "Conveyor CI: git push -> docker build -> test -> registry push -> image-built event")]
pub struct Config {
    /// Address the HTTP API and webhook endpoint listen on.
    #[arg(long, env = "CONVEYOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// NATS server and this service's credentials.
    #[command(flatten)]
    pub nats: conveyor_proto::connect::NatsArgs,

    /// Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`) that signs every
    /// image-built event; cd-service applies only events that verify against its public half.
    #[arg(long, env = "CONVEYOR_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Name of this replica in build records and logs (default: host name and process id).
    #[arg(long, env = "CONVEYOR_REPLICA")]
    pub replica: Option<String>,

    /// Webhook secret accepted for every repository (repeat, or comma-separate in the env var,
    /// to accept an old and a new secret while rotating).
    #[arg(long = "webhook-secret", env = "CONVEYOR_WEBHOOK_SECRET", value_delimiter = ',', hide_env_values = true)]
    pub webhook_secrets: Vec<Secret>,

    /// YAML file with webhook secrets per repository (`repos: {owner/name: [new, old]}`) and a `default` list.
    #[arg(long, env = "CONVEYOR_WEBHOOK_SECRETS_FILE")]
    pub webhook_secrets_file: Option<PathBuf>,

    /// Accept unsigned webhooks for repositories that have no secret (logs a warning at start).
    #[arg(long, env = "CONVEYOR_ALLOW_UNSIGNED_WEBHOOKS")]
    pub allow_unsigned_webhooks: bool,

    /// Fetch local paths and `file://` URLs (bare repositories on this host, the post-receive
    /// hook); off, only https, http, ssh and git URLs are accepted.
    #[arg(long, env = "CONVEYOR_ALLOW_LOCAL_REPOS")]
    pub allow_local_repos: bool,

    /// Token that `POST /builds`, cancel and retry require (`Authorization: Bearer <token>`);
    /// without it they are open to whoever reaches the API.
    #[arg(long, env = "CONVEYOR_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// Registry (host[:port][/path]) images are pushed to, as `<registry>/<image>:<tag>`.
    #[arg(long, env = "CONVEYOR_REGISTRY", default_value = "127.0.0.1:5000")]
    pub registry: String,

    /// Registry user name, when the registry needs a login.
    #[arg(long, env = "CONVEYOR_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,

    /// Registry password or token (prefer the file variant).
    #[arg(long, env = "CONVEYOR_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<Secret>,

    /// File holding the registry password or token.
    #[arg(long, env = "CONVEYOR_REGISTRY_PASSWORD_FILE")]
    pub registry_password_file: Option<PathBuf>,

    /// Directory for per-build checkouts; each build's directory is removed when it ends.
    #[arg(long, env = "CONVEYOR_WORKDIR", default_value = "/tmp/conveyor-ci")]
    pub workdir: PathBuf,

    /// Default test command, run with `/bin/sh -c` inside the built image (`.conveyor.yml` `test:` overrides).
    #[arg(long, env = "CONVEYOR_TEST_COMMAND", default_value = "python3 -m pytest -q -p no:cacheprovider")]
    pub test_command: String,

    /// Default Dockerfile path inside the build context.
    #[arg(long, env = "CONVEYOR_DOCKERFILE", default_value = "Dockerfile")]
    pub dockerfile: String,

    /// Build arguments passed to every build, `KEY=VALUE` (repeat, or comma-separate in the env var).
    #[arg(long = "build-arg", env = "CONVEYOR_BUILD_ARGS", value_delimiter = ',', value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,

    /// Service build args a pull request from a fork still gets, by name (e.g. `BASE_IMAGE`);
    /// it gets none of the others.
    #[arg(long = "fork-build-arg", env = "CONVEYOR_FORK_BUILD_ARGS", value_delimiter = ',')]
    pub fork_build_args: Vec<String>,

    /// CA bundle (PEM) for fetching app repositories over https, instead of the system's.
    #[arg(long, env = "CONVEYOR_GIT_CA_FILE")]
    pub git_ca_file: Option<PathBuf>,

    /// Where users open a build: the console's address (`<url>/#/builds/<id>` is the commit
    /// status's link). Without it the link is the API's `<--public-url>/builds/<id>`.
    #[arg(long, env = "CONVEYOR_CONSOLE_URL")]
    pub console_url: Option<String>,

    /// ci-service's API as users reach it (default `http://<--listen>`).
    #[arg(long, env = "CONVEYOR_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The commit status's context (name) for branch and tag builds; pull requests get `<context>/pr`.
    #[arg(long, env = "CONVEYOR_STATUS_CONTEXT", default_value = "conveyor/build")]
    pub status_context: String,

    /// Tries for one commit status (1 s, 2 s, 4 s... apart) before it is given up and counted.
    #[arg(long, env = "CONVEYOR_STATUS_ATTEMPTS", default_value_t = 6)]
    pub status_attempts: u32,

    /// Pushed images kept on the local engine per app (the newest; older ones are removed once
    /// their build ended). They serve as layer cache and for `retry`.
    #[arg(long, env = "CONVEYOR_KEEP_IMAGES", default_value_t = 3)]
    pub keep_images: usize,

    /// Builds this replica runs at the same time; 0 makes an API-only replica that only queues.
    #[arg(long, env = "CONVEYOR_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub workers: u16,

    /// A newer push to a branch cancels its older queued or running builds (never once their image push started).
    #[arg(long, env = "CONVEYOR_CANCEL_SUPERSEDED", default_value_t = true, action = clap::ArgAction::Set)]
    pub cancel_superseded: bool,

    /// The same commit of the same ref pushed again within this window starts no second build.
    #[arg(long, env = "CONVEYOR_DEDUP_WINDOW_SECS", default_value_t = 600)]
    pub dedup_window_secs: u64,

    /// A job whose worker stops reporting progress for this long is handed to another replica.
    #[arg(long, env = "CONVEYOR_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,

    /// How often a job is handed out at most (a job that keeps killing its worker stops there).
    #[arg(long, env = "CONVEYOR_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: i64,

    /// Default limit for the image build, in seconds.
    #[arg(long, env = "CONVEYOR_BUILD_TIMEOUT_SECS", default_value_t = 1800)]
    pub build_timeout_secs: u64,

    /// Default limit for the test run, in seconds.
    #[arg(long, env = "CONVEYOR_TEST_TIMEOUT_SECS", default_value_t = 600)]
    pub test_timeout_secs: u64,

    /// Image of the smoke test's probe: it joins the app's network namespace (the app has no
    /// network) and makes the health and check requests with `/bin/busybox wget`.
    #[arg(long, env = "CONVEYOR_PROBE_IMAGE", default_value = "conveyor/busybox:latest")]
    pub probe_image: String,

    /// Default limit for the smoke test, in seconds.
    #[arg(long, env = "CONVEYOR_SMOKE_TIMEOUT_SECS", default_value_t = 120)]
    pub smoke_timeout_secs: u64,

    /// Default limit for one registry push attempt, in seconds.
    #[arg(long, env = "CONVEYOR_PUSH_TIMEOUT_SECS", default_value_t = 600)]
    pub push_timeout_secs: u64,

    /// Tries for the registry push and the event publish (waiting 1 s, 2 s, 4 s... between): the
    /// default 6 rides out about 30 s of a registry or NATS being away.
    #[arg(long, env = "CONVEYOR_STEP_ATTEMPTS", default_value_t = 6)]
    pub step_attempts: u32,

    /// Events kept in the stream (older ones are dropped and can no longer be replayed).
    #[arg(long, env = "CONVEYOR_STREAM_MAX_MESSAGES", default_value_t = 100_000)]
    pub stream_max_messages: i64,

    /// Days events are kept in the stream (0: no age limit); older ones can no longer be replayed.
    #[arg(long, env = "CONVEYOR_STREAM_MAX_AGE_DAYS", default_value_t = 0)]
    pub stream_max_age_days: u64,

    /// Days build records and logs are kept.
    #[arg(long, env = "CONVEYOR_RECORDS_MAX_AGE_DAYS", default_value_t = 30)]
    pub records_max_age_days: u64,

    /// Bytes of build logs kept over all builds (oldest dropped first).
    #[arg(long, env = "CONVEYOR_LOGS_MAX_BYTES", default_value_t = 1 << 30)]
    pub logs_max_bytes: i64,
}

impl Config {
    pub fn push_timeout(&self) -> Duration {
        Duration::from_secs(self.push_timeout_secs)
    }

    pub fn stream_max_age(&self) -> Duration {
        Duration::from_secs(self.stream_max_age_days * 24 * 3600)
    }

    pub fn records_max_age(&self) -> Duration {
        Duration::from_secs(self.records_max_age_days.max(1) * 24 * 3600)
    }

    /// A configuration with the defaults, for embedding the service (tests, the demo). The
    /// environment is not read, so it is the same on every machine.
    pub fn defaults() -> Self {
        conveyor_proto::connect::parse_hermetic(&["ci-service"])
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

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::parse_from(["ci-service", "--webhook-secret", "hook-secret-1", "--registry-password", "reg-pass-1"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hook-secret-1") && !shown.contains("reg-pass-1"), "{shown}");
        assert!(c.cancel_superseded);
        assert!(!Config::parse_from(["ci-service", "--cancel-superseded", "false"]).cancel_superseded);
    }
}

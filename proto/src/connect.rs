//! How both services connect to NATS: the server URL and this service's own credentials (user
//! and password, an nkey seed, or a `.creds` file), as flags with `CONVEYOR_NATS_*` variables.
//! A refusal is named for what it is: wrong credentials at connect, or a permission the
//! credentials lack (logged with the subject NATS refused, and kept for the start-up error).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::Secret;

/// NATS connection settings (`#[command(flatten)]` into a service's config).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream must be enabled); several servers of a cluster comma-separated
    /// (`nats://a:4222,nats://b:4222,nats://c:4222`): the client connects to one that is up and
    /// moves to another when it goes away.
    #[arg(long = "nats-url", env = "CONVEYOR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,

    /// Replicas of every stream and key-value bucket this service creates (3 on a three-node
    /// JetStream cluster: a node may be lost without losing anything). An existing stream with
    /// another count is refused at start, never silently used.
    #[arg(long = "stream-replicas", env = "CONVEYOR_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,

    /// NATS user name (with --nats-password or --nats-password-file).
    #[arg(long = "nats-user", env = "CONVEYOR_NATS_USER")]
    pub user: Option<String>,

    /// NATS password (prefer the file variant).
    #[arg(long = "nats-password", env = "CONVEYOR_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,

    /// File holding the NATS password (e.g. a mounted Kubernetes Secret).
    #[arg(long = "nats-password-file", env = "CONVEYOR_NATS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// File holding this service's nkey seed (`SU...`, as `nk -gen user` writes it).
    #[arg(long = "nats-nkey-file", env = "CONVEYOR_NATS_NKEY_FILE")]
    pub nkey_file: Option<PathBuf>,

    /// A NATS `.creds` file (JWT and nkey seed, for servers run in operator mode).
    #[arg(long = "nats-creds", env = "CONVEYOR_NATS_CREDS")]
    pub creds: Option<PathBuf>,
}

impl NatsArgs {
    /// Settings for `url` without credentials.
    pub fn anonymous(url: &str) -> Self {
        Self { url: url.to_string(), stream_replicas: 1, ..Default::default() }
    }

    /// Settings for `url` with a user and password.
    pub fn user(url: &str, user: &str, password: &str) -> Self {
        Self {
            url: url.to_string(),
            user: Some(user.into()),
            password: Some(Secret::new(password)),
            stream_replicas: 1,
            ..Default::default()
        }
    }

    /// The servers of `url`, one per comma-separated entry.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }

    /// True when some credentials are configured.
    pub fn has_credentials(&self) -> bool {
        self.user.is_some() || self.nkey_file.is_some() || self.creds.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("NATS at {url} refused the credentials ({what}): check --nats-user / --nats-password-file / --nats-nkey-file / --nats-creds")]
    Refused { url: String, what: String },
    #[error("cannot connect to NATS at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("no answer from NATS at {url} within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("cannot read {what} {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("--nats-password or --nats-password-file needs --nats-user")]
    PasswordWithoutUser,
    #[error("--nats-user needs --nats-password or --nats-password-file")]
    UserWithoutPassword,
}

/// What NATS refused on a connection, kept so that a failing request can say why.
#[derive(Debug, Default)]
pub struct Refusals {
    last: Mutex<Option<String>>,
}

impl Refusals {
    /// The last permission violation NATS reported, e.g. `Permissions Violation for Publish to "x"`.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, what: String) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    /// ` (NATS said: ...)` when NATS refused something, for appending to an error.
    pub fn suffix(&self) -> String {
        match self.last() {
            Some(what) => format!(" (NATS said: {what}; the credentials lack this permission)"),
            None => String::new(),
        }
    }
}

/// A connected client and what its server refused so far.
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: async_nats::Client,
    pub refusals: Arc<Refusals>,
}

fn read(what: &'static str, path: &PathBuf) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|source| ConnectError::File { what, path: path.clone(), source })
}

async fn options(args: &NatsArgs, name: &str, refusals: Arc<Refusals>) -> Result<async_nats::ConnectOptions, ConnectError> {
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.expose().to_string()),
        (None, Some(path)) => Some(read("the NATS password file", path)?),
        (None, None) => None,
    };
    let mut opts = async_nats::ConnectOptions::new().name(name);
    match (&args.user, password) {
        (Some(user), Some(password)) => opts = opts.user_and_password(user.clone(), password),
        (Some(_), None) => return Err(ConnectError::UserWithoutPassword),
        (None, Some(_)) => return Err(ConnectError::PasswordWithoutUser),
        (None, None) => {}
    }
    if let Some(path) = &args.nkey_file {
        opts = opts.nkey(read("the NATS nkey seed file", path)?);
    }
    if let Some(path) = &args.creds {
        opts = opts.credentials_file(path).await.map_err(|source| ConnectError::File {
            what: "the NATS creds file",
            path: path.clone(),
            source,
        })?;
    }
    let client = name.to_string();
    Ok(opts.event_callback(move |event| {
        let (refusals, client) = (refusals.clone(), client.clone());
        async move {
            match event {
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                    tracing::error!(client, "NATS refused this client's credentials (authorization violation)");
                }
                async_nats::Event::ServerError(async_nats::ServerError::Other(what))
                    if what.to_ascii_lowercase().contains("permission") =>
                {
                    tracing::error!(client, refused = %what, "NATS denied a permission these credentials lack");
                    refusals.note(what);
                }
                other => tracing::debug!(client, event = %other, "NATS connection event"),
            }
        }
    }))
}

/// Connects as `name`, retrying while the server is not up yet (within `limit`); wrong
/// credentials fail at once, named as such.
pub async fn connect(args: &NatsArgs, name: &str, limit: Duration) -> Result<Connection, ConnectError> {
    use async_nats::ConnectErrorKind as Kind;
    let refusals = Arc::new(Refusals::default());
    let started = Instant::now();
    loop {
        let opts = options(args, name, refusals.clone()).await?;
        let attempt = tokio::time::timeout(Duration::from_secs(5), opts.connect(args.servers().as_slice())).await;
        let message = match attempt {
            Ok(Ok(client)) => return Ok(Connection { client, refusals }),
            Ok(Err(e)) if matches!(e.kind(), Kind::AuthorizationViolation | Kind::Authentication) => {
                let what = if args.has_credentials() { e.to_string() } else { format!("{e}: this server needs credentials") };
                return Err(ConnectError::Refused { url: args.url.clone(), what });
            }
            Ok(Err(e)) if matches!(e.kind(), Kind::ServerParse | Kind::Tls) => {
                return Err(ConnectError::Unreachable { url: args.url.clone(), message: e.to_string() })
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        if started.elapsed() >= limit {
            tracing::warn!(url = %args.url, error = %message, "NATS did not answer");
            return Err(ConnectError::Timeout { url: args.url.clone(), secs: limit.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Parses a service's flags from `args` alone, never from the environment: the configuration
/// tests and embedders start from (`Config::defaults()`), the same on every machine whatever
/// `CONVEYOR_*` variables are set.
pub fn parse_hermetic<T: clap::Parser>(args: &[&str]) -> T {
    use clap::builder::Resettable;
    let command = T::command().mut_args(|a| a.env(Resettable::Reset));
    let matches = command.try_get_matches_from(args).unwrap_or_else(|e| e.exit());
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod hermetic_tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[arg(long, env = "CONVEYOR_HERMETIC_TEST_VALUE", default_value = "default")]
        value: String,
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn the_environment_is_not_read() {
        // Only this test reads this variable, so setting it cannot disturb another test.
        unsafe { std::env::set_var("CONVEYOR_HERMETIC_TEST_VALUE", "from-env") };
        let f: Flags = parse_hermetic(&["x"]);
        assert_eq!((f.value.as_str(), f.nats.url.as_str()), ("default", "nats://127.0.0.1:4222"));
        let f: Flags = parse_hermetic(&["x", "--value", "flag"]);
        assert_eq!(f.value, "flag");
        use clap::Parser;
        assert_eq!(Flags::parse_from(["x"]).value, "from-env", "clap's own parse reads it");
    }
}

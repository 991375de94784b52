//! The pipeline definition an app repository may carry (`.conveyor.yml` at its root): image
//! name, Dockerfile and context, build args, test command, branches that build, timeouts and
//! a smoke test. Absent means the service's defaults; invalid means a build failure naming the
//! problem. It only reads and checks the file; the build runs elsewhere.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::Config;

pub const FILE_NAME: &str = ".conveyor.yml";
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// `.conveyor.yml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Image name under the registry (default: the app name), e.g. `team/web`.
    pub image: Option<String>,
    /// Dockerfile path, relative to the build context (default from the service).
    pub dockerfile: Option<String>,
    /// Build context directory, relative to the repository root (default `.`).
    pub context: Option<String>,
    /// Build args, merged over the service's.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Test command, run with `/bin/sh -c` in the built image (default from the service).
    pub test: Option<String>,
    /// Glob patterns of the branches that build (default: every branch). Tags always build.
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    pub smoke: Option<SmokeSpec>,
}

/// Step limits in seconds; unset ones come from the service.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub build: Option<u64>,
    pub test: Option<u64>,
    pub smoke: Option<u64>,
    pub push: Option<u64>,
}

/// The smoke test: run the image as a service, wait for its health endpoint, run the checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeSpec {
    /// Command (with `/bin/sh -c`) instead of the image's own; it must listen on `$PORT`.
    #[serde(default)]
    pub command: Option<String>,
    /// Health endpoint polled until it answers 2xx.
    #[serde(default = "default_health")]
    pub health: String,
    /// Environment of the container, besides `PORT`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

fn default_health() -> String {
    "/healthz".into()
}

/// One HTTP check against the running app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub path: String,
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text the body must contain.
    #[serde(default)]
    pub contains: Option<String>,
}

fn default_status() -> u16 {
    200
}

/// The pipeline of one build: the file resolved against the service defaults.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Image name under the registry.
    pub image_name: String,
    pub dockerfile: String,
    /// Context directory relative to the checkout.
    pub context: String,
    pub build_args: Vec<(String, String)>,
    pub test_command: String,
    pub branches: Option<globset::GlobSet>,
    pub build_timeout: Duration,
    pub test_timeout: Duration,
    pub smoke_timeout: Duration,
    pub push_timeout: Duration,
    pub smoke: Option<SmokeSpec>,
    /// Whether the repository had a `.conveyor.yml`.
    pub from_file: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read {FILE_NAME}: {0}")]
    Read(std::io::Error),
    #[error("invalid {FILE_NAME}: {0}")]
    Parse(String),
    #[error("invalid {FILE_NAME}: {field}: {message}")]
    Field { field: &'static str, message: String },
}

fn field(field: &'static str, message: impl Into<String>) -> PipelineError {
    PipelineError::Field { field, message: message.into() }
}

/// A `.conveyor.yml` is at most this many bytes (a real one is a few hundred).
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// Flow collections (`[`, `{`) nest at most this deep in it.
pub const MAX_NESTING: usize = 32;

/// Reads `<checkout>/.conveyor.yml` (if any; a regular file, at most [`MAX_FILE_BYTES`]) and
/// resolves it against the service defaults. CPU-bound on hostile input: call it off the async
/// runtime (`spawn_blocking`).
pub fn load(checkout: &Path, app: &str, cfg: &Config) -> Result<Pipeline, PipelineError> {
    let path = checkout.join(FILE_NAME);
    let file = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PipelineError::Read(e)),
        Ok(m) if !m.is_file() => return Err(PipelineError::Parse("it must be a regular file, not a link or anything else".into())),
        Ok(_) => Some(read_bounded(&path)?),
    };
    resolve(file.as_deref(), app, cfg)
}

fn read_bounded(path: &Path) -> Result<String, PipelineError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)).map_err(PipelineError::Read)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(PipelineError::Parse(format!("it is larger than {MAX_FILE_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| PipelineError::Parse("it is not UTF-8 text".into()))
}

/// Refuses flow collections nested deeper than [`MAX_NESTING`] before the YAML parser sees them
/// (its time grows much faster than the nesting). Quoted scalars and comments are skipped.
fn check_nesting(text: &str) -> Result<(), PipelineError> {
    let (mut depth, mut quote, mut comment, mut prev) = (0usize, None::<char>, false, ' ');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, comment) {
            (_, true) => comment = c != '\n',
            (Some('"'), _) if c == '\\' => {
                chars.next();
            }
            (Some('\''), _) if c == '\'' && chars.peek() == Some(&'\'') => {
                chars.next();
            }
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, _) => match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' | '\'' if prev.is_whitespace() || "[{,:".contains(prev) => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(PipelineError::Parse(format!("collections nest deeper than {MAX_NESTING} levels")));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    Ok(())
}

/// Resolves the file text (`None`: no file) against the service defaults.
pub fn resolve(text: Option<&str>, app: &str, cfg: &Config) -> Result<Pipeline, PipelineError> {
    let from_file = text.is_some();
    let file: PipelineFile = match text {
        None => PipelineFile::default(),
        Some(t) if t.trim().is_empty() => PipelineFile::default(),
        Some(t) if t.len() > MAX_FILE_BYTES => return Err(PipelineError::Parse(format!("it is larger than {MAX_FILE_BYTES} bytes"))),
        Some(t) => {
            check_nesting(t)?;
            serde_norway::from_str(t).map_err(|e| PipelineError::Parse(e.to_string()))?
        }
    };
    let image_name = file.image.unwrap_or_else(|| app.to_string());
    if image_name.is_empty()
        || image_name.starts_with('/')
        || image_name.ends_with('/')
        || !image_name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric()
        })
    {
        return Err(field("image", format!("{image_name:?} is not an image name (lowercase letters, digits, `._-`, parts joined by `/`)")));
    }
    let dockerfile = file.dockerfile.unwrap_or_else(|| cfg.dockerfile.clone());
    relative_path("dockerfile", &dockerfile)?;
    let context = file.context.unwrap_or_else(|| ".".into());
    relative_path("context", &context)?;
    let mut build_args: BTreeMap<String, String> = cfg.build_args.iter().cloned().collect();
    build_args.extend(file.build_args);
    let test_command = file.test.unwrap_or_else(|| cfg.test_command.clone());
    if test_command.trim().is_empty() {
        return Err(field("test", "the test command is empty"));
    }
    let branches = if file.branches.is_empty() {
        None
    } else {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &file.branches {
            set.add(globset::Glob::new(pattern).map_err(|e| field("branches", format!("{pattern:?}: {e}")))?);
        }
        Some(set.build().map_err(|e| field("branches", e.to_string()))?)
    };
    let limit = |name: &'static str, value: Option<u64>, default: u64| -> Result<Duration, PipelineError> {
        match value.unwrap_or(default) {
            0 => Err(field(name, "a timeout must be at least 1 second")),
            s if s > MAX_TIMEOUT_SECS => Err(field(name, format!("{s} s is more than {MAX_TIMEOUT_SECS} s"))),
            s => Ok(Duration::from_secs(s)),
        }
    };
    let t = &file.timeouts;
    if let Some(smoke) = &file.smoke {
        for path in std::iter::once(&smoke.health).chain(smoke.checks.iter().map(|c| &c.path)) {
            if !path.starts_with('/') {
                return Err(field("smoke", format!("path {path:?} must start with `/`")));
            }
        }
        if let Some(c) = smoke.checks.iter().find(|c| !(100..=599).contains(&c.status)) {
            return Err(field("smoke", format!("status {} of check {} is not an HTTP status", c.status, c.path)));
        }
        if smoke.env.contains_key("PORT") {
            return Err(field("smoke", "PORT is set by Conveyor (the port the app must listen on)"));
        }
    }
    Ok(Pipeline {
        image_name,
        dockerfile,
        context,
        build_args: build_args.into_iter().collect(),
        test_command,
        branches,
        build_timeout: limit("timeouts.build", t.build, cfg.build_timeout_secs)?,
        test_timeout: limit("timeouts.test", t.test, cfg.test_timeout_secs)?,
        smoke_timeout: limit("timeouts.smoke", t.smoke, cfg.smoke_timeout_secs)?,
        push_timeout: limit("timeouts.push", t.push, cfg.push_timeout_secs)?,
        smoke: file.smoke,
        from_file,
    })
}

fn relative_path(name: &'static str, p: &str) -> Result<(), PipelineError> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(field(name, format!("{p:?} must be a path inside the repository")));
    }
    Ok(())
}

impl Pipeline {
    /// Whether a push of `branch` builds.
    pub fn builds_branch(&self, branch: &str) -> bool {
        self.branches.as_ref().is_none_or(|set| set.is_match(branch))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_or_deeply_nested_file_is_refused_at_once() {
        let cfg = Config::defaults();
        let started = std::time::Instant::now();
        let nested = format!("image: {}web{}\n", "{a: ".repeat(100_000), "}".repeat(100_000));
        let err = resolve(Some(&nested), "web", &cfg).unwrap_err().to_string();
        assert!(err.contains("larger than") || err.contains("nest deeper"), "{err}");
        let nested = format!("x: {}1{}\n", "[".repeat(40), "]".repeat(40));
        assert!(resolve(Some(&nested), "web", &cfg).unwrap_err().to_string().contains("nest deeper than 32"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused in {:?}", started.elapsed());
        // Brackets inside quotes and comments do not count; ordinary nesting is fine.
        let fine = format!("test: \"{}\"  # {}\nbuild_args: {{ A: '[[[' }}\n", "[".repeat(50), "{".repeat(50));
        assert!(resolve(Some(&fine), "web", &cfg).is_ok(), "{:?}", resolve(Some(&fine), "web", &cfg).err());
    }

    use super::*;

    fn cfg() -> Config {
        Config::defaults()
    }

    #[test]
    fn no_file_means_service_defaults() {
        let p = resolve(None, "web", &cfg()).unwrap();
        assert_eq!((p.image_name.as_str(), p.dockerfile.as_str(), p.context.as_str()), ("web", "Dockerfile", "."));
        assert_eq!(p.test_command, cfg().test_command);
        assert!(p.builds_branch("anything") && p.smoke.is_none() && !p.from_file);
    }

    #[test]
    fn a_full_file_overrides_everything() {
        let text = r#"
image: team/web
dockerfile: docker/Dockerfile.prod
context: app
build_args: { BASE_IMAGE: "conveyor/python-flask:bookworm" }
test: python3 -m pytest -q
branches: [main, "release/*"]
timeouts: { build: 60, test: 30 }
smoke:
  health: /healthz
  checks:
    - { path: /, contains: Hello }
"#;
        let p = resolve(Some(text), "web", &cfg()).unwrap();
        assert_eq!(p.image_name, "team/web");
        assert_eq!((p.dockerfile.as_str(), p.context.as_str()), ("docker/Dockerfile.prod", "app"));
        assert!(p.build_args.contains(&("BASE_IMAGE".into(), "conveyor/python-flask:bookworm".into())));
        assert!(p.builds_branch("main") && p.builds_branch("release/1.2") && !p.builds_branch("feature/x"));
        assert_eq!((p.build_timeout, p.test_timeout), (Duration::from_secs(60), Duration::from_secs(30)));
        let smoke = p.smoke.unwrap();
        assert_eq!(smoke.checks[0].status, 200);
    }

    #[test]
    fn invalid_files_name_the_problem() {
        let err = |t: &str| resolve(Some(t), "web", &cfg()).unwrap_err().to_string();
        assert!(err("imagee: x").contains("unknown field `imagee`"), "{}", err("imagee: x"));
        assert!(err("image: Team/Web").contains("image"));
        assert!(err("dockerfile: ../../etc/passwd").contains("dockerfile"));
        assert!(err("timeouts: { test: 0 }").contains("timeouts.test"));
        assert!(err("branches: ['[']").contains("branches"));
        assert!(err("smoke: { health: healthz }").contains("must start with"));
        assert!(err("test: [a").contains("invalid .conveyor.yml"));
    }
}

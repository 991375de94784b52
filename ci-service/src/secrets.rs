//! Secret values of ci-service: webhook secrets (per repository, several at once for rotation)
//! and registry credentials. They are never printed: `Debug` is redacted, and [`Masker`] blanks
//! them out of every build log line and API answer.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

pub use conveyor_proto::Secret;

/// The webhook secrets file:
///
/// ```yaml
/// default: [s3cr3t]               # any repository without an entry of its own
/// repos:
///   team/flask-app: [new, old]    # forge full name (owner/name) or the generic repo_url
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    #[serde(default)]
    pub default: Vec<Secret>,
    #[serde(default)]
    pub repos: HashMap<String, Vec<Secret>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the webhook secrets file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid webhook secrets file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("an empty webhook secret is not allowed (in {0})")]
    Empty(String),
}

/// Which secrets sign the webhooks of which repository.
#[derive(Debug, Default)]
pub struct WebhookSecrets {
    default: Vec<Secret>,
    repos: HashMap<String, Vec<Secret>>,
    /// Repositories without any secret may send unsigned webhooks (explicit opt-out).
    pub allow_unsigned: bool,
}

impl WebhookSecrets {
    pub fn new(default: Vec<Secret>, file: Option<SecretsFile>, allow_unsigned: bool) -> Result<Self, SecretsError> {
        let mut secrets = Self { default, repos: HashMap::new(), allow_unsigned };
        if let Some(file) = file {
            secrets.default.extend(file.default);
            for (repo, list) in file.repos {
                secrets.repos.insert(repo.trim_end_matches('/').trim_end_matches(".git").to_string(), list);
            }
        }
        if secrets.default.iter().chain(secrets.repos.values().flatten()).any(|s| s.expose().is_empty()) {
            return Err(SecretsError::Empty("webhook secrets".into()));
        }
        Ok(secrets)
    }

    pub fn load_file(path: &Path) -> Result<SecretsFile, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read { path: path.display().to_string(), source })?;
        serde_norway::from_str(&text).map_err(|e| SecretsError::Parse { path: path.display().to_string(), message: e.to_string() })
    }

    /// True when no secret is configured at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.repos.is_empty()
    }

    /// The secrets that may sign webhooks of a repository known by any of `names` (full name,
    /// clone URL); the repository's own entry wins over the default list.
    pub fn for_repo<'a>(&'a self, names: &[&str]) -> &'a [Secret] {
        names
            .iter()
            .find_map(|n| self.repos.get(n.trim_end_matches('/').trim_end_matches(".git")))
            .map(Vec::as_slice)
            .unwrap_or(&self.default)
    }

    /// Every secret value, for the [`Masker`].
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        self.default.iter().chain(self.repos.values().flatten())
    }
}

/// Replaces secret values with `***` in text shown to users (logs, failure reasons).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        // Very short values would blank out ordinary words; secrets that short are refused elsewhere.
        let mut values: Vec<String> = secrets.into_iter().map(|s| s.expose().to_string()).filter(|v| v.len() >= 4).collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    pub fn mask<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for v in &self.values {
            out = out.replace(v.as_str(), "***");
        }
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = WebhookSecrets::new(vec![Secret::new("hunter2")], None, false).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn repository_entries_win_over_the_default() {
        let file: SecretsFile = serde_norway::from_str("default: [d1]\nrepos:\n  team/web: [new, old]\n").unwrap();
        let s = WebhookSecrets::new(vec![], Some(file), false).unwrap();
        let names = |list: &[Secret]| list.iter().map(|x| x.expose().to_string()).collect::<Vec<_>>();
        assert_eq!(names(s.for_repo(&["team/web"])), ["new", "old"]);
        assert_eq!(names(s.for_repo(&["team/other", "https://x/team/other.git"])), ["d1"]);
        assert!(serde_norway::from_str::<SecretsFile>("defaults: [x]").is_err(), "unknown keys are refused");
        assert!(WebhookSecrets::new(vec![Secret::new("")], None, false).is_err());
    }

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = Masker::new(&[Secret::new("pass"), Secret::new("password123")]);
        assert_eq!(m.mask("login password123 then pass"), "login *** then ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }
}

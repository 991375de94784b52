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
///   team/web:                     # the long form also says what the repository may build:
///     secrets: [s1]
///     apps: [web, web-worker]     #   app names (default: the repository's own name)
///     images: [team/web]          #   image names under --registry (default: the app name)
/// ```
///
/// An app or image that an entry names (or that its repository's name gives it) belongs to that
/// repository: no other repository may build it, whatever secret it holds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    #[serde(default)]
    pub default: Vec<Secret>,
    #[serde(default)]
    pub repos: HashMap<String, RepoEntry>,
}

/// One repository of the secrets file: its secrets, and what it may build.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RepoEntry {
    Secrets(Vec<Secret>),
    Full(RepoGrant),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoGrant {
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub apps: Vec<String>,
    #[serde(default)]
    pub images: Vec<String>,
}

impl RepoEntry {
    fn into_grant(self) -> RepoGrant {
        match self {
            RepoEntry::Secrets(secrets) => RepoGrant { secrets, ..Default::default() },
            RepoEntry::Full(g) => g,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the webhook secrets file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid webhook secrets file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("an empty webhook secret is not allowed (in {0})")]
    Empty(String),
    #[error("invalid webhook secrets file: repository {repo}: {message}")]
    Grant { repo: String, message: String },
}

/// What a push may build: the app names and image names granted to its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The repository as the secrets file (or the forge) names it.
    pub repository: String,
    pub apps: Vec<String>,
    pub images: Vec<String>,
}

/// A webhook whose signature matched one of the configured secrets, before its payload was read.
#[derive(Debug)]
pub struct Proof {
    /// Indices into [`WebhookSecrets::all`] of the secrets that match.
    matched: Vec<usize>,
    /// No signature was given and none is needed (`--allow-unsigned-webhooks`).
    unsigned: bool,
}

impl Proof {
    /// True when the request carried no signature (accepted only for repositories without one).
    pub fn is_unsigned(&self) -> bool {
        self.unsigned
    }
}

/// Which secrets sign the webhooks of which repository, and what each repository may build.
#[derive(Debug, Default)]
pub struct WebhookSecrets {
    default: Vec<Secret>,
    repos: HashMap<String, RepoGrant>,
    /// Apps and images that some entry names, with the repository that owns each.
    owned_apps: HashMap<String, String>,
    owned_images: HashMap<String, String>,
    /// Repositories without any secret may send unsigned webhooks (explicit opt-out).
    pub allow_unsigned: bool,
    /// Local paths and `file://` URLs may be fetched (`--allow-local-repos`).
    pub allow_local_repos: bool,
}

fn key(repo: &str) -> String {
    repo.trim_end_matches('/').trim_end_matches(".git").to_string()
}

impl WebhookSecrets {
    pub fn new(default: Vec<Secret>, file: Option<SecretsFile>, allow_unsigned: bool) -> Result<Self, SecretsError> {
        let mut secrets = Self { default, allow_unsigned, ..Default::default() };
        if let Some(file) = file {
            secrets.default.extend(file.default);
            for (repo, entry) in file.repos {
                let mut grant = entry.into_grant();
                let repo = key(&repo);
                if grant.apps.is_empty() {
                    grant.apps.extend(crate::webhook::app_from_repo_url(&repo));
                }
                for app in &grant.apps {
                    conveyor_proto::validate::app_name(app)
                        .map_err(|e| SecretsError::Grant { repo: repo.clone(), message: e.to_string() })?;
                    secrets.owned_apps.insert(app.clone(), repo.clone());
                }
                for image in grant.images.iter().chain(if grant.images.is_empty() { grant.apps.iter() } else { [].iter() }) {
                    secrets.owned_images.insert(image.clone(), repo.clone());
                }
                secrets.repos.insert(repo, grant);
            }
        }
        if secrets.default.iter().chain(secrets.repos.values().flat_map(|g| &g.secrets)).any(|s| s.expose().is_empty()) {
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

    /// The entry of a repository known by any of `names` (full name, clone URL).
    fn entry<'a>(&'a self, names: &[&str]) -> Option<(&'a str, &'a RepoGrant)> {
        names.iter().find_map(|n| self.repos.get_key_value(&key(n))).map(|(k, g)| (k.as_str(), g))
    }

    /// The secrets that may sign webhooks of a repository known by any of `names`; the
    /// repository's own entry wins over the default list.
    pub fn for_repo<'a>(&'a self, names: &[&str]) -> &'a [Secret] {
        self.entry(names).map(|(_, g)| g.secrets.as_slice()).unwrap_or(&self.default)
    }

    /// Every secret value, for the [`Masker`] (and, by index, for [`Proof`]).
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        self.default.iter().chain(self.repos.values().flat_map(|g| &g.secrets))
    }

    /// Checks a credential against every configured secret, before anything of the payload is
    /// read; `check` says whether one secret matches it.
    pub fn prove(&self, given: Option<&str>, check: impl Fn(&Secret, &str) -> bool) -> Result<Proof, String> {
        match given {
            None if self.allow_unsigned => Ok(Proof { matched: Vec::new(), unsigned: true }),
            None => Err("missing".into()),
            Some(value) => {
                // Every secret is tried, so the time taken does not tell which one matched.
                let matched: Vec<usize> = self.all().enumerate().filter(|(_, s)| check(s, value)).map(|(i, _)| i).collect();
                if matched.is_empty() {
                    Err("does not match".into())
                } else {
                    Ok(Proof { matched, unsigned: false })
                }
            }
        }
    }

    /// Whether `proof` authenticates the repository known by `names`: one of the secrets that
    /// matched belongs to it (an unsigned request only a repository without a secret may send).
    pub fn proves(&self, proof: &Proof, names: &[&str]) -> bool {
        let allowed = self.for_repo(names);
        if proof.unsigned {
            return allowed.is_empty();
        }
        let all: Vec<&Secret> = self.all().collect();
        proof.matched.iter().any(|&i| allowed.iter().any(|s| std::ptr::eq(s, all[i])))
    }

    /// What the repository known by `names` may build when it pushes `app`: refused when the
    /// app is not granted to it, or belongs to another repository.
    pub fn grant(&self, names: &[&str], app: &str) -> Result<Grant, String> {
        if let Some((repo, g)) = self.entry(names) {
            if !g.apps.iter().any(|a| a == app) {
                return Err(format!(
                    "repository {repo} may build the apps {:?}, not {app:?} (its entry in the webhook secrets file)",
                    g.apps
                ));
            }
            let images = if g.images.is_empty() { g.apps.clone() } else { g.images.clone() };
            return Ok(Grant { repository: repo.to_string(), apps: g.apps.clone(), images });
        }
        let repository = names.first().map(|n| key(n)).unwrap_or_default();
        if let Some(owner) = self.owned_apps.get(app) {
            return Err(format!("app {app:?} belongs to repository {owner}; {repository} may not build it"));
        }
        if let Some(owner) = self.owned_images.get(app) {
            return Err(format!("image {app:?} belongs to repository {owner}; {repository} may not push it"));
        }
        Ok(Grant { repository, apps: vec![app.to_string()], images: vec![app.to_string()] })
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
    fn a_repository_builds_only_what_is_granted_to_it_and_nobody_else_builds_that() {
        let file: SecretsFile = serde_norway::from_str(
            "default: [d1]\nrepos:\n  team/protected-app: [p1]\n  team/web:\n    secrets: [w1]\n    apps: [web, web-worker]\n    images: [team/web]\n",
        )
        .unwrap();
        let s = WebhookSecrets::new(vec![], Some(file), false).unwrap();
        assert_eq!(s.grant(&["team/protected-app"], "protected-app").unwrap().images, ["protected-app"]);
        assert!(s.grant(&["team/protected-app"], "other").unwrap_err().contains("may build the apps [\"protected-app\"]"));
        let g = s.grant(&["team/web"], "web-worker").unwrap();
        assert_eq!((g.apps.len(), g.images.as_slice()), (2, ["team/web".to_string()].as_slice()));
        // With the default secret: its own name, never an app or image another entry owns.
        assert_eq!(s.grant(&["qa-org/evil-app"], "evil-app").unwrap().images, ["evil-app"]);
        let stolen = s.grant(&["qa-org/evil-app"], "protected-app").unwrap_err();
        assert!(stolen.contains("belongs to repository team/protected-app"), "{stolen}");
        assert!(s.grant(&["qa-org/evil"], "web-worker").is_err());
        assert!(WebhookSecrets::new(
            vec![],
            serde_norway::from_str("repos:\n  a/b:\n    secrets: [x]\n    apps: [Bad_Name]\n").ok(),
            false
        )
        .is_err());
    }

    #[test]
    fn a_proof_from_the_raw_body_authenticates_only_its_own_repository() {
        let file: SecretsFile = serde_norway::from_str("default: [d1]\nrepos:\n  team/web: [w1]\n").unwrap();
        let s = WebhookSecrets::new(vec![], Some(file), false).unwrap();
        let eq = |secret: &Secret, given: &str| secret.expose() == given;
        let by_default = s.prove(Some("d1"), eq).unwrap();
        assert!(s.proves(&by_default, &["team/other"]) && !s.proves(&by_default, &["team/web"]));
        let by_web = s.prove(Some("w1"), eq).unwrap();
        assert!(s.proves(&by_web, &["team/web"]) && !s.proves(&by_web, &["team/other"]));
        assert!(s.prove(Some("nope"), eq).is_err() && s.prove(None, eq).is_err());
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

//! Secret values of ci-service: webhook secrets (per repository, several at once for rotation),
//! the forges' API tokens for commit statuses, the credentials that fetch private repositories,
//! and registry credentials. They are never printed: `Debug` is redacted, and [`Masker`] blanks
//! them out of every build log line and API answer. A token given as a file is read each time it
//! is used, so replacing the file rotates it without a restart.

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
///
/// Commit statuses and private repositories:
///
/// ```yaml
/// forges:                         # by the host of the repositories' web URLs
///   github.com: { kind: github, api_url: https://api.github.com, token_file: /run/secrets/gh }
///   gitlab.example.com: { kind: gitlab, api_url: https://gitlab.example.com/api/v4, token_file: ... }
///   git.example.com: { kind: gitea, api_url: https://git.example.com/api/v1, token: ... }
/// repos:
///   team/web:
///     secrets: [w1]
///     status_token_file: /run/secrets/web-status   # this repository's own status token
///     fetch:                                        # a private repository: over ssh ...
///       ssh_key_file: /run/secrets/web-deploy-key
///       known_hosts_file: /etc/conveyor/known_hosts
///   team/api:
///     secrets: [a1]
///     fetch: { token_file: /run/secrets/api-read-token, token_user: oauth2 }   # ... or https
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    #[serde(default)]
    pub default: Vec<Secret>,
    #[serde(default)]
    pub repos: HashMap<String, RepoEntry>,
    #[serde(default)]
    pub forges: HashMap<String, ForgeEntry>,
}

/// Which API a forge speaks for commit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    /// Gitea and Forgejo.
    #[serde(alias = "forgejo")]
    Gitea,
}

/// A forge that gets commit statuses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeEntry {
    pub kind: ForgeKind,
    /// The API's base URL: `https://api.github.com` (GitHub Enterprise: `https://HOST/api/v3`),
    /// `https://HOST/api/v4` (GitLab), `https://HOST/api/v1` (Gitea, Forgejo).
    pub api_url: String,
    #[serde(flatten)]
    pub token: TokenSource,
}

/// A token, inline or in a file read at each use (replace the file to rotate it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

impl TokenSource {
    fn is_set(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// The token now: the file's first line, else the inline value.
    pub fn read(&self) -> Result<Option<Secret>, String> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                return Err(format!("the token file {} is empty", path.display()));
            }
            return Ok(Some(Secret::new(token)));
        }
        Ok(self.token.clone())
    }
}

/// How ci-service fetches a private repository: an ssh deploy key (its host key checked against
/// a known_hosts file) or an HTTPS token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchEntry {
    #[serde(default)]
    pub ssh_key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub known_hosts_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// User name sent with the token (default `x-access-token`; GitLab takes any, e.g. `oauth2`).
    #[serde(default)]
    pub token_user: Option<String>,
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
    /// This repository's token for commit statuses (instead of its forge's).
    #[serde(default)]
    pub status_token: Option<Secret>,
    #[serde(default)]
    pub status_token_file: Option<std::path::PathBuf>,
    /// Credentials that fetch this repository (a private one).
    #[serde(default)]
    pub fetch: Option<FetchEntry>,
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
    #[error("invalid webhook secrets file: forge {host}: {message}")]
    Forge { host: String, message: String },
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
    /// Forges that get commit statuses, by host.
    forges: HashMap<String, ForgeEntry>,
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
                if let Some(f) = &grant.fetch {
                    let token = f.token.is_some() || f.token_file.is_some();
                    if token && f.ssh_key_file.is_some() {
                        let message = "fetch: give an ssh_key_file or a token, not both".to_string();
                        return Err(SecretsError::Grant { repo, message });
                    }
                }
                secrets.repos.insert(repo, grant);
            }
            for (host, forge) in file.forges {
                let api = forge.api_url.to_ascii_lowercase();
                if !(api.starts_with("https://") || api.starts_with("http://")) {
                    return Err(SecretsError::Forge { host, message: format!("api_url {:?} is not an http(s) URL", forge.api_url) });
                }
                if !forge.token.is_set() {
                    return Err(SecretsError::Forge { host, message: "no token or token_file".into() });
                }
                secrets.forges.insert(host.to_ascii_lowercase(), forge);
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

    /// Every webhook secret, for [`Proof`] (by index).
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        self.default.iter().chain(self.repos.values().flat_map(|g| &g.secrets))
    }

    /// Every inline secret value, webhook secrets and tokens, for the [`Masker`].
    pub fn values(&self) -> impl Iterator<Item = &Secret> {
        let tokens = self.repos.values().flat_map(|g| g.status_token.iter().chain(g.fetch.iter().flat_map(|f| f.token.iter())));
        self.all().chain(tokens).chain(self.forges.values().flat_map(|f| f.token.token.iter()))
    }

    /// Whether any forge gets commit statuses.
    pub fn has_forges(&self) -> bool {
        !self.forges.is_empty()
    }

    /// The tokens of every token file as they are now (masked in logs too, like inline values).
    pub fn file_tokens(&self) -> Vec<Secret> {
        let files = self.forges.values().filter_map(|f| f.token.token_file.clone()).chain(
            self.repos.values().flat_map(|g| g.status_token_file.iter().chain(g.fetch.iter().flat_map(|f| f.token_file.iter())).cloned()),
        );
        files.filter_map(|path| TokenSource { token: None, token_file: Some(path) }.read().ok().flatten()).collect()
    }

    /// The forge of `host` and the token for statuses of the repository known by `names`
    /// (its own `status_token`, else the forge's); `None` when no forge is configured there.
    pub fn status_target(&self, host: &str, names: &[&str]) -> Option<(ForgeEntry, TokenSource)> {
        let forge = self.forges.get(&host.to_ascii_lowercase())?.clone();
        let own = self
            .entry(names)
            .map(|(_, g)| TokenSource { token: g.status_token.clone(), token_file: g.status_token_file.clone() })
            .filter(TokenSource::is_set);
        let token = own.unwrap_or_else(|| forge.token.clone());
        Some((forge, token))
    }

    /// How to fetch the repository known by `names`: its `fetch` entry (tokens read now), else
    /// no credentials and `~/.ssh/known_hosts`.
    pub fn fetch_auth(&self, names: &[&str]) -> Result<conveyor_git::GitAuth, String> {
        let Some(f) = self.entry(names).and_then(|(_, g)| g.fetch.as_ref()) else {
            return Ok(conveyor_git::GitAuth { token_user: "x-access-token".into(), ..Default::default() });
        };
        let token = TokenSource { token: f.token.clone(), token_file: f.token_file.clone() }.read()?;
        Ok(conveyor_git::GitAuth {
            ssh_key: f.ssh_key_file.clone(),
            known_hosts: f.known_hosts_file.clone(),
            token,
            token_user: f.token_user.clone().unwrap_or_else(|| "x-access-token".into()),
        })
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

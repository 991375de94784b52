//! `conveyor.yaml` at the manifest repository root: which files belong to which app and
//! environment, each environment's update policy and pin, and the commit subject template.
//! Without the file every reference to an event's image is updated, in one environment named
//! `default`. Paths are relative and must stay inside the repository, symlinks resolved.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

use conveyor_proto::{validate, ImageBuilt};

pub const FILE: &str = "conveyor.yaml";
/// The environment of a repository without `conveyor.yaml`.
pub const DEFAULT_ENV: &str = "default";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    #[serde(default)]
    pub commit: CommitConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The image repository the app's events name.
    pub image: String,
    pub environments: BTreeMap<String, EnvConfig>,
    /// Helm values whose keys are not `repository`/`tag`: dotted key paths of both.
    #[serde(default)]
    pub helm: Option<HelmKeys>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelmKeys {
    /// e.g. `web.image.repo`
    pub repository: String,
    /// e.g. `web.image.version`
    pub tag: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Files or directories (relative to the repository root) holding this environment's manifests.
    pub paths: Vec<String>,
    #[serde(default)]
    pub policy: Policy,
    /// A reason; while set, new builds are not deployed here (promotions still are).
    #[serde(default)]
    pub pinned: Option<String>,
    /// Write `repo:tag@sha256:...` into image references (those with a digest keep one anyway).
    #[serde(default)]
    pub pin_digest: bool,
}

/// `auto`: every green build is deployed. `manual`: only promotions are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Auto,
    Manual,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Subject of a single-event commit; `{app}`, `{env}`, `{image}`, `{tag}` are replaced.
    #[serde(default)]
    pub message: Option<String>,
}

/// Where an event goes: one environment, the paths to rewrite, and why it is held, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub env: String,
    pub scope: Vec<PathBuf>,
    pub held: Option<String>,
    pub pin_digest: bool,
    pub helm: Option<HelmKeys>,
}

/// Loads and validates `conveyor.yaml`; `Ok(None)` when the repository has none.
pub fn load(root: &Path) -> Result<Option<ManifestConfig>, String> {
    let path = root.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {FILE}: {e}")),
    };
    let config: ManifestConfig = serde_norway::from_str(&text).map_err(|e| format!("invalid {FILE}: {e}"))?;
    for (app, a) in &config.apps {
        validate::app_name(app).map_err(|e| format!("invalid {FILE}: {e}"))?;
        validate::image_repository(&a.image).map_err(|e| format!("invalid {FILE}: app {app}: {e}"))?;
        if a.environments.is_empty() {
            return Err(format!("invalid {FILE}: app {app} has no environments"));
        }
        for (env, e) in &a.environments {
            validate::environment(env).map_err(|err| format!("invalid {FILE}: app {app}: {err}"))?;
            if e.paths.is_empty() {
                return Err(format!("invalid {FILE}: {app}/{env} has no paths"));
            }
            for p in &e.paths {
                relative_path(p).map_err(|why| format!("invalid {FILE}: {app}/{env}: path {p:?} {why}"))?;
            }
        }
    }
    if let Some(m) = &config.commit.message {
        let mut rest = m.as_str();
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').ok_or_else(|| format!("invalid {FILE}: unclosed {{ in commit.message"))? + start;
            let name = &rest[start + 1..end];
            if !matches!(name, "app" | "env" | "image" | "tag") {
                return Err(format!("invalid {FILE}: commit.message uses {{{name}}}; known: {{app}} {{env}} {{image}} {{tag}}"));
            }
            rest = &rest[end + 1..];
        }
    }
    Ok(Some(config))
}

/// A relative path without `..`, `.` only, or a root.
fn relative_path(p: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(p);
    if p.trim().is_empty() {
        return Err("is empty");
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("leaves the repository (..)"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(path.to_path_buf())
}

/// Resolves a configured path inside `root`, refusing what is missing or (through a symlink)
/// outside the repository.
fn resolve(root: &Path, p: &str) -> Result<PathBuf, String> {
    let rel = relative_path(p).map_err(|why| format!("path {p:?} {why}"))?;
    let joined = root.join(rel);
    let real = joined.canonicalize().map_err(|_| format!("path {p:?} does not exist in the manifest repository"))?;
    let real_root = root.canonicalize().map_err(|e| format!("cannot resolve the repository root: {e}"))?;
    if !real.starts_with(&real_root) {
        return Err(format!("path {p:?} leads outside the repository (symlink); refused"));
    }
    Ok(joined)
}

/// The environments `event` goes to. `Err` is a reason to refuse the event (unknown app or
/// environment, wrong image, a path missing or outside the repository).
pub fn placements(config: Option<&ManifestConfig>, root: &Path, event: &ImageBuilt) -> Result<Vec<Placement>, String> {
    let Some(config) = config else {
        return match &event.deploy {
            Some(d) if d.environment != DEFAULT_ENV => {
                Err(format!("environment {:?} is unknown: the manifest repository has no {FILE}", d.environment))
            }
            _ => Ok(vec![Placement {
                env: DEFAULT_ENV.to_string(),
                scope: vec![root.to_path_buf()],
                held: None,
                pin_digest: false,
                helm: None,
            }]),
        };
    };
    let app = config.apps.get(&event.app).ok_or_else(|| format!("unknown app {:?}: it is not in {FILE}", event.app))?;
    if app.image != event.image.repository {
        return Err(format!("image {} is not app {}'s image ({}) in {FILE}", event.image.repository, event.app, app.image));
    }
    let scope = |env: &str, e: &EnvConfig| -> Result<Vec<PathBuf>, String> {
        e.paths.iter().map(|p| resolve(root, p).map_err(|why| format!("{}/{env}: {why}", event.app))).collect()
    };
    match &event.deploy {
        Some(d) => {
            let e = app
                .environments
                .get(&d.environment)
                .ok_or_else(|| format!("app {} has no environment {:?} in {FILE}", event.app, d.environment))?;
            Ok(vec![Placement {
                env: d.environment.clone(),
                scope: scope(&d.environment, e)?,
                held: None,
                pin_digest: e.pin_digest,
                helm: app.helm.clone(),
            }])
        }
        None => app
            .environments
            .iter()
            .map(|(env, e)| {
                let held = match (&e.pinned, e.policy) {
                    (Some(reason), _) => Some(format!("pinned in {FILE}: {reason}")),
                    (None, Policy::Manual) => Some("manual policy: waiting for a promotion".to_string()),
                    (None, Policy::Auto) => None,
                };
                Ok(Placement {
                    env: env.clone(),
                    scope: if held.is_some() { Vec::new() } else { scope(env, e)? },
                    held,
                    pin_digest: e.pin_digest,
                    helm: app.helm.clone(),
                })
            })
            .collect(),
    }
}

/// The subject line of a single-event commit.
pub fn subject(config: Option<&ManifestConfig>, event: &ImageBuilt, env: &str) -> String {
    let template = config.and_then(|c| c.commit.message.as_deref());
    // A replay says so in the subject: `rollback(web/production): repo:tag`.
    if let Some(d) = event.deploy.as_ref().filter(|d| d.kind != conveyor_proto::IntentKind::Promotion) {
        let scope = if env == DEFAULT_ENV { event.app.clone() } else { format!("{}/{env}", event.app) };
        return format!("{}({scope}): {}", d.kind.as_str(), event.image.reference());
    }
    match template {
        Some(t) => t
            .replace("{app}", &event.app)
            .replace("{env}", env)
            .replace("{image}", &event.image.reference())
            .replace("{tag}", &event.image.tag),
        None if env == DEFAULT_ENV => format!("deploy({}): {}", event.app, event.image.reference()),
        None => format!("deploy({}/{env}): {}", event.app, event.image.reference()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn refuses_paths_that_leave_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc", "a/../../b", ""] {
            write(
                dir.path(),
                FILE,
                &format!("apps:\n  web:\n    image: r/web\n    environments:\n      staging:\n        paths: [\"{bad}\"]\n"),
            );
            let err = load(dir.path()).unwrap_err();
            assert!(err.contains("path"), "{bad:?}: {err}");
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        assert!(resolve(dir.path(), "escape").unwrap_err().contains("outside"));
        assert!(resolve(dir.path(), "missing").unwrap_err().contains("does not exist"));
    }

    #[test]
    fn rejects_unknown_keys_and_template_fields() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), FILE, "apps: {}\nsurprise: 1\n");
        assert!(load(dir.path()).unwrap_err().contains("surprise"));
        write(dir.path(), FILE, "commit:\n  message: \"deploy {nope}\"\n");
        assert!(load(dir.path()).unwrap_err().contains("{nope}"));
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }
}

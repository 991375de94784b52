//! Manifest rewriting: finds the references to an image in a manifest tree and replaces only the
//! bytes of their tag (and digest, where one is pinned). Files are never re-serialized: every
//! YAML splice is re-parsed and must differ from the original only in the replaced values, or
//! the file is not written. Symlinks are never followed, so nothing outside the repository is
//! read or touched.

pub mod doc;
pub mod env;
pub mod plain;
pub mod reference;
pub mod verify;
pub mod yaml;

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

/// One replaced value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path relative to the repository root, '/'-separated.
    pub path: String,
    /// 1-based line number.
    pub line: usize,
    pub old: String,
    pub new: String,
}

/// The rewrite of one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileRewrite {
    pub text: String,
    /// References to the image found, current or not.
    pub references: usize,
    /// 1-based lines of references held by a `conveyor:pin` comment.
    pub pinned: Vec<usize>,
    /// (1-based line, old value, new value).
    pub changes: Vec<(usize, String, String)>,
    /// Whether the file holds a `repo:${IMAGE_TAG}` template of the image.
    pub templates: bool,
    /// References to the image that cannot be rewritten: (1-based line, why).
    pub left_behind: Vec<(usize, String)>,
}

/// What a rewrite of a tree found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeRewrite {
    /// References to the image found, current or not.
    pub references: usize,
    /// References held by a pin, as (path, line).
    pub pinned: Vec<(String, usize)>,
    /// The values that were changed (and written).
    pub changes: Vec<Change>,
}

/// A reference to the image that the rewrite cannot write, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftBehind {
    /// Path relative to the repository root, '/'-separated.
    pub path: String,
    /// 1-based line (0 when the whole file is meant).
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for LeftBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.path, self.why),
            line => write!(f, "{}:{line}: {}", self.path, self.why),
        }
    }
}

fn list(left: &[LeftBehind]) -> String {
    left.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing to write {path}: {source}")]
    Verify { path: String, source: verify::VerifyError },
    /// All or nothing: one reference that cannot be rewritten keeps every file as it is.
    #[error("{} reference(s) to {repository} cannot be rewritten, so no file was changed: {}", left.len(), list(left))]
    LeftBehind { repository: String, left: Vec<LeftBehind> },
}

/// The new value for an image's references.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The app, which is also the name of its Flux image policy.
    pub app: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
    /// Written where the manifest already pins a digest, or everywhere with `pin_digest`.
    pub digest: &'a str,
    /// Write `repo:tag@digest` into image references that have no digest yet.
    pub pin_digest: bool,
    /// Dotted key paths of the repository and tag in Helm values files whose keys are not
    /// `repository`/`tag` (e.g. `web.imageRepo`, `web.imageVersion`).
    pub helm: Option<(&'a str, &'a str)>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RewriteError + '_ {
    move |source| RewriteError::Io { path: path.to_path_buf(), source }
}

/// Rewrites the manifests under `root` (skipping `.git` and symlinks) and writes the files that
/// changed. Nothing is written unless every changed file passed verification.
pub fn rewrite_tree(root: &Path, target: &Target<'_>) -> Result<TreeRewrite, RewriteError> {
    rewrite_scope(root, &[root.to_path_buf()], target)
}

/// Like [`rewrite_tree`], limited to `scope`: files or directories inside `root`.
pub fn rewrite_scope(root: &Path, scope: &[PathBuf], target: &Target<'_>) -> Result<TreeRewrite, RewriteError> {
    let mut yaml_files = Vec::new();
    let mut env_files = Vec::new();
    let walk = scope.iter().flat_map(|s| {
        walkdir::WalkDir::new(s).follow_links(false).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git")
    });
    for entry in walk {
        let entry = entry.map_err(|e| RewriteError::Io {
            path: e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf()),
            source: e.into_io_error().unwrap_or_else(|| io::Error::other("walk error")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        if yaml_files.contains(&entry.path().to_path_buf()) || env_files.contains(&entry.path().to_path_buf()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            yaml_files.push(entry.into_path());
        } else if env::is_env_file(&name) {
            env_files.push(entry.into_path());
        }
    }

    let mut result = TreeRewrite::default();
    let mut writes: Vec<(PathBuf, String)> = Vec::new();
    let mut template_dirs: HashSet<PathBuf> = HashSet::new();
    let mut left: Vec<LeftBehind> = Vec::new();
    let rel = |p: &Path| p.strip_prefix(root).expect("walkdir yields paths under its root").to_string_lossy().replace('\\', "/");
    let behind = |path: &Path, line: usize, why: String| LeftBehind { path: rel(path), line, why };
    // Only files that could hold a reference are parsed.
    let segment = target.repository.rsplit('/').next().unwrap_or(target.repository);

    for path in &yaml_files {
        let Some(text) = read_utf8(path, &rel(path), target, &mut left)? else { continue };
        if !(text.contains(segment) || text.contains("$imagepolicy")) {
            continue;
        }
        let file = match yaml::rewrite(&text, target) {
            Ok(file) => file,
            // A Helm or Go template is not YAML until rendered; the values feed it.
            Err(e) if text.contains(target.repository) && !text.contains("{{") => {
                left.push(behind(path, e.line, format!("not valid YAML ({}), and it names the image", e.message)));
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %rel(path), error = %e, "skipping a manifest that is not valid YAML");
                continue;
            }
        };
        if file.references == 0 {
            continue;
        }
        left.extend(file.left_behind.iter().map(|(line, why)| behind(path, *line, why.clone())));
        if file.templates {
            template_dirs.insert(path.parent().unwrap_or(root).to_path_buf());
        }
        if !file.changes.is_empty() {
            let old = match verify::parse_all(&text) {
                Ok(docs) => docs,
                Err(e) => {
                    left.push(behind(path, 0, format!("libyaml cannot read it to verify a rewrite ({e})")));
                    continue;
                }
            };
            verify::check(&old, &file.text, &file.changes).map_err(|source| RewriteError::Verify { path: rel(path), source })?;
        }
        collect(&mut result, &mut writes, &rel(path), path, file);
    }
    for path in &env_files {
        let Some(text) = read_utf8(path, &rel(path), target, &mut left)? else { continue };
        let next_to_template = template_dirs.contains(path.parent().unwrap_or(root));
        let file = env::rewrite(&text, target, next_to_template);
        collect(&mut result, &mut writes, &rel(path), path, file);
    }
    if !left.is_empty() {
        return Err(RewriteError::LeftBehind { repository: target.repository.to_string(), left });
    }
    for (path, text) in writes {
        std::fs::write(&path, text.as_bytes()).map_err(io_err(&path))?;
    }
    Ok(result)
}

/// A manifest's text, or `None` when it is not UTF-8: then it is a reference left behind if it
/// names the image (YAML and env files alike), and skipped with a warning otherwise.
fn read_utf8(path: &Path, rel: &str, target: &Target<'_>, left: &mut Vec<LeftBehind>) -> Result<Option<String>, RewriteError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    match String::from_utf8(bytes) {
        Ok(t) => Ok(Some(t)),
        Err(e) if contains(e.as_bytes(), target.repository.as_bytes()) => {
            left.push(LeftBehind { path: rel.to_string(), line: 0, why: "not UTF-8, and it names the image".into() });
            Ok(None)
        }
        Err(_) => {
            tracing::warn!(path = %rel, "skipping a manifest that is not UTF-8");
            Ok(None)
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn collect(result: &mut TreeRewrite, writes: &mut Vec<(PathBuf, String)>, rel: &str, path: &Path, file: FileRewrite) {
    result.references += file.references;
    result.pinned.extend(file.pinned.iter().map(|l| (rel.to_string(), *l)));
    if !file.changes.is_empty() {
        result.changes.extend(file.changes.into_iter().map(|(line, old, new)| Change { path: rel.to_string(), line, old, new }));
        writes.push((path.to_path_buf(), file.text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target { app: "app", repository: "reg/app", tag: "new", digest: "sha256:00", pin_digest: false, helm: None };

    #[test]
    fn rewrites_only_yaml_and_env_and_never_follows_symlinks() {
        let repo = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let manifest = "spec:\n  image: reg/app:old\n";
        std::fs::create_dir_all(repo.path().join("apps")).unwrap();
        std::fs::write(repo.path().join("apps/deploy.yaml"), manifest).unwrap();
        std::fs::write(repo.path().join("notes.txt"), manifest).unwrap();
        std::fs::write(outside.path().join("secret.yaml"), manifest).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), repo.path().join("link.yaml")).unwrap();
        std::os::unix::fs::symlink(outside.path(), repo.path().join("linkdir")).unwrap();

        let r = rewrite_tree(repo.path(), &T).unwrap();
        assert_eq!(r.references, 1);
        assert_eq!(
            r.changes,
            vec![Change { path: "apps/deploy.yaml".into(), line: 2, old: "reg/app:old".into(), new: "reg/app:new".into() }]
        );
        assert_eq!(std::fs::read_to_string(outside.path().join("secret.yaml")).unwrap(), manifest, "outside file untouched");
        assert_eq!(std::fs::read_to_string(repo.path().join("notes.txt")).unwrap(), manifest);
    }

    #[test]
    fn env_files_next_to_a_template_are_updated() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("deploy.yaml"), "image: reg/app:${IMAGE_TAG}\n").unwrap();
        std::fs::write(repo.path().join("prod.env"), "IMAGE_TAG=old\n").unwrap();
        let r = rewrite_tree(repo.path(), &T).unwrap();
        assert_eq!(r.references, 2);
        assert_eq!(std::fs::read_to_string(repo.path().join("prod.env")).unwrap(), "IMAGE_TAG=new\n");
        assert_eq!(std::fs::read_to_string(repo.path().join("deploy.yaml")).unwrap(), "image: reg/app:${IMAGE_TAG}\n");
    }

    #[test]
    fn a_non_utf8_env_file_that_names_the_image_is_left_behind_like_a_yaml_one() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("deploy.yaml"), "image: reg/app:old\n").unwrap();
        std::fs::write(repo.path().join("prod.env"), b"# caf\xe9\nIMAGE=reg/app\nIMAGE_TAG=old\n").unwrap();
        let err = rewrite_tree(repo.path(), &T).unwrap_err();
        assert!(err.to_string().ends_with("prod.env: not UTF-8, and it names the image"), "{err}");
        assert_eq!(std::fs::read_to_string(repo.path().join("deploy.yaml")).unwrap(), "image: reg/app:old\n", "nothing written");
        std::fs::write(repo.path().join("prod.env"), b"# caf\xe9\nOTHER=1\n").unwrap();
        assert_eq!(rewrite_tree(repo.path(), &T).unwrap().changes.len(), 1, "one that does not name it is skipped");
    }

    #[test]
    fn invalid_yaml_that_names_the_image_refuses_the_whole_rewrite() {
        let repo = tempfile::tempdir().unwrap();
        let broken = "image: reg/app:old\n  bad: [\n";
        let good = "image: reg/app:old\n";
        std::fs::write(repo.path().join("broken.yaml"), broken).unwrap();
        std::fs::write(repo.path().join("good.yaml"), good).unwrap();
        let err = rewrite_tree(repo.path(), &T).unwrap_err();
        let RewriteError::LeftBehind { left, .. } = &err else { panic!("{err}") };
        assert_eq!((left[0].path.as_str(), left[0].line), ("broken.yaml", 2), "{err}");
        assert!(
            err.to_string()
                .starts_with("1 reference(s) to reg/app cannot be rewritten, so no file was changed: broken.yaml:2: not valid YAML ("),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(repo.path().join("good.yaml")).unwrap(), good, "all or nothing");
        assert_eq!(std::fs::read_to_string(repo.path().join("broken.yaml")).unwrap(), broken);

        // Invalid YAML that does not name the image, and Go templates, are not references.
        std::fs::write(repo.path().join("broken.yaml"), "other: x\n  bad: [\n").unwrap();
        std::fs::write(repo.path().join("chart.yaml"), "image: \"reg/app:{{ .Values.tag }}\"\n{{- if .x }}\n").unwrap();
        let r = rewrite_tree(repo.path(), &T).unwrap();
        assert_eq!((r.references, r.changes.len()), (1, 1));
    }
}

//! Manifest rewriting: finds the references to an image repository in a manifest tree and
//! replaces only the bytes of their tag (and digest, where one is pinned). Files are never
//! re-serialized; symlinks are never followed, so nothing outside the repository is touched.

pub mod yaml;

use std::{
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

/// What a rewrite of a tree found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeRewrite {
    /// References to the repository found, current or not.
    pub references: usize,
    /// The ones that were changed (and written).
    pub changes: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The new value for an image reference.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub repository: &'a str,
    pub tag: &'a str,
    /// Written only where the manifest already pins a digest (`repo:tag@sha256:...`).
    pub digest: &'a str,
}

/// Rewrites every `.yaml`/`.yml` file under `root` (skipping `.git` and symlinks) and writes the
/// files that changed.
pub fn rewrite_tree(root: &Path, target: &Target<'_>) -> Result<TreeRewrite, RewriteError> {
    let mut result = TreeRewrite::default();
    let walk = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git");
    for entry in walk {
        let entry = entry.map_err(|e| RewriteError::Io {
            path: e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf()),
            source: e.into_io_error().unwrap_or_else(|| io::Error::other("walk error")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        let io_err = |source| RewriteError::Io { path: path.to_path_buf(), source };
        let Ok(text) = String::from_utf8(std::fs::read(path).map_err(io_err)?) else {
            tracing::warn!(path = %path.display(), "skipping a manifest that is not UTF-8");
            continue;
        };
        let rel = path.strip_prefix(root).expect("walkdir yields paths under its root").to_string_lossy().replace('\\', "/");
        let file = yaml::rewrite(&text, target);
        result.references += file.references;
        if !file.changes.is_empty() {
            std::fs::write(path, file.text.as_bytes()).map_err(io_err)?;
            result.changes.extend(file.changes.into_iter().map(|(line, old, new)| Change { path: rel.clone(), line, old, new }));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_yaml_and_never_follows_symlinks() {
        let repo = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let manifest = "spec:\n  image: reg/app:old\n";
        std::fs::create_dir_all(repo.path().join("apps")).unwrap();
        std::fs::write(repo.path().join("apps/deploy.yaml"), manifest).unwrap();
        std::fs::write(repo.path().join("notes.txt"), manifest).unwrap();
        std::fs::write(outside.path().join("secret.yaml"), manifest).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), repo.path().join("link.yaml")).unwrap();
        std::os::unix::fs::symlink(outside.path(), repo.path().join("linkdir")).unwrap();

        let t = Target { repository: "reg/app", tag: "new", digest: "sha256:00" };
        let r = rewrite_tree(repo.path(), &t).unwrap();
        assert_eq!(r.references, 1);
        assert_eq!(
            r.changes,
            vec![Change { path: "apps/deploy.yaml".into(), line: 2, old: "reg/app:old".into(), new: "reg/app:new".into() }]
        );
        assert_eq!(std::fs::read_to_string(outside.path().join("secret.yaml")).unwrap(), manifest, "outside file untouched");
        assert_eq!(std::fs::read_to_string(repo.path().join("notes.txt")).unwrap(), manifest);
    }
}

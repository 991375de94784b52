//! The manifest repository's side of the git transport: local remote paths and the stale-lock
//! cleanup. Credentials, the ssh host-key check and the errors that name their cause are the
//! shared `conveyor-git` crate's (ci-service fetches private app repositories with it).

use std::path::{Path, PathBuf};

/// How old a lock on a local remote's branch must be to count as left by a dead process: a live
/// update holds it for milliseconds.
pub const STALE_REMOTE_LOCK: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the branch's lock (and `packed-refs.lock`) in a local remote's git dir when it is
/// older than `STALE_REMOTE_LOCK`.
pub(super) fn remove_stale_remote_locks(git_dir: &Path, branch: &str) {
    for lock in [git_dir.join(format!("refs/heads/{branch}.lock")), git_dir.join("packed-refs.lock")] {
        let age = std::fs::metadata(&lock).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age > STALE_REMOTE_LOCK) {
            match std::fs::remove_file(&lock) {
                Ok(()) => {
                    tracing::warn!(path = %lock.display(), ?age, "removed a stale lock in the manifest repository (a writer died holding it)")
                }
                Err(e) => tracing::warn!(path = %lock.display(), error = %e, "cannot remove a stale lock in the manifest repository"),
            }
        }
    }
}

/// Removes `*.lock` files a killed process left in the clone's `.git` (index, HEAD, refs).
/// Only this service writes to its clone, and only while running, so at start-up every lock is
/// stale; left in place they would fail every later fetch and reset.
pub(super) fn remove_stale_locks(git_dir: &Path) {
    if !git_dir.is_dir() {
        return;
    }
    for entry in walkdir::WalkDir::new(git_dir).follow_links(false).into_iter().filter_map(Result::ok) {
        let is_lock = entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "lock");
        if is_lock && !entry.path().starts_with(git_dir.join("objects")) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::warn!(path = %entry.path().display(), "removed a stale git lock left by an earlier run"),
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale git lock"),
            }
        }
    }
}

/// The repository path of a remote on the local file system (`/path`, `./path`, `file://`),
/// or `None` for network remotes (ssh, scp-like `user@host:path`, https).
pub(super) fn local_remote_path(url: &str) -> Option<PathBuf> {
    if let Some(path) = url.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    if url.contains("://") {
        return None;
    }
    let path = Path::new(url);
    if path.is_absolute() || url.starts_with("./") || url.starts_with("../") || path.exists() {
        Some(path.to_path_buf())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_locks_of_a_killed_run_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        for f in ["index.lock", "HEAD.lock", "refs/heads/main.lock", "refs/heads/main"] {
            std::fs::write(git.join(f), "x").unwrap();
        }
        remove_stale_locks(&git);
        assert!(!git.join("index.lock").exists() && !git.join("HEAD.lock").exists() && !git.join("refs/heads/main.lock").exists());
        assert!(git.join("refs/heads/main").exists(), "only locks are removed");
    }

    #[test]
    fn tells_local_remotes_from_network_ones() {
        assert_eq!(local_remote_path("/srv/git/m.git"), Some(PathBuf::from("/srv/git/m.git")));
        assert_eq!(local_remote_path("file:///srv/m.git"), Some(PathBuf::from("/srv/m.git")));
        assert_eq!(local_remote_path("ssh://git@h:22/m.git"), None);
        assert_eq!(local_remote_path("git@github.com:org/m.git"), None);
        assert_eq!(local_remote_path("https://h/m.git"), None);
    }
}

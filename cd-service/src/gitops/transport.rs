//! The git transport of the manifest repository: credentials (deploy key, token), the ssh
//! host-key check against known_hosts, errors that name their cause (libgit2 replaces a
//! callback's error with its own message), remote URL parsing, and the stale-lock cleanup.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
};

use git2::{CertificateCheckStatus, Cred, ErrorCode, RemoteCallbacks};

use super::{GitOpsError, RepoConfig};

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

/// What the callbacks saw during one fetch or push: libgit2 replaces a callback's error with
/// its own generic message, so the cause is read from here instead.
#[derive(Default)]
pub(super) struct Seen {
    host: Cell<Option<HostVerdict>>,
    key_tries: Cell<u32>,
    offered: Cell<Option<Offered>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    SshKey,
    Token,
}

/// Credentials and host-key checks for the remote.
pub(super) fn callbacks<'a>(cfg: &'a RepoConfig, seen: &'a Seen) -> RemoteCallbacks<'a> {
    let mut cbs = RemoteCallbacks::new();
    let tries = &seen.key_tries;
    let auth = &cfg.auth;
    let offered = &seen.offered;
    cbs.credentials(move |_url, username, allowed| {
        tries.set(tries.get() + 1);
        // libgit2 calls again after refused credentials: stop instead of looping.
        if tries.get() > 2 {
            return Err(git2::Error::from_str("conveyor: credentials rejected"));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            offered.set(Some(Offered::Token));
            return match &auth.token {
                Some(token) => Cred::userpass_plaintext(username.unwrap_or(&auth.token_user), token.expose()),
                None => Err(git2::Error::from_str("conveyor: no token")),
            };
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return Cred::username(username.unwrap_or("git"));
        }
        offered.set(Some(Offered::SshKey));
        match &auth.ssh_key {
            Some(key) if allowed.contains(git2::CredentialType::SSH_KEY) => Cred::ssh_key(username.unwrap_or("git"), None, key, None),
            _ => Err(git2::Error::from_str("conveyor: the remote asks for credentials and no ssh key is configured")),
        }
    });
    let known_hosts = auth.known_hosts.clone().or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")));
    let port = ssh_port(&cfg.url);
    cbs.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey().and_then(|h| h.hostkey()) else {
            // Not ssh (https): let libgit2 apply its own TLS verification.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let verdict = match known_hosts.as_deref() {
            Some(path) => known_hosts_verdict(path, host, port, hostkey),
            None => HostVerdict::Unknown,
        };
        seen.host.set(Some(verdict));
        match verdict {
            HostVerdict::Match => Ok(CertificateCheckStatus::CertificateOk),
            HostVerdict::Mismatch => Err(git2::Error::from_str("conveyor: host-key-mismatch")),
            HostVerdict::Unknown => Err(git2::Error::from_str("conveyor: unknown-host")),
        }
    });
    cbs
}

/// Turns libgit2's messages from our callbacks into errors that name the cause.
pub(super) fn classify(cfg: &RepoConfig, seen: &Seen, e: git2::Error, otherwise: impl FnOnce(git2::Error) -> GitOpsError) -> GitOpsError {
    let msg = e.message();
    let kh = || cfg.auth.known_hosts.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.ssh/known_hosts".into());
    let host = || ssh_host(&cfg.url).unwrap_or_else(|| cfg.url.clone());
    match seen.host.get() {
        Some(HostVerdict::Mismatch) => return GitOpsError::HostKeyMismatch { host: host(), known_hosts: kh() },
        Some(HostVerdict::Unknown) => return GitOpsError::UnknownHost { host: host(), known_hosts: kh() },
        _ => {}
    }
    if msg.contains("conveyor: no token") {
        return GitOpsError::NoToken { url: cfg.url.clone() };
    }
    if seen.offered.get() == Some(Offered::Token)
        && (msg.contains("conveyor: credentials rejected") || seen.key_tries.get() > 1 || e.code() == ErrorCode::Auth)
    {
        return GitOpsError::TokenRejected { url: cfg.url.clone() };
    }
    if msg.contains("conveyor: credentials rejected")
        || seen.key_tries.get() > 1
        || (e.class() == git2::ErrorClass::Ssh && msg.to_ascii_lowercase().contains("authentication"))
    {
        GitOpsError::KeyRejected {
            key: cfg.auth.ssh_key.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none configured)".into()),
            url: cfg.url.clone(),
        }
    } else {
        otherwise(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostVerdict {
    Match,
    Mismatch,
    Unknown,
}

/// Looks `host` (and `[host]:port` for a non-22 port) up in a known_hosts file and compares
/// the key. Hashed entries (`|1|...`) are not supported and are skipped.
fn known_hosts_verdict(path: &Path, host: &str, port: u16, key: &[u8]) -> HostVerdict {
    use base64::Engine;
    let Ok(text) = std::fs::read_to_string(path) else { return HostVerdict::Unknown };
    let wanted = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    let mut seen = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if hosts.starts_with('#') || hosts.starts_with('|') || hosts.starts_with('@') {
            continue;
        }
        if !hosts.split(',').any(|h| h == wanted) {
            continue;
        }
        seen = true;
        if base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|k| k == key) {
            return HostVerdict::Match;
        }
    }
    if seen {
        HostVerdict::Mismatch
    } else {
        HostVerdict::Unknown
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

/// The port of an `ssh://` URL (22 for scp-like `user@host:path` and for no port).
fn ssh_port(url: &str) -> u16 {
    url.strip_prefix("ssh://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(22)
}

fn ssh_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("ssh://").unwrap_or(url);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    Some(authority.split(':').next()?.to_string())
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

    #[test]
    fn parses_ssh_urls() {
        assert_eq!(ssh_port("ssh://git@127.0.0.1:2222/srv/m.git"), 2222);
        assert_eq!(ssh_port("git@github.com:org/m.git"), 22);
        assert_eq!(ssh_host("ssh://git@127.0.0.1:2222/srv/m.git").as_deref(), Some("127.0.0.1"));
        assert_eq!(ssh_host("git@github.com:org/m.git").as_deref(), Some("github.com"));
    }

    #[test]
    fn known_hosts_lookup_distinguishes_mismatch_from_unknown() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let key = b"key-bytes".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        std::fs::write(&path, format!("# c\n|1|hashed ssh-ed25519 AAAA\n[127.0.0.1]:2222,other ssh-ed25519 {b64}\n")).unwrap();
        assert!(matches!(known_hosts_verdict(&path, "127.0.0.1", 2222, &key), HostVerdict::Match));
        assert!(matches!(known_hosts_verdict(&path, "127.0.0.1", 2222, b"other"), HostVerdict::Mismatch));
        assert!(matches!(known_hosts_verdict(&path, "127.0.0.1", 22, &key), HostVerdict::Unknown));
    }
}

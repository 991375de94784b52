//! The git transport of both services: how to authenticate to a remote (an ssh deploy key, or
//! a token sent as the password of HTTP basic auth), the ssh host-key check against a
//! known_hosts file, and errors that name the cause (libgit2 replaces a callback's error with
//! its own generic message, so the callbacks record what they saw and [`classify`] reads it).

use std::{
    cell::Cell,
    path::{Path, PathBuf},
};

use git2::{CertificateCheckStatus, Cred, ErrorCode, RemoteCallbacks};

pub use conveyor_proto::Secret;

/// How to reach a remote.
#[derive(Debug, Clone, Default)]
pub struct GitAuth {
    /// Private key for ssh remotes (a deploy key).
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file the ssh host key is checked against (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Token for https remotes, sent as the password of HTTP basic auth.
    pub token: Option<Secret>,
    /// User name sent with the token (`x-access-token` suits GitHub; GitLab takes any name).
    pub token_user: String,
}

/// Makes TLS verification (https remotes) use this CA bundle instead of the system's. Process-
/// wide: call once at start-up, before any git operation runs.
pub fn set_ca_file(path: &Path) -> Result<(), git2::Error> {
    // SAFETY: libgit2's global options are set before any thread uses libgit2 (start-up only).
    unsafe { git2::opts::set_ssl_cert_file(path) }
}

/// Why a remote could not be reached, when the cause is the transport's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("ssh host key of {host} does not match the known_hosts entry ({known_hosts}): refusing to connect")]
    HostKeyMismatch { host: String, known_hosts: String },
    #[error("ssh host {host} is not in known_hosts ({known_hosts}): add it (ssh-keyscan) before connecting")]
    UnknownHost { host: String, known_hosts: String },
    #[error("the server refused the deploy key {key} for {url} (is it added as a deploy key of the repository?)")]
    KeyRejected { key: String, url: String },
    #[error("the server refused the token for {url} (expired, revoked, or without access to the repository?)")]
    TokenRejected { url: String },
    #[error("{url} asks for a user name and password and no token is configured for it")]
    NoToken { url: String },
}

/// What the callbacks saw during one fetch or push.
#[derive(Default)]
pub struct Seen {
    host: Cell<Option<HostVerdict>>,
    key_tries: Cell<u32>,
    offered: Cell<Option<Offered>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    SshKey,
    Token,
}

/// Credentials and host-key checks for the remote at `url`.
pub fn callbacks<'a>(url: &str, auth: &'a GitAuth, seen: &'a Seen) -> RemoteCallbacks<'a> {
    let mut cbs = RemoteCallbacks::new();
    let tries = &seen.key_tries;
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
    let port = ssh_port(url);
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

/// The transport cause of a failed fetch or push of `url`, if the callbacks saw one; `None`
/// means the error is git's own (the caller names it).
pub fn classify(url: &str, auth: &GitAuth, seen: &Seen, e: &git2::Error) -> Option<TransportError> {
    let msg = e.message();
    let kh = || auth.known_hosts.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.ssh/known_hosts".into());
    let host = || ssh_host(url).unwrap_or_else(|| url.to_string());
    match seen.host.get() {
        Some(HostVerdict::Mismatch) => return Some(TransportError::HostKeyMismatch { host: host(), known_hosts: kh() }),
        Some(HostVerdict::Unknown) => return Some(TransportError::UnknownHost { host: host(), known_hosts: kh() }),
        _ => {}
    }
    if msg.contains("conveyor: no token") {
        return Some(TransportError::NoToken { url: url.to_string() });
    }
    if seen.offered.get() == Some(Offered::Token)
        && (msg.contains("conveyor: credentials rejected") || seen.key_tries.get() > 1 || e.code() == ErrorCode::Auth)
    {
        return Some(TransportError::TokenRejected { url: url.to_string() });
    }
    if msg.contains("conveyor: credentials rejected")
        || seen.key_tries.get() > 1
        || (e.class() == git2::ErrorClass::Ssh && msg.to_ascii_lowercase().contains("authentication"))
    {
        let key = auth.ssh_key.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none configured)".into());
        return Some(TransportError::KeyRejected { key, url: url.to_string() });
    }
    None
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

//! Field validation for the event contract: OCI tag and repository grammar, digests, commit ids,
//! app names and trace context. Pure functions; each error names the field and the bad value.

use thiserror::Error;

/// Why an event (or one of its fields) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("malformed event payload: {0}")]
    Malformed(String),
    #[error("event version {found} is not supported (this build understands version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("field `{field}` must not be empty")]
    Empty { field: &'static str },
    #[error("invalid image tag {tag:?}: an OCI tag is 1-128 characters of [A-Za-z0-9_.-] and does not start with '.' or '-'")]
    InvalidTag { tag: String },
    #[error("invalid image digest {digest:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest { digest: String },
    #[error("invalid app name {app:?}: expected a DNS label (lowercase letters, digits and '-', 1-63 characters, not starting or ending with '-')")]
    InvalidApp { app: String },
    #[error("invalid image repository {repository:?}: {reason}")]
    InvalidRepository { repository: String, reason: &'static str },
    #[error("invalid environment name {environment:?}: expected a DNS label")]
    InvalidEnvironment { environment: String },
    #[error("invalid commit id {commit:?}: expected 40 or 64 lowercase hex characters")]
    InvalidCommit { commit: String },
    #[error("invalid traceparent {value:?}: expected 00-<32 hex>-<16 hex>-<2 hex>")]
    InvalidTraceparent { value: String },
    #[error("field `{field}` is {len} bytes long, more than the {max} allowed")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("field `{field}` contains a control character (a line break would forge commit trailers)")]
    ControlCharacter { field: &'static str },
    #[error("the event is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn non_empty(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::Empty { field });
    }
    Ok(())
}

/// A free-text field that ends up in commit messages, trailers and logs: not empty, at most
/// `max` bytes, one line without control characters.
pub(crate) fn bounded_text(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    non_empty(field, value)?;
    if value.len() > max {
        return Err(ValidationError::TooLong { field, len: value.len(), max });
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter { field });
    }
    Ok(())
}

/// OCI distribution tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn tag(tag: &str) -> Result<(), ValidationError> {
    let bytes = tag.as_bytes();
    let first_ok = bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !first_ok || !rest_ok || bytes.len() > 128 {
        return Err(ValidationError::InvalidTag { tag: tag.to_string() });
    }
    Ok(())
}

/// `sha256:` followed by 64 lowercase hex characters.
pub fn digest(digest: &str) -> Result<(), ValidationError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && is_lower_hex(hex) => Ok(()),
        _ => Err(ValidationError::InvalidDigest { digest: digest.to_string() }),
    }
}

/// A DNS label: safe as a NATS subject token, a path component and a Kubernetes name.
pub fn app_name(app: &str) -> Result<(), ValidationError> {
    let b = app.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if !ok {
        return Err(ValidationError::InvalidApp { app: app.to_string() });
    }
    Ok(())
}

/// An environment name: a DNS label, like app names.
pub fn environment(environment: &str) -> Result<(), ValidationError> {
    app_name(environment).map_err(|_| ValidationError::InvalidEnvironment { environment: environment.to_string() })
}

/// A full commit id.
pub fn commit(commit: &str) -> Result<(), ValidationError> {
    if (commit.len() == 40 || commit.len() == 64) && is_lower_hex(commit) {
        Ok(())
    } else {
        Err(ValidationError::InvalidCommit { commit: commit.to_string() })
    }
}

/// W3C trace context, version 00.
pub fn traceparent(value: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = value.split('-').collect();
    let ok = parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts.iter().all(|p| is_lower_hex(p))
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::InvalidTraceparent { value: value.to_string() })
    }
}

/// OCI distribution repository grammar: an optional registry host (`host[:port]`, recognised
/// by a '.' or ':' or being `localhost`) then '/'-separated path components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; at most 255 characters; no tag or digest.
pub fn image_repository(repository: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::InvalidRepository { repository: repository.to_string(), reason });
    if repository.is_empty() || repository.len() > 255 {
        return bad("must be 1-255 characters");
    }
    if repository.contains('@') {
        return bad("must not contain a digest");
    }
    let mut parts: Vec<&str> = repository.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            if !is_registry_host(first) {
                return bad("the registry host is not host[:port]");
            }
            parts.remove(0);
        }
    }
    for part in parts {
        if !is_path_component(part) {
            return bad("path components are lowercase [a-z0-9] joined by '.', '_', '__' or '-' (a tag belongs in the tag field)");
        }
    }
    Ok(())
}

fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') && b[0] != b'-' && b[b.len() - 1] != b'-'
        })
}

fn is_path_component(part: &str) -> bool {
    let b = part.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "3f2a9c1", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(tag(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", ".hidden", "-x", "a:b", "a/b", "ü", "a b", "x\n", &"a".repeat(129)] {
            assert!(tag(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn digest_grammar() {
        assert!(digest(&format!("sha256:{}", "0a".repeat(32))).is_ok());
        assert!(digest(&format!("sha256:{}", "0A".repeat(32))).is_err());
        assert!(digest(&format!("sha512:{}", "0a".repeat(32))).is_err());
        assert!(digest("sha256:abc").is_err());
    }

    #[test]
    fn app_names_are_dns_labels() {
        assert!(app_name("flask-app").is_ok());
        assert!(app_name("a").is_ok());
        for bad in ["", "-a", "a-", "Web", "a.b", "a_b", "a>b", "a*", &"a".repeat(64)] {
            assert!(app_name(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn repository_grammar() {
        for ok in [
            "flask-app",
            "library/flask",
            "127.0.0.1:5000/flask-app",
            "localhost/team/app",
            "registry.example.com/team/my_app",
            "ghcr.io/org/a__b",
            "reg:5000/a.b/c--d",
        ] {
            assert!(image_repository(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "Flask", "reg:5000/app:tag", "reg:99999/app", "reg:/app", "app@sha256:00", "a//b", "team/-app", "team/app.", "a_-b"]
        {
            assert!(image_repository(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn commit_and_traceparent() {
        assert!(commit(&"a".repeat(40)).is_ok());
        assert!(commit(&"a".repeat(64)).is_ok());
        assert!(commit("abc1234").is_err());
        assert!(traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok());
        assert!(traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err());
        assert!(traceparent("garbage").is_err());
    }
}

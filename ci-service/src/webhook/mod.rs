//! Push intake: turns a forge webhook (GitHub, GitLab, Gitea/Forgejo) or a generic push
//! notification into a verified, validated [`PushRequest`]. The signature (or token) is checked
//! on the raw bytes against the configured secrets before anything is parsed; once the payload
//! names its repository, the secret must be that repository's, and the app it builds is derived
//! from that one authenticated name and must be granted to it ([`WebhookSecrets::grant`]). It
//! never enqueues or builds (the HTTP handler enqueues, a worker builds).

pub mod forges;
pub mod generic;
pub mod signature;

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::secrets::{Proof, WebhookSecrets};
use conveyor_proto::validate;

pub use conveyor_api::ci::{PushRequest, RefKind, Source};

/// What to do with a well-formed, authentic notification.
// One per request, moved on at once: boxing the push would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    Build(PushRequest),
    /// Accepted and deliberately not built; the reason goes back to the sender.
    Ignore(String),
    /// A forge's ping (GitHub `ping`): answered, nothing else.
    Pong,
}

/// Why a notification was refused; each maps to one 4xx status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntakeError {
    #[error("{0}")]
    Unauthorized(String),
    /// Authentic, but asks for an app or image its repository may not build.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<validate::ValidationError> for IntakeError {
    fn from(e: validate::ValidationError) -> Self {
        IntakeError::Invalid(e.to_string())
    }
}

/// Reads any supported notification: the forge is recognised by its event header, and its
/// credential is checked on the raw body before the body is parsed.
pub fn intake(headers: &HeaderMap, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    require_json(headers)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Gitea and Forgejo also send X-GitHub-Event for compatibility: look at theirs first.
    if let Some(event) = header("x-forgejo-event").or(header("x-gitea-event")) {
        let signature = header("x-forgejo-signature").or(header("x-gitea-signature")).or(header("x-hub-signature-256"));
        let delivery = header("x-forgejo-delivery").or(header("x-gitea-delivery"));
        let proof = prove(secrets, Credential::Hmac { signature, body })?;
        return forges::gitea(event, &proof, delivery, body, secrets);
    }
    if let Some(event) = header("x-github-event") {
        let proof = prove(secrets, Credential::Hmac { signature: header("x-hub-signature-256"), body })?;
        return forges::github(event, &proof, header("x-github-delivery"), body, secrets);
    }
    if let Some(event) = header("x-gitlab-event") {
        let delivery = header("x-gitlab-event-uuid").or(header("x-gitlab-webhook-uuid"));
        let proof = prove(secrets, Credential::Token(header("x-gitlab-token")))?;
        return forges::gitlab(event, &proof, delivery, body, secrets);
    }
    let signature = header("x-conveyor-signature-256").or(header("x-hub-signature-256"));
    let proof = prove(secrets, Credential::Hmac { signature, body })?;
    generic::intake(&proof, body, secrets)
}

fn require_json(headers: &HeaderMap) -> Result<(), IntakeError> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(IntakeError::UnsupportedMediaType(format!(
            "content type {ct:?} is not supported: configure the webhook to send application/json"
        )))
    }
}

/// Parses JSON into `T`, naming the failing field in the error.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, IntakeError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            IntakeError::Invalid(format!("payload field `{path}`: {inner}"))
        } else {
            IntakeError::Malformed(format!("malformed JSON: {inner}"))
        }
    })
}

/// How a sender proves it knows the repository's secret.
pub(crate) enum Credential<'a> {
    /// `sha256=<hex>` or bare hex HMAC-SHA256 of the body.
    Hmac { signature: Option<&'a str>, body: &'a [u8] },
    /// The secret itself (GitLab's `X-Gitlab-Token`).
    Token(Option<&'a str>),
}

/// Checks the credential of a notification against every configured secret, on the raw body:
/// nothing is parsed for a sender that holds none of them.
pub(crate) fn prove(secrets: &WebhookSecrets, credential: Credential<'_>) -> Result<Proof, IntakeError> {
    let (given, what) = match credential {
        Credential::Hmac { signature, .. } => (signature, "signature"),
        Credential::Token(token) => (token, "token"),
    };
    let result = match credential {
        Credential::Hmac { body, .. } => secrets.prove(given, |s, v| signature::verify_hmac(std::slice::from_ref(s), body, v)),
        Credential::Token(_) => secrets.prove(given, |s, v| signature::verify_token(std::slice::from_ref(s), v)),
    };
    result.map_err(|why| match given {
        None => IntakeError::Unauthorized(format!("missing {what} header")),
        Some(_) if secrets.is_empty() => IntakeError::Unauthorized("no webhook secret is configured".into()),
        Some(_) => IntakeError::Unauthorized(format!("{what} {why}")),
    })
}

/// Authenticates the sender for the repository known by `names` (once the payload named it):
/// the secret that matched must be one of that repository's.
pub(crate) fn authenticate(secrets: &WebhookSecrets, proof: &Proof, names: &[&str]) -> Result<(), IntakeError> {
    if secrets.proves(proof, names) {
        Ok(())
    } else if proof.is_unsigned() {
        Err(IntakeError::Unauthorized(format!("missing signature header for repository {}", names[0])))
    } else if secrets.for_repo(names).is_empty() {
        Err(IntakeError::Unauthorized(format!("repository {} has no webhook secret and sent a signed webhook", names[0])))
    } else {
        Err(IntakeError::Unauthorized(format!("the signature is not one of repository {}'s secrets", names[0])))
    }
}

/// The app a push of the repository known by `names` builds: `requested`, else derived from
/// the first (authenticated) name; it must be granted to that repository.
pub(crate) fn bound_app(secrets: &WebhookSecrets, names: &[&str], requested: Option<&str>) -> Result<String, IntakeError> {
    let app = match requested {
        Some(app) => {
            validate::app_name(app)?;
            app.to_string()
        }
        None => app_from_repo_url(names[0])
            .ok_or_else(|| IntakeError::Invalid(format!("cannot derive an app name from repository {:?}", names[0])))?,
    };
    secrets.grant(names, &app).map_err(IntakeError::Forbidden)?;
    Ok(app)
}

/// A repository URL git would read as an option or a remote helper (`--upload-pack=...`,
/// `ext::sh -c ...`, an ssh host `-oProxyCommand=...`) is refused, and so is a local path or
/// `file://` URL unless local repositories are allowed.
pub fn check_repo_url(url: &str, allow_local: bool) -> Result<(), IntakeError> {
    let refuse = |why: &str| Err(IntakeError::Invalid(format!("repo_url {url:?} is refused: {why}")));
    if url.len() > conveyor_proto::event::MAX_URL_BYTES {
        return refuse("longer than 4096 bytes");
    }
    if url.is_empty() || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("empty, or it contains a space or a control character");
    }
    if url.starts_with('-') {
        return refuse("it begins with `-` (git would read it as an option)");
    }
    let lower = url.to_ascii_lowercase();
    if let Some((scheme, rest)) = lower.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git" => {
                let host = rest.split(['/', '?']).next().unwrap_or("").rsplit('@').next().unwrap_or("");
                if host.is_empty() || host.starts_with('-') {
                    refuse("its host is empty or begins with `-`")
                } else {
                    Ok(())
                }
            }
            "file" if allow_local => Ok(()),
            "file" => refuse("local repositories are not allowed (--allow-local-repos)"),
            _ => refuse("only https, http, ssh and git URLs are fetched"),
        };
    }
    if lower.contains("::") {
        return refuse("`<transport>::<address>` runs a git remote helper");
    }
    // scp-like `user@host:path`: a colon before any slash.
    if let Some((host, _)) = url.split_once(':').filter(|(h, _)| !h.contains('/')) {
        let host = host.rsplit('@').next().unwrap_or("");
        return if host.is_empty() || host.starts_with('-') { refuse("its host is empty or begins with `-`") } else { Ok(()) };
    }
    if allow_local {
        Ok(())
    } else {
        refuse("local repositories are not allowed (--allow-local-repos)")
    }
}

/// What a pushed ref means for the build.
pub(crate) enum RefTarget {
    Build { kind: RefKind, name: String },
    Ignore(String),
}

/// Classifies a pushed ref; `deleted` covers an all-zero `after`.
pub(crate) fn classify_ref(git_ref: &str, after: &str, deleted: bool) -> Result<RefTarget, IntakeError> {
    let deleted = deleted || (!after.is_empty() && after.bytes().all(|b| b == b'0'));
    let (kind, name) = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (RefKind::Branch, b)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (RefKind::Tag, t)
    } else {
        return Ok(RefTarget::Ignore(format!("ref {git_ref:?} is neither a branch nor a tag")));
    };
    if name.is_empty() {
        return Err(IntakeError::Invalid(format!("ref {git_ref:?} has no name")));
    }
    ref_name(git_ref, name).map_err(|why| IntakeError::Invalid(format!("ref {git_ref:?} is not a valid git ref name: {why}")))?;
    if deleted {
        let what = if kind == RefKind::Branch { "branch" } else { "tag" };
        return Ok(RefTarget::Ignore(format!("{what} deletion")));
    }
    if kind == RefKind::Tag {
        validate::tag(name).map_err(|e| IntakeError::Invalid(format!("git tag {name:?} cannot name an image: {e}")))?;
    }
    validate::commit(after)?;
    Ok(RefTarget::Build { kind, name: name.to_string() })
}

/// A branch or tag name git accepts: libgit2's ref-name rules (those of `git check-ref-format`)
/// on the full ref, plus git's refusal of names beginning with `-` (they would read as options)
/// and of `@` (HEAD's shorthand).
fn ref_name(git_ref: &str, name: &str) -> Result<(), &'static str> {
    if name.starts_with('-') {
        return Err("it begins with `-`");
    }
    if name == "@" {
        return Err("`@` is HEAD's shorthand");
    }
    if !git2::Reference::is_valid_name(git_ref) {
        return Err("git's rules refuse it (spaces, control characters, ~^:?*[\\, `..`, `@{`, an empty or dot-led component, or a `.lock` or `.` ending)");
    }
    Ok(())
}

/// True for commit messages that ask CI to skip them.
pub fn skips_ci(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["[skip ci]", "[ci skip]", "[no ci]", "[skip conveyor]"].iter().any(|marker| m.contains(marker))
}

/// Derives an app name from a repository URL: the last path component without `.git`,
/// lowercased, other characters turned into `-`. `None` if nothing valid is left.
pub fn app_from_repo_url(repo_url: &str) -> Option<String> {
    let last = repo_url.trim_end_matches('/').rsplit(['/', ':']).next()?;
    let last = last.strip_suffix(".git").unwrap_or(last);
    let mut name: String = last.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    name = name.trim_matches('-').to_string();
    name.truncate(63);
    let name = name.trim_end_matches('-').to_string();
    validate::app_name(&name).ok().map(|_| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_app_names() {
        assert_eq!(app_from_repo_url("/srv/git/flask-app.git").as_deref(), Some("flask-app"));
        assert_eq!(app_from_repo_url("git@github.com:org/My_App.git").as_deref(), Some("my-app"));
        assert_eq!(app_from_repo_url("https://example.com/org/web/").as_deref(), Some("web"));
        assert_eq!(app_from_repo_url("/srv/git/___.git"), None);
    }

    #[test]
    fn recognises_skip_markers() {
        assert!(skips_ci("docs: typo [skip ci]"));
        assert!(skips_ci("[CI SKIP] wip"));
        assert!(!skips_ci("skip the ci for now"));
    }

    #[test]
    fn classifies_refs() {
        let sha = "a".repeat(40);
        assert!(matches!(classify_ref("refs/heads/main", &sha, false), Ok(RefTarget::Build { kind: RefKind::Branch, .. })));
        assert!(matches!(classify_ref("refs/tags/v1.2.0", &sha, false), Ok(RefTarget::Build { kind: RefKind::Tag, .. })));
        assert!(matches!(classify_ref("refs/heads/main", &"0".repeat(40), false), Ok(RefTarget::Ignore(r)) if r == "branch deletion"));
        assert!(matches!(classify_ref("refs/notes/x", &sha, false), Ok(RefTarget::Ignore(_))));
        assert!(matches!(classify_ref("refs/tags/v1+meta", &sha, false), Err(IntakeError::Invalid(_))));
        assert!(matches!(classify_ref("refs/heads/main", "abc", false), Err(IntakeError::Invalid(_))));
        for name in ["feature/login-form", "release/1.2", "user@host", "a.b"] {
            assert!(matches!(classify_ref(&format!("refs/heads/{name}"), &sha, false), Ok(RefTarget::Build { .. })), "{name}");
        }
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-x",
            "a b",
            "a..b",
            "a/.b",
            "a//b",
            "a/",
            "x.lock",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a@{1}",
            "@",
            "a.",
            "tab\tx",
        ] {
            assert!(matches!(classify_ref(&format!("refs/heads/{bad}"), &sha, false), Err(IntakeError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn refuses_repo_urls_git_would_read_as_options_or_helpers() {
        for ok in ["https://github.com/org/app.git", "ssh://git@host:22/org/app.git", "git@github.com:org/app.git", "git://h/x"] {
            assert!(check_repo_url(ok, false).is_ok(), "{ok}");
        }
        for local in ["/srv/git/app.git", "file:///srv/git/app.git", "../app.git"] {
            assert!(check_repo_url(local, false).is_err(), "{local}: local needs --allow-local-repos");
            assert!(check_repo_url(local, true).is_ok(), "{local}");
        }
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-u",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "ssh://-oProxyCommand=touch /tmp/x/foo",
            "ssh://git@-oProxyCommand=x/foo",
            "-oProxyCommand=x:foo",
            "gopher://x/y",
            "https://exa mple/x",
        ] {
            assert!(check_repo_url(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_repo_url(&format!("https://h/{}", "a".repeat(5000)), true).is_err());
    }

    #[test]
    fn only_json_is_accepted() {
        let mut h = HeaderMap::new();
        assert!(matches!(require_json(&h), Err(IntakeError::UnsupportedMediaType(_))));
        h.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
        assert!(matches!(require_json(&h), Err(IntakeError::UnsupportedMediaType(_))));
        h.insert("content-type", "application/json; charset=utf-8".parse().unwrap());
        assert!(require_json(&h).is_ok());
    }
}

//! The generic push format: a JSON body `{repo_url, ref, commit, app?}`, sent by the
//! `hooks/post-receive` script of a bare repository or by any script, signed like GitHub's
//! (`X-Conveyor-Signature-256: sha256=<hex HMAC of the body>`).

use serde::Deserialize;

use super::{authenticate, bound_app, check_repo_url, classify_ref, parse_json, Intake, IntakeError, PushRequest, RefTarget, Source};
use crate::secrets::{Proof, WebhookSecrets};

/// The body of a generic push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericPush {
    pub repo_url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The pushed commit (post-receive's `newrev`).
    pub commit: String,
    /// The previous commit (post-receive's `oldrev`); informational.
    #[serde(default)]
    pub before: Option<String>,
    /// Overrides the app name derived from `repo_url`.
    #[serde(default)]
    pub app: Option<String>,
    /// The sender's id for this notification, if it has one.
    #[serde(default)]
    pub delivery: Option<String>,
}

/// A generic push whose signature already matched a configured secret (see [`super::prove`]).
pub fn intake(proof: &Proof, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    let push: GenericPush = parse_json(body)?;
    let repo_url = push.repo_url.trim().to_string();
    if repo_url.is_empty() {
        return Err(IntakeError::Invalid("field `repo_url` must not be empty".into()));
    }
    authenticate(secrets, proof, &[repo_url.as_str()])?;
    push.into_intake(Source::Generic, secrets)
}

impl GenericPush {
    /// Interprets an authenticated (or manual) push: the app is `app` or derived from
    /// `repo_url`, and must be granted to that repository.
    pub fn into_intake(self, source: Source, secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
        let repo_url = self.repo_url.trim().to_string();
        let (ref_kind, ref_name) = match classify_ref(&self.git_ref, &self.commit, false)? {
            RefTarget::Ignore(reason) => return Ok(Intake::Ignore(reason)),
            RefTarget::Build { kind, name } => (kind, name),
        };
        check_repo_url(&repo_url, secrets.allow_local_repos)?;
        let app = bound_app(secrets, &[repo_url.as_str()], self.app.as_deref())?;
        Ok(Intake::Build(PushRequest {
            app,
            repo_url: repo_url.clone(),
            git_ref: self.git_ref,
            ref_kind,
            ref_name,
            commit: self.commit,
            tag_object: None,
            source,
            delivery: self.delivery,
            authenticated_repo: Some(repo_url),
            forge: None,
            pull_request: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{secrets::Secret, webhook::signature::sign};

    fn secrets() -> WebhookSecrets {
        local(WebhookSecrets::new(vec![Secret::new("s3cr3t-value")], None, false).unwrap())
    }

    fn local(mut s: WebhookSecrets) -> WebhookSecrets {
        s.allow_local_repos = true;
        s
    }

    /// The whole intake of a generic body: the credential on the raw bytes, then the payload.
    fn intake(signature: Option<&str>, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
        let proof = crate::webhook::prove(secrets, crate::webhook::Credential::Hmac { signature, body })?;
        super::intake(&proof, body, secrets)
    }

    fn body(git_ref: &str, commit: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"repo_url": "/srv/git/flask-app.git", "ref": git_ref, "commit": commit})).unwrap()
    }

    fn signed(b: &[u8]) -> String {
        format!("sha256={}", sign(&Secret::new("s3cr3t-value"), b))
    }

    #[test]
    fn accepts_a_signed_branch_push() {
        let sha = "a".repeat(40);
        let b = body("refs/heads/main", &sha);
        let Intake::Build(req) = intake(Some(&signed(&b)), &b, &secrets()).unwrap() else { panic!("should build") };
        assert_eq!((req.app.as_str(), req.ref_name.as_str(), req.commit.as_str()), ("flask-app", "main", sha.as_str()));
    }

    #[test]
    fn refuses_unsigned_and_missigned_pushes_unless_unsigned_is_allowed() {
        let b = body("refs/heads/main", &"a".repeat(40));
        assert!(matches!(intake(None, &b, &secrets()), Err(IntakeError::Unauthorized(_))));
        assert!(matches!(intake(Some("sha256=00"), &b, &secrets()), Err(IntakeError::Unauthorized(_))));
        let open = local(WebhookSecrets::new(vec![], None, true).unwrap());
        assert!(matches!(intake(None, &b, &open), Ok(Intake::Build(_))));
        let closed = local(WebhookSecrets::new(vec![], None, false).unwrap());
        assert!(matches!(intake(None, &b, &closed), Err(IntakeError::Unauthorized(_))));
    }

    #[test]
    fn ignores_deletions_and_refuses_bad_input() {
        let open = local(WebhookSecrets::new(vec![], None, true).unwrap());
        assert_eq!(intake(None, &body("refs/heads/main", &"0".repeat(40)), &open), Ok(Intake::Ignore("branch deletion".into())));
        assert!(matches!(intake(None, &body("refs/heads/main", "abc"), &open), Err(IntakeError::Invalid(_))));
        assert!(matches!(intake(None, b"{not json", &open), Err(IntakeError::Malformed(_))));
        let e = intake(None, br#"{"repo_url": "/r.git", "ref": 5, "commit": "x"}"#, &open).unwrap_err();
        assert!(matches!(&e, IntakeError::Invalid(m) if m.contains("`ref`")), "{e:?}");
    }

    #[test]
    fn an_unsigned_or_missigned_body_is_refused_before_it_is_parsed() {
        // Garbage that would be `400 malformed_json` once read: without a valid signature it is
        // never read, so the answer is 401.
        for body in [&b"{ not json"[..], b"\x00\xff", br#"{"repo_url": 5}"#] {
            assert!(matches!(intake(None, body, &secrets()), Err(IntakeError::Unauthorized(_))), "{body:?}");
            assert!(matches!(intake(Some("sha256=00"), body, &secrets()), Err(IntakeError::Unauthorized(_))), "{body:?}");
        }
        assert!(matches!(intake(Some(&signed(b"{ not json")), b"{ not json", &secrets()), Err(IntakeError::Malformed(_))));
    }

    #[test]
    fn the_app_field_may_not_claim_an_app_of_another_repository() {
        let file: crate::secrets::SecretsFile = serde_norway::from_str("repos:\n  /srv/git/protected-app.git: [p1]\n").unwrap();
        let s = local(WebhookSecrets::new(vec![Secret::new("s3cr3t-value")], Some(file), false).unwrap());
        let body = serde_json::to_vec(&serde_json::json!({
            "repo_url": "/srv/git/evil.git", "ref": "refs/heads/main", "commit": "a".repeat(40), "app": "protected-app"
        }))
        .unwrap();
        let e = intake(Some(&signed(&body)), &body, &s).unwrap_err();
        assert!(matches!(&e, IntakeError::Forbidden(m) if m.contains("belongs to repository /srv/git/protected-app")), "{e:?}");
    }
}

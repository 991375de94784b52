//! The generic push format: a JSON body `{repo_url, ref, commit, app?}`, sent by the
//! `hooks/post-receive` script of a bare repository or by any script. Forge formats (GitHub,
//! GitLab, Gitea) are separate modules that produce the same [`PushRequest`].

use serde::Deserialize;

use super::{app_from_repo_url, PushRequest};
use conveyor_proto::validate;

/// The body of `POST /hooks/push`.
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
}

/// What to do with a push that is well-formed.
#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    Build(PushRequest),
    /// Accepted and deliberately not built (e.g. a branch deletion); the reason is returned to the sender.
    Ignore(&'static str),
}

/// Why a push body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntakeError {
    #[error("field `repo_url` must not be empty")]
    EmptyRepoUrl,
    #[error("ref {0:?} is not a branch (refs/heads/...); tag pushes are not built yet")]
    UnsupportedRef(String),
    #[error(transparent)]
    Invalid(#[from] validate::ValidationError),
    #[error("cannot derive an app name from repo_url {0:?}; pass `app` explicitly")]
    NoAppName(String),
}

impl GenericPush {
    pub fn into_intake(self) -> Result<Intake, IntakeError> {
        let repo_url = self.repo_url.trim().to_string();
        if repo_url.is_empty() {
            return Err(IntakeError::EmptyRepoUrl);
        }
        let Some(branch) = self.git_ref.strip_prefix("refs/heads/").filter(|b| !b.is_empty()) else {
            return Err(IntakeError::UnsupportedRef(self.git_ref));
        };
        if !self.commit.is_empty() && self.commit.bytes().all(|b| b == b'0') {
            return Ok(Intake::Ignore("branch deletion"));
        }
        validate::commit(&self.commit)?;
        let app = match self.app {
            Some(app) => {
                validate::app_name(&app)?;
                app
            }
            None => app_from_repo_url(&repo_url).ok_or_else(|| IntakeError::NoAppName(repo_url.clone()))?,
        };
        Ok(Intake::Build(PushRequest { app, branch: branch.to_string(), repo_url, git_ref: self.git_ref, commit: self.commit }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(git_ref: &str, commit: &str) -> GenericPush {
        GenericPush { repo_url: "/srv/git/flask-app.git".into(), git_ref: git_ref.into(), commit: commit.into(), before: None, app: None }
    }

    #[test]
    fn accepts_a_branch_push() {
        let sha = "a".repeat(40);
        let Intake::Build(req) = push("refs/heads/main", &sha).into_intake().unwrap() else { panic!("should build") };
        assert_eq!((req.app.as_str(), req.branch.as_str(), req.commit.as_str()), ("flask-app", "main", sha.as_str()));
    }

    #[test]
    fn ignores_branch_deletion() {
        assert_eq!(push("refs/heads/main", &"0".repeat(40)).into_intake(), Ok(Intake::Ignore("branch deletion")));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(push("refs/tags/v1", &"a".repeat(40)).into_intake(), Err(IntakeError::UnsupportedRef(_))));
        assert!(matches!(push("refs/heads/main", "abc").into_intake(), Err(IntakeError::Invalid(_))));
        let mut p = push("refs/heads/main", &"a".repeat(40));
        p.app = Some("Bad App".into());
        assert!(matches!(p.into_intake(), Err(IntakeError::Invalid(_))));
    }
}

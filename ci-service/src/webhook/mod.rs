//! Push intake: turns an incoming push notification into a validated [`PushRequest`] and hands
//! it to the build queue. Handlers verify and enqueue; they never build inline.

pub mod generic;

use serde::Serialize;

/// A push that should be built: one commit of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushRequest {
    /// Application name (DNS label); derives the image repository and the event subject.
    pub app: String,
    /// Where the commit is fetched from (URL or local path).
    pub repo_url: String,
    /// The full ref that was pushed, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The branch name, `main`.
    pub branch: String,
    /// Full commit id.
    pub commit: String,
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
    conveyor_proto::validate::app_name(&name).ok().map(|_| name)
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
}

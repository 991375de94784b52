//! The forges' webhooks, in their real payload shapes: GitHub (`X-Hub-Signature-256`), GitLab
//! (`X-Gitlab-Token`), Gitea and Forgejo (bare-hex HMAC). Pushes (branches and tags) and pull
//! (merge) requests: GitHub and Gitea `pull_request`, GitLab `Merge Request Hook`. Each verifies
//! the sender for the repository before it interprets anything, then yields the common
//! [`Intake`], with the repository's place on its forge (for commit statuses).

use serde::Deserialize;

use super::{
    authenticate, bound_app, check_repo_url, classify_ref, parse_json, skips_ci, Intake, IntakeError, PushRequest, RefKind, RefTarget,
    Source,
};
use crate::secrets::{Proof, WebhookSecrets};
use conveyor_api::ci::{ForgeRepo, PullRequest};
use conveyor_proto::validate;

#[derive(Debug, Deserialize)]
struct Repository {
    /// `owner/name`: the repository's identity (its secret, its app); `name` is not read.
    full_name: String,
    clone_url: String,
    /// The repository's page: its host picks the forge entry for commit statuses.
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
}

/// GitHub and Gitea/Forgejo push payloads share this shape.
#[derive(Debug, Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    #[serde(default)]
    head_commit: Option<Commit>,
}

/// GitHub and Gitea/Forgejo `pull_request` payloads.
#[derive(Debug, Deserialize)]
struct HubPullRequestEvent {
    action: String,
    number: u64,
    pull_request: HubPull,
    /// The base repository (the webhook's).
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct HubPull {
    head: HubPullEnd,
    base: HubPullEnd,
}

#[derive(Debug, Deserialize)]
struct HubPullEnd {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// GitHub sends `null` when the fork was deleted.
    #[serde(default)]
    repo: Option<Repository>,
    /// Gitea's repository id of this end.
    #[serde(default)]
    repo_id: Option<u64>,
}

/// Any GitHub event: only the repository matters before it is authenticated (the payload is
/// read again, fully, once the sender is known).
#[derive(Debug, Deserialize)]
struct AnyHubEvent {
    #[serde(default)]
    repository: Option<Repository>,
}

/// The host (and port) of a web URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Where the repository is on its forge: the host of its web URL (else of its clone URL).
fn forge_repo(web_url: Option<&str>, clone_url: &str, path: &str, project_id: Option<u64>) -> Option<ForgeRepo> {
    let host = web_url.and_then(host_of).or_else(|| host_of(clone_url))?;
    Some(ForgeRepo { host, path: path.to_string(), project_id })
}

/// What a forge says about a push, in its own field names.
struct Pushed<'a> {
    /// The repository's authenticated name (`owner/name`, GitLab's `path_with_namespace`): the
    /// one field the app name is derived from.
    full_name: &'a str,
    clone_url: &'a str,
    git_ref: &'a str,
    after: &'a str,
    /// The commit an annotated tag's object (`after`) points to, when the forge names it.
    peeled: Option<&'a str>,
    deleted: bool,
    head_message: Option<&'a str>,
    forge: Option<ForgeRepo>,
}

fn push_request(source: Source, p: Pushed<'_>, delivery: Option<&str>, secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    let (ref_kind, ref_name) = match classify_ref(p.git_ref, p.after, p.deleted)? {
        RefTarget::Ignore(reason) => return Ok(Intake::Ignore(reason)),
        RefTarget::Build { kind, name } => (kind, name),
    };
    if p.head_message.is_some_and(skips_ci) {
        return Ok(Intake::Ignore("the head commit asks to skip CI".into()));
    }
    check_repo_url(p.clone_url, secrets.allow_local_repos)?;
    let app = bound_app(secrets, &[p.full_name, p.clone_url], None)?;
    // An annotated tag: `after` is the tag object; build (and record) the commit it names.
    let (commit, tag_object) = match p.peeled.filter(|c| ref_kind == RefKind::Tag && *c != p.after) {
        Some(commit) => {
            validate::commit(commit)?;
            (commit.to_string(), Some(p.after.to_string()))
        }
        None => (p.after.to_string(), None),
    };
    Ok(Intake::Build(PushRequest {
        app,
        repo_url: p.clone_url.to_string(),
        git_ref: p.git_ref.to_string(),
        ref_kind,
        ref_name,
        commit,
        tag_object,
        source,
        delivery: delivery.map(str::to_string),
        authenticated_repo: Some(p.full_name.to_string()),
        forge: p.forge,
        pull_request: None,
    }))
}

/// What a forge says about a pull (merge) request whose head changed.
struct Proposed<'a> {
    /// The base repository (the webhook's): its secret, its app, its clone URL.
    full_name: &'a str,
    clone_url: &'a str,
    /// The ref of the request's head in the base repository (`refs/pull/7/head`).
    head_ref_in_base: String,
    number: u64,
    head_sha: &'a str,
    head_branch: &'a str,
    base_branch: &'a str,
    from_fork: bool,
    head_repo: Option<String>,
    head_message: Option<&'a str>,
    forge: Option<ForgeRepo>,
}

fn pull_request(source: Source, p: Proposed<'_>, delivery: Option<&str>, secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    validate::commit(p.head_sha)?;
    if p.head_message.is_some_and(skips_ci) {
        return Ok(Intake::Ignore("the head commit asks to skip CI".into()));
    }
    check_repo_url(p.clone_url, secrets.allow_local_repos)?;
    if !git2::Reference::is_valid_name(&format!("refs/heads/{}", p.base_branch)) {
        return Err(IntakeError::Invalid(format!("base branch {:?} is not a valid branch name", p.base_branch)));
    }
    let app = bound_app(secrets, &[p.full_name, p.clone_url], None)?;
    Ok(Intake::Build(PushRequest {
        app,
        repo_url: p.clone_url.to_string(),
        git_ref: p.head_ref_in_base,
        ref_kind: RefKind::PullRequest,
        ref_name: format!("pr-{}", p.number),
        commit: p.head_sha.to_string(),
        tag_object: None,
        source,
        delivery: delivery.map(str::to_string),
        authenticated_repo: Some(p.full_name.to_string()),
        forge: p.forge,
        pull_request: Some(PullRequest {
            number: p.number,
            head_ref: p.head_branch.to_string(),
            base_ref: p.base_branch.to_string(),
            from_fork: p.from_fork,
            head_repo: p.head_repo,
        }),
    }))
}

/// GitHub: `X-GitHub-Event` (`push`, `pull_request`, `ping`), `X-Hub-Signature-256: sha256=<hex>`.
pub fn github(event: &str, proof: &Proof, delivery: Option<&str>, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    hub(Source::Github, event, proof, delivery, body, secrets)
}

/// Gitea and Forgejo: `X-Gitea-Event`/`X-Forgejo-Event`, signature as bare hex.
pub fn gitea(event: &str, proof: &Proof, delivery: Option<&str>, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    hub(Source::Gitea, event, proof, delivery, body, secrets)
}

fn hub(
    source: Source,
    event: &str,
    proof: &Proof,
    delivery: Option<&str>,
    body: &[u8],
    secrets: &WebhookSecrets,
) -> Result<Intake, IntakeError> {
    let any: AnyHubEvent = parse_json(body)?;
    let names: Vec<&str> = match &any.repository {
        Some(r) => vec![r.full_name.as_str(), r.clone_url.as_str()],
        None => vec!["(no repository in payload)"],
    };
    authenticate(secrets, proof, &names)?;
    match event {
        "ping" => Ok(Intake::Pong),
        "push" => {
            let p: HubPush = parse_json(body)?;
            let head = p.head_commit.as_ref();
            let message = head.filter(|c| c.id == p.after).map(|c| c.message.as_str());
            let r = &p.repository;
            let pushed = Pushed {
                full_name: &r.full_name,
                clone_url: &r.clone_url,
                git_ref: &p.git_ref,
                after: &p.after,
                // GitHub's head_commit of a tag push is the commit the tag names.
                peeled: head.map(|c| c.id.as_str()),
                deleted: p.deleted,
                head_message: message.or(head.filter(|_| p.git_ref.starts_with("refs/tags/")).map(|c| c.message.as_str())),
                forge: forge_repo(r.html_url.as_deref(), &r.clone_url, &r.full_name, None),
            };
            push_request(source, pushed, delivery, secrets)
        }
        "pull_request" => {
            let e: HubPullRequestEvent = parse_json(body)?;
            // GitHub: opened, synchronize, reopened; Gitea/Forgejo say `synchronized`.
            if !matches!(e.action.as_str(), "opened" | "reopened" | "synchronize" | "synchronized") {
                return Ok(Intake::Ignore(format!("pull request action {:?} does not change its head: not built", e.action)));
            }
            let (head, base, r) = (&e.pull_request.head, &e.pull_request.base, &e.repository);
            let head_repo = head.repo.as_ref().map(|h| h.full_name.clone());
            let from_fork = match (head.repo.as_ref(), base.repo.as_ref()) {
                (Some(h), Some(b)) => match (h.id.or(head.repo_id), b.id.or(base.repo_id)) {
                    (Some(hid), Some(bid)) => hid != bid,
                    _ => !h.full_name.eq_ignore_ascii_case(&b.full_name),
                },
                (Some(h), None) => !h.full_name.eq_ignore_ascii_case(&r.full_name),
                // The head repository is gone (a deleted fork) or unnamed: treat it as a fork.
                (None, _) => match (head.repo_id, base.repo_id) {
                    (Some(hid), Some(bid)) => hid != bid,
                    _ => true,
                },
            };
            let proposed = Proposed {
                full_name: &r.full_name,
                clone_url: &r.clone_url,
                head_ref_in_base: format!("refs/pull/{}/head", e.number),
                number: e.number,
                head_sha: &head.sha,
                head_branch: &head.git_ref,
                base_branch: &base.git_ref,
                from_fork,
                head_repo,
                head_message: None,
                forge: forge_repo(r.html_url.as_deref(), &r.clone_url, &r.full_name, None),
            };
            pull_request(source, proposed, delivery, secrets)
        }
        other => Ok(Intake::Ignore(format!("{other} events are not built"))),
    }
}

#[derive(Debug, Deserialize)]
struct GitlabProject {
    /// `group/sub/name`: the project's identity; its display `name` is not read.
    path_with_namespace: String,
    git_http_url: String,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct GitlabAny {
    #[serde(default)]
    project: Option<GitlabProject>,
}

#[derive(Debug, Deserialize)]
struct GitlabPush {
    object_kind: String,
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    /// The commit a tag push names (`after` is the tag object for an annotated tag).
    #[serde(default)]
    checkout_sha: Option<String>,
    project: GitlabProject,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Debug, Deserialize)]
struct GitlabMergeRequest {
    object_kind: String,
    project: GitlabProject,
    object_attributes: GitlabMrAttributes,
}

#[derive(Debug, Deserialize)]
struct GitlabMrAttributes {
    iid: u64,
    #[serde(default)]
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    last_commit: Commit,
    /// Set on an `update` that brought new commits.
    #[serde(default)]
    oldrev: Option<String>,
    #[serde(default)]
    source: Option<GitlabMrProject>,
}

#[derive(Debug, Deserialize)]
struct GitlabMrProject {
    #[serde(default)]
    path_with_namespace: Option<String>,
}

/// GitLab: `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`), the secret
/// token sent as is in `X-Gitlab-Token`.
pub fn gitlab(event: &str, proof: &Proof, delivery: Option<&str>, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    let any: GitlabAny = parse_json(body)?;
    let names: Vec<&str> = match &any.project {
        Some(p) => vec![p.path_with_namespace.as_str(), p.git_http_url.as_str()],
        None => vec!["(no project in payload)"],
    };
    authenticate(secrets, proof, &names)?;
    match event {
        "Push Hook" | "Tag Push Hook" => {}
        "Merge Request Hook" => return gitlab_merge_request(body, delivery, secrets),
        _ => return Ok(Intake::Ignore(format!("GitLab {event:?} events are not built"))),
    }
    let p: GitlabPush = parse_json(body)?;
    if p.object_kind != "push" && p.object_kind != "tag_push" {
        return Ok(Intake::Ignore(format!("GitLab {} events are not built", p.object_kind)));
    }
    let message =
        p.commits.iter().find(|c| Some(c.id.as_str()) == p.checkout_sha.as_deref().or(Some(&p.after))).map(|c| c.message.as_str());
    let pr = &p.project;
    let pushed = Pushed {
        full_name: &pr.path_with_namespace,
        clone_url: &pr.git_http_url,
        git_ref: &p.git_ref,
        after: &p.after,
        peeled: p.checkout_sha.as_deref(),
        deleted: false,
        head_message: message,
        forge: forge_repo(pr.web_url.as_deref(), &pr.git_http_url, &pr.path_with_namespace, pr.id),
    };
    push_request(Source::Gitlab, pushed, delivery, secrets)
}

fn gitlab_merge_request(body: &[u8], delivery: Option<&str>, secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    let mr: GitlabMergeRequest = parse_json(body)?;
    if mr.object_kind != "merge_request" {
        return Ok(Intake::Ignore(format!("GitLab {} events are not built", mr.object_kind)));
    }
    let a = &mr.object_attributes;
    match a.action.as_deref() {
        Some("open" | "reopen") => {}
        Some("update") if a.oldrev.is_some() => {}
        Some("update") => return Ok(Intake::Ignore("merge request update without new commits: not built".into())),
        other => return Ok(Intake::Ignore(format!("merge request action {other:?} does not change its head: not built"))),
    }
    let pr = &mr.project;
    let proposed = Proposed {
        full_name: &pr.path_with_namespace,
        clone_url: &pr.git_http_url,
        head_ref_in_base: format!("refs/merge-requests/{}/head", a.iid),
        number: a.iid,
        head_sha: &a.last_commit.id,
        head_branch: &a.source_branch,
        base_branch: &a.target_branch,
        from_fork: a.source_project_id != a.target_project_id,
        head_repo: a.source.as_ref().and_then(|s| s.path_with_namespace.clone()),
        head_message: Some(&a.last_commit.message),
        forge: forge_repo(pr.web_url.as_deref(), &pr.git_http_url, &pr.path_with_namespace, pr.id.or(Some(a.target_project_id))),
    };
    pull_request(Source::Gitlab, proposed, delivery, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forge_hosts_come_from_web_urls() {
        assert_eq!(host_of("https://github.com/o/r").as_deref(), Some("github.com"));
        assert_eq!(host_of("http://user@127.0.0.1:3000/o/r").as_deref(), Some("127.0.0.1:3000"));
        assert_eq!(host_of("/srv/git/x.git"), None);
        let f = forge_repo(None, "https://GitLab.example.com/g/p.git", "g/p", Some(4)).unwrap();
        assert_eq!((f.host.as_str(), f.path.as_str(), f.project_id), ("gitlab.example.com", "g/p", Some(4)));
    }
}

//! The forges' push webhooks, in their real payload shapes: GitHub (`X-Hub-Signature-256`),
//! GitLab (`X-Gitlab-Token`), Gitea and Forgejo (bare-hex HMAC). Each verifies the sender for
//! the pushed repository before it interprets anything, then yields the common [`Intake`].

use serde::Deserialize;

use super::{
    authenticate, bound_app, check_repo_url, classify_ref, parse_json, skips_ci, Intake, IntakeError, PushRequest, RefTarget, Source,
};
use crate::secrets::{Proof, WebhookSecrets};

#[derive(Debug, Deserialize)]
struct Repository {
    /// `owner/name`: the repository's identity (its secret, its app); `name` is not read.
    full_name: String,
    clone_url: String,
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

/// Any GitHub event: only the repository matters before it is authenticated (the payload is
/// read again, fully, once the sender is known).
#[derive(Debug, Deserialize)]
struct AnyHubEvent {
    #[serde(default)]
    repository: Option<Repository>,
}

/// What a forge says about a push, in its own field names.
struct Pushed<'a> {
    /// The repository's authenticated name (`owner/name`, GitLab's `path_with_namespace`): the
    /// one field the app name is derived from.
    full_name: &'a str,
    clone_url: &'a str,
    git_ref: &'a str,
    after: &'a str,
    deleted: bool,
    head_message: Option<&'a str>,
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
    Ok(Intake::Build(PushRequest {
        app,
        repo_url: p.clone_url.to_string(),
        git_ref: p.git_ref.to_string(),
        ref_kind,
        ref_name,
        commit: p.after.to_string(),
        source,
        delivery: delivery.map(str::to_string),
        authenticated_repo: Some(p.full_name.to_string()),
    }))
}

/// GitHub: `X-GitHub-Event` (`push`, `ping`), `X-Hub-Signature-256: sha256=<hex>`.
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
            let message = p.head_commit.as_ref().filter(|c| c.id == p.after).map(|c| c.message.as_str());
            let pushed = Pushed {
                full_name: &p.repository.full_name,
                clone_url: &p.repository.clone_url,
                git_ref: &p.git_ref,
                after: &p.after,
                deleted: p.deleted,
                head_message: message,
            };
            push_request(source, pushed, delivery, secrets)
        }
        other => Ok(Intake::Ignore(format!("{other} events are not built"))),
    }
}

#[derive(Debug, Deserialize)]
struct GitlabProject {
    /// `group/sub/name`: the project's identity; its display `name` is not read.
    path_with_namespace: String,
    git_http_url: String,
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
    project: GitlabProject,
    #[serde(default)]
    commits: Vec<Commit>,
}

/// GitLab: `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`), the secret token sent as is in
/// `X-Gitlab-Token`.
pub fn gitlab(event: &str, proof: &Proof, delivery: Option<&str>, body: &[u8], secrets: &WebhookSecrets) -> Result<Intake, IntakeError> {
    let any: GitlabAny = parse_json(body)?;
    let names: Vec<&str> = match &any.project {
        Some(p) => vec![p.path_with_namespace.as_str(), p.git_http_url.as_str()],
        None => vec!["(no project in payload)"],
    };
    authenticate(secrets, proof, &names)?;
    if event != "Push Hook" && event != "Tag Push Hook" {
        return Ok(Intake::Ignore(format!("GitLab {event:?} events are not built")));
    }
    let p: GitlabPush = parse_json(body)?;
    if p.object_kind != "push" && p.object_kind != "tag_push" {
        return Ok(Intake::Ignore(format!("GitLab {} events are not built", p.object_kind)));
    }
    let message = p.commits.iter().find(|c| c.id == p.after).map(|c| c.message.as_str());
    let pushed = Pushed {
        full_name: &p.project.path_with_namespace,
        clone_url: &p.project.git_http_url,
        git_ref: &p.git_ref,
        after: &p.after,
        deleted: false,
        head_message: message,
    };
    push_request(Source::Gitlab, pushed, delivery, secrets)
}

//! Every trigger format against the real service (webhook intake answers at once and queues; an
//! API-only replica with no workers shows what was queued): GitHub, GitLab, Gitea and Forgejo
//! in their real payload shapes, and the generic push. Valid ones queue one build; a bad or
//! missing signature is 401 and queues nothing; malformed bodies get JSON 4xx errors; pings,
//! deletions and `[skip ci]` are answered and ignored; redeliveries start no second build;
//! several secrets per repository work at once so a secret can be rotated.

mod common;

use ci_service::{secrets::Secret, webhook::signature, App, Config, StartError};
use common::{fixture, json_headers, sign, Ci, SECRET};
use conveyor_testkit::{TestNats, TestRegistry};
use serde_json::{json, Value};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// An API-only replica (no workers): what is queued stays queued for the test to inspect.
async fn intake_only(nats: &TestNats, registry: &TestRegistry, adjust: impl FnOnce(&mut Config)) -> Ci {
    Ci::start(nats, &registry.addr, |cfg| {
        cfg.workers = 0;
        adjust(cfg);
    })
    .await
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn github_push_ping_bad_signature_and_malformed_body() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |_| {}).await;

    let mut push = fixture("github-push.json");
    push["after"] = json!(SHA);
    push["head_commit"]["id"] = json!(SHA);
    let body = serde_json::to_vec(&push).unwrap();
    let h = |event: &str, sig: &str, delivery: &str| {
        json_headers(&[("x-github-event", event), ("x-hub-signature-256", sig), ("x-github-delivery", delivery)])
    };

    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(&body), "d-1"), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["build_id"].as_u64().unwrap();
    let build = ci.build(id).await;
    assert_eq!(
        (build["state"].as_str(), build["source"].as_str(), build["app"].as_str(), build["commit"].as_str()),
        (Some("queued"), Some("github"), Some("busybox-app"), Some(SHA))
    );
    assert_eq!(build["repo_url"], "https://github.com/octo-org/busybox-app.git");
    assert_eq!(build["delivery"], "d-1");

    // GitHub redelivers the same delivery: no second build, the first one's number comes back.
    let (status, again) = ci.post("/hooks/push", &h("push", &sign(&body), "d-1"), body.clone()).await;
    let again: conveyor_api::ci::BuildQueued = serde_json::from_value(again).expect("the API's BuildQueued");
    assert_eq!((status, again.build_id, again.duplicate), (200, id, true), "{again:?}");

    // A wrong signature, a signature over other bytes, no signature: 401, nothing queued.
    let wrong = format!("sha256={}", signature::sign(&Secret::new("not-the-secret"), &body));
    let (status, answer) = ci.post("/hooks/push", &h("push", &wrong, "d-2"), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(b"other"), "d-3"), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-github-event", "push")]), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");

    // Ping: answered. Malformed JSON and a payload of the wrong shape: 4xx with a JSON error.
    let ping = serde_json::to_vec(&fixture("github-ping.json")).unwrap();
    let (status, answer) = ci.post("/hooks/push", &h("ping", &sign(&ping), "d-4"), ping).await;
    assert_eq!((status, answer["pong"].as_bool()), (200, Some(true)), "{answer}");
    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(b"{\"ref\":"), "d-5"), b"{\"ref\":".to_vec()).await;
    assert_error(status, &answer, 400, "malformed_json");
    let shape = br#"{"ref": "refs/heads/main", "after": 7, "repository": {"full_name": "octo-org/busybox-app", "name": "busybox-app", "clone_url": "x"}}"#;
    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(shape), "d-6"), shape.to_vec()).await;
    assert_error(status, &answer, 422, "invalid_payload");
    assert!(answer["message"].as_str().unwrap().contains("after"), "names the field: {answer}");

    // Deleting the branch and a [skip ci] head commit are acknowledged and not built.
    let mut deleted = fixture("github-push.json");
    deleted["after"] = json!("0".repeat(40));
    deleted["deleted"] = json!(true);
    let deleted = serde_json::to_vec(&deleted).unwrap();
    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(&deleted), "d-7"), deleted).await;
    assert_eq!((status, answer["ignored"].as_str()), (200, Some("branch deletion")));
    let mut skip = fixture("github-push.json");
    skip["head_commit"]["message"] = json!("docs: fix typo [skip ci]");
    let skip = serde_json::to_vec(&skip).unwrap();
    let (status, answer) = ci.post("/hooks/push", &h("push", &sign(&skip), "d-8"), skip).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].as_str().unwrap().contains("skip CI"));

    let builds = ci.builds().await;
    assert_eq!(builds.len(), 1, "only the one valid push was queued: {builds:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_token_push_tag_push_and_refusals() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |_| {}).await;
    let mut push = fixture("gitlab-push.json");
    push["after"] = json!(SHA);
    push["checkout_sha"] = json!(SHA);
    push["commits"][0]["id"] = json!(SHA);
    let body = serde_json::to_vec(&push).unwrap();
    let h =
        |event: &str, token: &str| json_headers(&[("x-gitlab-event", event), ("x-gitlab-token", token), ("x-gitlab-event-uuid", "u-1")]);

    let (status, answer) = ci.post("/hooks/push", &h("Push Hook", SECRET), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["source"].as_str(), build["ref_name"].as_str()), (Some("gitlab"), Some("main")));
    assert_eq!(build["repo_url"], "http://gitlab.example.com/mike/busybox-app.git");

    let mut tag = push.clone();
    tag["object_kind"] = json!("tag_push");
    tag["ref"] = json!("refs/tags/v1.4.0");
    let tag = serde_json::to_vec(&tag).unwrap();
    let (status, answer) = ci.post("/hooks/push", &h("Tag Push Hook", SECRET), tag).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["ref_kind"].as_str(), build["ref_name"].as_str()), (Some("tag"), Some("v1.4.0")));

    let (status, answer) = ci.post("/hooks/push", &h("Push Hook", "wrong-token"), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-gitlab-event", "Push Hook")]), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/hooks/push", &h("Push Hook", SECRET), b"{\"object_kind\": ".to_vec()).await;
    assert_error(status, &answer, 400, "malformed_json");
    let (status, answer) = ci
        .post(
            "/hooks/push",
            &h("Push Hook", SECRET),
            br#"{"object_kind": "push", "project": {"path_with_namespace": "mike/busybox-app", "git_http_url": "x"}}"#.to_vec(),
        )
        .await;
    assert_error(status, &answer, 422, "invalid_payload");
    let (status, answer) = ci.post("/hooks/push", &h("Issue Hook", SECRET), body).await;
    assert_eq!(status, 200, "other events are acknowledged: {answer}");
    assert_eq!(ci.builds().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn gitea_and_forgejo_bare_hex_signatures_with_rotated_per_repo_secrets() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let secrets_file = dir.path().join("secrets.yaml");
    std::fs::write(&secrets_file, "repos:\n  gitea/busybox-app: [new-gitea-secret, old-gitea-secret]\n").unwrap();
    let ci = intake_only(&nats, &registry, |cfg| {
        cfg.webhook_secrets = vec![];
        cfg.webhook_secrets_file = Some(secrets_file.clone());
    })
    .await;
    let bare_hex = |secret: &str, body: &[u8]| signature::sign(&Secret::new(secret), body);

    for (i, (event_header, sig_header, secret)) in
        [("x-gitea-event", "x-gitea-signature", "old-gitea-secret"), ("x-forgejo-event", "x-forgejo-signature", "new-gitea-secret")]
            .into_iter()
            .enumerate()
    {
        let mut push = fixture("gitea-push.json");
        let sha = format!("{}{i}", &SHA[..39]);
        push["after"] = json!(sha);
        push["head_commit"]["id"] = json!(sha);
        let body = serde_json::to_vec(&push).unwrap();
        let headers = json_headers(&[(event_header, "push"), (sig_header, &bare_hex(secret, &body))]);
        let (status, answer) = ci.post("/hooks/push", &headers, body.clone()).await;
        assert_eq!(status, 202, "{event_header} signed with {secret}: {answer}");
        assert_eq!(ci.build(answer["build_id"].as_u64().unwrap()).await["source"], "gitea");

        // The secret of another repository (or the global test secret) does not sign this one.
        let headers = json_headers(&[(event_header, "push"), (sig_header, &bare_hex(SECRET, &body))]);
        let (status, answer) = ci.post("/hooks/push", &headers, body).await;
        assert_error(status, &answer, 401, "unauthorized");
    }
    let headers = json_headers(&[("x-gitea-event", "push"), ("x-gitea-signature", &bare_hex("new-gitea-secret", b"{oops"))]);
    let (status, answer) = ci.post("/hooks/push", &headers, b"{oops".to_vec()).await;
    assert_error(status, &answer, 400, "malformed_json");
    // A repository without any secret is refused: nothing may trigger builds unsigned.
    let mut other = fixture("gitea-push.json");
    other["repository"]["full_name"] = json!("gitea/other");
    let body = serde_json::to_vec(&other).unwrap();
    let headers = json_headers(&[("x-gitea-event", "push"), ("x-gitea-signature", &bare_hex("new-gitea-secret", &body))]);
    let (status, answer) = ci.post("/hooks/push", &headers, body).await;
    assert_error(status, &answer, 401, "unauthorized");
    assert_eq!(ci.builds().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_push_bad_requests_and_the_same_commit_pushed_twice() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |_| {}).await;
    let push = json!({ "repo_url": "/srv/git/web.git", "ref": "refs/heads/main", "commit": SHA });
    let (status, first) = ci.push(push.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, second) = ci.push(push.clone()).await;
    assert_eq!((status, second["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(first["build_id"], second["build_id"], "the same commit pushed twice is one build");

    let post = |body: Vec<u8>, ct: &'static str, sig: bool| {
        let mut headers = vec![("content-type", ct.to_string())];
        if sig {
            headers.push(("x-conveyor-signature-256", sign(&body)));
        }
        let ci = &ci;
        async move { ci.post("/hooks/push", &headers, body).await }
    };
    let unsigned = serde_json::to_vec(&json!({ "repo_url": "/srv/git/web.git", "ref": "refs/heads/dev", "commit": SHA })).unwrap();
    let (status, answer) = post(unsigned, "application/json", false).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = post(b"{not json".to_vec(), "application/json", true).await;
    assert_error(status, &answer, 400, "malformed_json");
    let (status, answer) = post(b"{}".to_vec(), "text/plain", true).await;
    assert_error(status, &answer, 415, "unsupported_media_type");
    let (status, answer) = post(b"payload=%7B%7D".to_vec(), "application/x-www-form-urlencoded", true).await;
    assert_error(status, &answer, 415, "unsupported_media_type");
    let (status, answer) = post(br#"{"repo_url":"/x.git"}"#.to_vec(), "application/json", true).await;
    assert_error(status, &answer, 422, "invalid_payload");
    let (status, answer) =
        post(br#"{"repo_url":"/x.git","ref":"refs/heads/main","commit":"abc"}"#.to_vec(), "application/json", true).await;
    assert_error(status, &answer, 422, "invalid_payload");
    let (status, answer) = post(vec![b' '; 2 * 1024 * 1024], "application/json", true).await;
    assert_error(status, &answer, 413, "body_too_large");
    for path in ["/builds/nope", "/builds/999999", "/builds/0", "/builds/0/logs", "/builds/-1"] {
        let resp = reqwest::get(ci.url(path)).await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "build_not_found", "{path}");
    }
    // Unknown routes and methods answer in the documented JSON shape too.
    let resp = reqwest::get(ci.url("/no/such/route")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_error(404, &body, 404, "not_found");
    let resp = reqwest::Client::new().delete(ci.url("/hooks/push")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_error(405, &body, 405, "method_not_allowed");
    // Headers over the limit: answered by the router, in the same shape, before any body is read.
    let mut many = reqwest::Client::new().post(ci.url("/hooks/push")).header("content-type", "application/json");
    for i in 0..150 {
        many = many.header(format!("x-filler-{i}"), "x");
    }
    let resp = many.body("{}").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    let body: Value = resp.json().await.unwrap();
    assert_error(431, &body, 431, "headers_too_large");
    assert_eq!(ci.builds().await.len(), 1, "none of the refused requests queued anything");
    assert_eq!(reqwest::get(ci.url("/healthz")).await.unwrap().status().as_u16(), 200, "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_at_all_refuses_to_start_unless_unsigned_is_explicit() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let mut cfg = Config::defaults();
    cfg.nats = nats.ci_args();
    cfg.signing_key_file = Some(nats.keys.ci_key.clone());
    cfg.allow_local_repos = true;
    cfg.registry = registry.addr.clone();
    cfg.workdir = tempfile::tempdir().unwrap().keep();
    cfg.workers = 0;
    let refused = App::connect(cfg.clone()).await.err().expect("no secret: refused");
    assert!(matches!(refused, StartError::NoWebhookSecret), "{refused}");
    assert!(refused.to_string().contains("--allow-unsigned-webhooks"));

    let ci = Ci::start(&nats, &registry.addr, |c| {
        c.webhook_secrets = vec![];
        c.allow_unsigned_webhooks = true;
        c.workers = 0;
    })
    .await;
    let body = serde_json::to_vec(&json!({ "repo_url": "/srv/git/web.git", "ref": "refs/heads/main", "commit": SHA })).unwrap();
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[]), body).await;
    assert_eq!(status, 202, "unsigned accepted after the explicit opt-out: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_builds_cancel_and_retry_need_the_api_token() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |c| c.api_token = Some(Secret::new("api-token-1234"))).await;
    let body = serde_json::to_vec(&json!({ "repo_url": "/srv/git/web.git", "ref": "refs/heads/main", "commit": SHA })).unwrap();
    let bearer = |t: &str| json_headers(&[("authorization", &format!("Bearer {t}"))]);

    let (status, answer) = ci.post("/builds", &json_headers(&[]), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/builds", &bearer("wrong-token"), body.clone()).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post("/builds", &bearer("api-token-1234"), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["build_id"].as_u64().unwrap();
    let (status, again) = ci.post("/builds", &bearer("api-token-1234"), body).await;
    assert_eq!(status, 202, "a manual build is always a new build: {again}");
    assert_ne!(again["build_id"].as_u64(), Some(id));
    assert_eq!(ci.build(id).await["source"], "manual");

    // A queued build is cancelled on the spot; the token guards cancel and retry too.
    let (status, answer) = ci.post(&format!("/builds/{id}/cancel"), &json_headers(&[]), vec![]).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post(&format!("/builds/{id}/cancel"), &bearer("api-token-1234"), vec![]).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(id).await;
    assert_eq!((build["state"].as_str(), build["reason"].as_str()), (Some("cancelled"), Some("cancelled by request")), "{build}");
    let (status, answer) = ci.post(&format!("/builds/{id}/retry"), &json_headers(&[]), vec![]).await;
    assert_error(status, &answer, 401, "unauthorized");
    let (status, answer) = ci.post(&format!("/builds/{id}/retry"), &bearer("api-token-1234"), vec![]).await;
    assert_error(status, &answer, 409, "not_retryable");
}

/// The app a push builds is bound to the repository whose secret authenticated it: derived from
/// the authenticated name only (GitHub's `full_name`, not `repository.name`), and an app or
/// image that the secrets file grants to one repository is refused (403) to every other, even
/// with the default secret. Git URLs that would run options or remote helpers are refused (422).
#[tokio::test(flavor = "multi_thread")]
async fn a_push_builds_only_what_its_repository_owns() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "repos:\n  team/protected-app:\n    secrets: [protected-secret]\n    images: [team/protected-app]\n").unwrap();
    let ci = intake_only(&nats, &registry, |c| c.webhook_secrets_file = Some(secrets)).await;
    let github = |full_name: &str, name: &str| {
        let mut push = fixture("github-push.json");
        push["after"] = json!(SHA);
        push["head_commit"]["id"] = json!(SHA);
        push["repository"]["full_name"] = json!(full_name);
        push["repository"]["name"] = json!(name);
        serde_json::to_vec(&push).unwrap()
    };
    let headers = |body: &[u8]| json_headers(&[("x-github-event", "push"), ("x-hub-signature-256", &sign(body))]);

    // `full_name` qa-org/evil-app, `name` protected-app, signed with the default secret: it
    // builds evil-app, never protected-app.
    let body = github("qa-org/evil-app", "protected-app");
    let (status, answer) = ci.post("/hooks/push", &headers(&body), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ci.build(answer["build_id"].as_u64().unwrap()).await["app"], "evil-app");

    // Another repository whose own name is protected-app: the app belongs to team/protected-app.
    let body = github("qa-org/protected-app", "protected-app");
    let (status, answer) = ci.post("/hooks/push", &headers(&body), body).await;
    assert_error(status, &answer, 403, "forbidden");
    assert!(answer["message"].as_str().unwrap().contains("belongs to repository team/protected-app"), "{answer}");
    // The protected repository's own secret, on a payload naming another repository: 401.
    let body = github("qa-org/evil-app", "evil-app");
    let own = format!("sha256={}", signature::sign(&Secret::new("protected-secret"), &body));
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-github-event", "push"), ("x-hub-signature-256", &own)]), body).await;
    assert_error(status, &answer, 401, "unauthorized");

    // The generic body's `app` field may not claim it either.
    let generic = |app: &str, repo_url: &str| {
        serde_json::to_vec(&json!({ "repo_url": repo_url, "ref": "refs/heads/main", "commit": SHA, "app": app })).unwrap()
    };
    let body = generic("protected-app", "/srv/git/evil.git");
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-conveyor-signature-256", &sign(&body))]), body).await;
    assert_error(status, &answer, 403, "forbidden");

    // Repository URLs git would read as an option or a remote helper never reach the queue.
    for url in ["--upload-pack=touch /tmp/pwned", "ext::sh -c touch% /tmp/pwned", "ssh://-oProxyCommand=touch%20x/r.git", "fd::3"] {
        let body = generic("evil", url);
        let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-conveyor-signature-256", &sign(&body))]), body).await;
        assert_error(status, &answer, 422, "invalid_payload");
        assert!(answer["message"].as_str().unwrap().contains("is refused"), "{url}: {answer}");
    }
    assert_eq!(ci.builds().await.len(), 1, "only the evil-app push was queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_repositories_are_fetched_only_when_allowed() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |c| c.allow_local_repos = false).await;
    for url in ["/srv/git/web.git", "file:///srv/git/web.git"] {
        let body = serde_json::to_vec(&json!({ "repo_url": url, "ref": "refs/heads/main", "commit": SHA })).unwrap();
        let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-conveyor-signature-256", &sign(&body))]), body).await;
        assert_error(status, &answer, 422, "invalid_payload");
        assert!(answer["message"].as_str().unwrap().contains("--allow-local-repos"), "{answer}");
    }
    let body = serde_json::to_vec(&json!({ "repo_url": "https://git.example.test/team/web.git", "ref": "refs/heads/main", "commit": SHA }))
        .unwrap();
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-conveyor-signature-256", &sign(&body))]), body).await;
    assert_eq!(status, 202, "{answer}");
}

/// Pull and merge requests of every forge, in their documented payload shapes: the head is
/// queued as a pull-request build (the head ref in the base repository, the head commit, base
/// and head branches, fork or not); actions that do not change the head are answered, not built.
#[tokio::test(flavor = "multi_thread")]
async fn pull_and_merge_requests_of_every_forge_queue_pull_request_builds() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |_| {}).await;
    let github = |pr: &Value| {
        let body = serde_json::to_vec(pr).unwrap();
        (json_headers(&[("x-github-event", "pull_request"), ("x-hub-signature-256", &sign(&body)), ("x-github-delivery", "pr-d")]), body)
    };
    let mut pr = fixture("github-pull-request.json");
    let (h, body) = github(&pr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!(
        (build["ref"].as_str(), build["ref_kind"].as_str(), build["ref_name"].as_str(), build["commit"].as_str()),
        (Some("refs/pull/7/head"), Some("pull_request"), Some("pr-7"), Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821"))
    );
    assert_eq!(
        build["pull_request"],
        json!({"number": 7, "head_ref": "feature/bonjour", "base_ref": "main", "from_fork": false, "head_repo": "octo-org/busybox-app"})
    );
    assert_eq!(build["forge"], json!({"host": "github.com", "path": "octo-org/busybox-app"}));
    assert_eq!(build["repo_url"], "https://github.com/octo-org/busybox-app.git", "fetched from the base repository");

    // A fork's request: from_fork, still fetched from the base repository.
    pr["action"] = json!("synchronize");
    pr["pull_request"]["head"]["sha"] = json!(SHA);
    pr["pull_request"]["head"]["repo"]["id"] = json!(99);
    pr["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/busybox-app");
    let (h, body) = github(&pr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!(
        (build["pull_request"]["from_fork"].as_bool(), build["pull_request"]["head_repo"].as_str()),
        (Some(true), Some("mallory/busybox-app"))
    );
    pr["pull_request"]["head"]["repo"] = Value::Null;
    pr["pull_request"]["head"]["sha"] = json!(format!("{}9", &SHA[..39]));
    let (h, body) = github(&pr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "a deleted fork's request: {answer}");
    assert_eq!(ci.build(answer["build_id"].as_u64().unwrap()).await["pull_request"]["from_fork"], true);
    for action in ["closed", "labeled", "edited", "assigned"] {
        pr["action"] = json!(action);
        let (h, body) = github(&pr);
        let (status, answer) = ci.post("/hooks/push", &h, body).await;
        assert_eq!(status, 200, "{action}: {answer}");
        assert!(answer["ignored"].as_str().is_some_and(|r| r.contains(action)), "{answer}");
    }
    pr["action"] = json!("opened");
    pr["pull_request"]["head"]["sha"] = json!("not-a-sha");
    let (h, body) = github(&pr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_error(status, &answer, 422, "invalid_payload");

    // GitLab: the merge request's head ref in the target project; an update without new
    // commits (a title edit) is not built, one with `oldrev` is.
    let mut mr = fixture("gitlab-merge-request.json");
    let gitlab = |mr: &Value| {
        (json_headers(&[("x-gitlab-event", "Merge Request Hook"), ("x-gitlab-token", SECRET)]), serde_json::to_vec(mr).unwrap())
    };
    let (h, body) = gitlab(&mr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["ref"].as_str(), build["source"].as_str()), (Some("refs/merge-requests/3/head"), Some("gitlab")));
    assert_eq!(build["forge"], json!({"host": "gitlab.example.com", "path": "mike/busybox-app", "project_id": 1}));
    assert_eq!((build["pull_request"]["base_ref"].as_str(), build["pull_request"]["from_fork"].as_bool()), (Some("main"), Some(false)));
    mr["object_attributes"]["action"] = json!("update");
    let (h, body) = gitlab(&mr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 200, "{answer}");
    mr["object_attributes"]["oldrev"] = json!("da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    mr["object_attributes"]["last_commit"]["id"] = json!(SHA);
    mr["object_attributes"]["source_project_id"] = json!(42);
    let (h, body) = gitlab(&mr);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ci.build(answer["build_id"].as_u64().unwrap()).await["pull_request"]["from_fork"], true);
    mr["object_attributes"]["action"] = json!("merge");
    let (h, body) = gitlab(&mr);
    assert_eq!(ci.post("/hooks/push", &h, body).await.0, 200);

    // Gitea / Forgejo say `synchronized`; the fork is told by repository id.
    let gitea = fixture("gitea-pull-request.json");
    let body = serde_json::to_vec(&gitea).unwrap();
    let hex = signature::sign(&Secret::new(SECRET), &body);
    let h = json_headers(&[("x-forgejo-event", "pull_request"), ("x-forgejo-signature", &hex)]);
    let (status, answer) = ci.post("/hooks/push", &h, body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["ref"].as_str(), build["source"].as_str()), (Some("refs/pull/12/head"), Some("gitea")));
    assert_eq!(build["pull_request"]["from_fork"], true);
    assert_eq!(build["forge"]["host"], "git.example.com");
    assert_eq!(ci.builds().await.len(), 6);
}

/// An annotated tag's push names the tag object (`after`); GitHub's `head_commit` and GitLab's
/// `checkout_sha` name the commit: the build records the commit and keeps the object.
#[tokio::test(flavor = "multi_thread")]
async fn annotated_tag_pushes_are_peeled_to_their_commit_at_intake() {
    let (nats, registry) = (TestNats::start().await, TestRegistry::start().await);
    let ci = intake_only(&nats, &registry, |_| {}).await;
    let tag_object = "7777777777777777777777777777777777777777";
    let mut push = fixture("github-push.json");
    push["ref"] = json!("refs/tags/v2.0.0");
    push["after"] = json!(tag_object);
    push["head_commit"]["id"] = json!(SHA);
    let body = serde_json::to_vec(&push).unwrap();
    let (status, answer) =
        ci.post("/hooks/push", &json_headers(&[("x-github-event", "push"), ("x-hub-signature-256", &sign(&body))]), body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["commit"].as_str(), build["tag_object"].as_str()), (Some(SHA), Some(tag_object)));

    let mut push = fixture("gitea-push.json");
    push["ref"] = json!("refs/tags/v2.0.0");
    push["after"] = json!(tag_object);
    push["head_commit"]["id"] = json!(SHA);
    let body = serde_json::to_vec(&push).unwrap();
    let hex = signature::sign(&Secret::new(SECRET), &body);
    let (status, answer) = ci.post("/hooks/push", &json_headers(&[("x-gitea-event", "push"), ("x-gitea-signature", &hex)]), body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["commit"].as_str(), build["tag_object"].as_str()), (Some(SHA), Some(tag_object)));

    let mut push = fixture("gitlab-push.json");
    push["object_kind"] = json!("tag_push");
    push["ref"] = json!("refs/tags/v2.0.0");
    push["after"] = json!(tag_object);
    push["checkout_sha"] = json!(SHA);
    let body = serde_json::to_vec(&push).unwrap();
    let (status, answer) =
        ci.post("/hooks/push", &json_headers(&[("x-gitlab-event", "Tag Push Hook"), ("x-gitlab-token", SECRET)]), body).await;
    assert_eq!(status, 202, "{answer}");
    let build = ci.build(answer["build_id"].as_u64().unwrap()).await;
    assert_eq!((build["commit"].as_str(), build["tag_object"].as_str()), (Some(SHA), Some(tag_object)));
}

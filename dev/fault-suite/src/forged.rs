//! The `forged-deploys` scenario: attempts from every angle to deploy what no green build of
//! ci-service produced, interleaved with real pushes. Each round tries: NATS anonymously and
//! with a wrong password; an image-built event with cd-service's credentials; a promotion with
//! ci-service's; unsigned, foreign-key and altered events on the stream itself (as a process
//! that got past NATS would); promotions and replays without or with a wrong API token; a push
//! that claims another repository's app. And one app's own code (build, test and smoke steps)
//! tries to reach NATS, the registry and both services. The row counts the attempts, how many
//! were refused (each with its reason), and how many forged tags reached the manifests (must
//! be 0), beside the usual: every real push deployed, no loss, no duplicate, no crash.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream;
use conveyor_proto::{connect, headers, signing::EventSigner, ImageBuilt, DEADLETTER_STREAM};

use crate::{
    scenarios::{apps, check_commits, check_pushes, count_crashes, drain, wait_builds_finished, wait_ready, PUSH_LIMIT},
    world::{event, send_push, sign, AppRepo, World, SECRET},
    Rng, Row, Scale,
};

/// What each attempt must end as, and how many ended so.
#[derive(Default)]
struct Tally {
    /// attempt kind -> (tried, refused as expected)
    kinds: BTreeMap<&'static str, (usize, usize)>,
    /// Why an attempt was not refused.
    misses: Vec<String>,
}

impl Tally {
    fn note(&mut self, kind: &'static str, refused: bool, detail: impl FnOnce() -> String) {
        let e = self.kinds.entry(kind).or_default();
        e.0 += 1;
        if refused {
            e.1 += 1;
        } else {
            self.misses.push(format!("{kind}: {}", detail()));
        }
    }

    fn tried(&self) -> usize {
        self.kinds.values().map(|(t, _)| t).sum()
    }

    fn refused(&self) -> usize {
        self.kinds.values().map(|(_, r)| r).sum()
    }
}

/// True when JetStream stored the publish (it must not, for a forged one).
async fn stored(js: &jetstream::Context, subject: String, payload: Vec<u8>) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(5), async { js.publish(subject, payload.into()).await?.await }).await, Ok(Ok(_)))
}

/// A forged event for `app`: a real app, a tag no build made.
fn forged(registry: &str, app: &str, kind: &str, round: usize) -> ImageBuilt {
    let mut e = event(registry, app, 900_000 + round, time::OffsetDateTime::now_utc());
    e.image.tag = format!("forged-{kind}-{round}");
    e.event_id = format!("forged-{kind}-{round}");
    e
}

pub async fn forged_deploys(scale: &Scale, _rng: Rng) -> anyhow::Result<Row> {
    let mut names = apps("app", 2);
    names.push("hostile".into());
    let world = World::new(&names).await?;
    // app0's repository has an entry of its own (the same secret value), so app0 is its alone.
    let secrets_file = world.path().join("webhook-secrets.yaml");
    let app0_repo = world.path().join("git/app0.git");
    std::fs::write(&secrets_file, format!("repos:\n  {}: [{SECRET}]\n", app0_repo.display()))?;
    let mut ci = world.start_ci_with(1, 2, &[("CONVEYOR_WEBHOOK_SECRETS_FILE", secrets_file.to_str().expect("utf-8 path"))]);
    let mut cd = world.start_cd(1);
    let (ci_urls, cd_urls) = (ci.urls(), cd.urls());
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let port = |url: &str| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
    let registry_port = port(&world.registry.addr);
    let targets = [
        ("nats", "127.0.0.1".to_string(), world.nats.port),
        ("registry", "127.0.0.1".to_string(), registry_port),
        ("ci-service", "127.0.0.1".to_string(), port(&ci_urls[0])),
        ("cd-service", "127.0.0.1".to_string(), port(&cd_urls[0])),
    ];
    let mut repos: Vec<AppRepo> = names[..2].iter().map(|a| world.app_repo(a)).collect();
    repos.push(world.hostile_repo("hostile", &targets));

    let nats = &world.nats;
    let (registry, http) = (world.registry.addr.clone(), world.http.clone());
    let limit = Duration::from_secs(5);
    let cd_js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(connect::connect(&nats.cd_args(), "forger-with-cd-credentials", limit).await?.client);
    let ci_js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(connect::connect(&nats.ci_args(), "forger-with-ci-credentials", limit).await?.client);
    let (stranger, ci_key) = (EventSigner::from_seed([0x5a; 32]), nats.keys.ci_signer());
    let cd_url = &cd_urls[0];
    let mut tally = Tally::default();

    for round in 0..scale.forged_rounds {
        for (n, repo) in repos.iter_mut().enumerate() {
            let commit = World::commit_and_push(repo, round * 10 + n);
            send_push(&http, &ci_urls, n, &repo.bare.url(), &commit, PUSH_LIMIT).await?;
        }
        // NATS without credentials, and with a wrong password.
        let anonymous = connect::connect(&connect::NatsArgs::anonymous(&nats.url), "forger", limit).await;
        tally.note("anonymous NATS client", matches!(anonymous, Err(connect::ConnectError::Refused { .. })), || "connected".into());
        let wrong = connect::connect(&connect::NatsArgs::user(&nats.url, "conveyor-ci", "guessed"), "forger", limit).await;
        tally.note("wrong NATS password", matches!(wrong, Err(connect::ConnectError::Refused { .. })), || "connected".into());
        // Each service's credentials outside their part.
        let e = forged(&registry, "app1", "cd-creds", round);
        let landed = stored(&cd_js, e.subject(), e.to_json()?).await;
        tally.note("image-built event with cd-service's credentials", !landed, || "stored".into());
        let mut promo = forged(&registry, "app1", "ci-creds", round);
        promo.deploy = Some(conveyor_proto::DeployIntent {
            kind: conveyor_proto::IntentKind::Promotion,
            environment: "default".into(),
            requested_by: "mallory".into(),
            of_event: "none".into(),
            of_sequence: None,
            of_traceparent: None,
        });
        let landed = stored(&ci_js, promo.subject(), promo.to_json()?).await;
        tally.note("promotion with ci-service's credentials", !landed, || "stored".into());
        // On the stream itself, past NATS: unsigned, signed by a stranger, altered after signing.
        let e = forged(&registry, "app0", "unsigned", round);
        nats.publish_with(&e.subject(), e.to_json()?, None).await;
        let e = forged(&registry, "app0", "stranger", round);
        nats.publish_with(&e.subject(), e.to_json()?, Some(&stranger)).await;
        let genuine = forged(&registry, "app0", "genuine", round);
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in ci_key.headers(&genuine.subject(), &genuine.to_json()?) {
            h.insert(k, v.as_str());
        }
        let altered = forged(&registry, "app0", "altered", round);
        nats.jetstream().await.publish_with_headers(altered.subject(), h, altered.to_json()?.into()).await?.await?;
        // The deploy API without the token, and with a wrong one.
        for (kind, path, token) in
            [("promotion without a token", "/promote", None), ("replay with a wrong token", "/replay", Some("guess"))]
        {
            let mut req = http.post(format!("{cd_url}{path}")).json(&serde_json::json!({
                "app": "app0", "environment": "default", "tag": "r1", "requested_by": "mallory",
            }));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            tally.note(kind, status == 401, || format!("answered {status}"));
        }
        // A push of another repository that claims app0.
        let body = serde_json::to_vec(&serde_json::json!({
            "repo_url": world.path().join("git/evil.git").display().to_string(),
            "ref": "refs/heads/main", "commit": format!("{:040x}", round + 1), "app": "app0",
        }))?;
        let status = http
            .post(format!("{}/hooks/push", ci_urls[0]))
            .header("content-type", "application/json")
            .header("x-conveyor-signature-256", sign(&body))
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        tally.note("push claiming another repository's app", status == 403, || format!("answered {status}"));
    }

    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    // The events forged on the stream: each dead-lettered, with the reason it must have.
    let dead = nats.stream_messages_with_headers(DEADLETTER_STREAM).await;
    let reason_of = |id: &str| {
        dead.iter().find_map(|(_, payload, h)| {
            let e: serde_json::Value = serde_json::from_slice(payload).ok()?;
            (e["event_id"] == id).then(|| h.get(headers::DEAD_REASON).map(|v| v.to_string()).unwrap_or_default())
        })
    };
    for round in 0..scale.forged_rounds {
        for (kind, what, expect) in [
            ("unsigned event on the stream", "unsigned", "unsigned event"),
            ("event signed by an unknown key", "stranger", "not trusted for build events"),
            ("event altered after signing", "altered", "bad signature"),
        ] {
            let reason = reason_of(&format!("forged-{what}-{round}"));
            tally.note(kind, reason.as_deref().is_some_and(|r| r.contains(expect)), || format!("dead-letter reason {reason:?}"));
        }
    }
    // The hostile app's code, in each step of each of its builds.
    let hostile = &repos[2];
    let list: Vec<serde_json::Value> = http.get(format!("{}/builds?limit=1000", ci_urls[0])).send().await?.json().await?;
    for b in list.iter().filter(|b| b["app"] == "hostile" && b["state"] == "succeeded") {
        let log = http.get(format!("{}/builds/{}/logs", ci_urls[0], b["id"])).send().await?.text().await?;
        for stage in ["build", "test", "smoke"] {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("probe {stage} "))).collect();
            let ok = lines.len() == targets.len() && lines.iter().all(|l| l.contains(" blocked "));
            tally.note("repository code reaching host services", ok, || format!("build {} {stage}: {lines:?}", b["id"]));
        }
    }
    let hostile_builds = list.iter().filter(|b| b["app"] == "hostile").count();

    // Not one forged tag in the manifest repository's history.
    let history = conveyor_testkit::run(std::process::Command::new("git").arg("-C").arg(&world.manifests.path).args(["log", "-p", "main"]));
    let forged_deploys = history.matches("forged-").count();

    let mut row = Row {
        scenario: "forged-deploys",
        injected: tally.tried(),
        faults: format!("{} forged, {} refused, {forged_deploys} deployed", tally.tried(), tally.refused()),
        inputs: format!("{} real pushes, {} apps", repos.iter().map(|r| r.pushed.len()).sum::<usize>(), repos.len()),
        ..Row::default()
    };
    row.notes
        .push(format!("attempts: {}", tally.kinds.iter().map(|(k, (t, r))| format!("{k} {r}/{t} refused")).collect::<Vec<_>>().join("; ")));
    if hostile_builds < hostile.pushed.len().min(1) {
        row.notes.push("the hostile app was never built: its code's attempts were not made".into());
        row.not_refused += 1;
    }
    row.not_refused += tally.misses.len() + forged_deploys;
    row.notes.extend(tally.misses.iter().cloned());
    if forged_deploys > 0 {
        row.notes.push(format!("{forged_deploys} forged tags reached the manifest repository"));
    }
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_commits(&world, &mut row);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

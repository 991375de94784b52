//! The `bad-webhooks` scenario: a burst of malformed, missigned and oversized webhooks (generic
//! and GitHub), with good pushes among them. Each bad one must be refused with a 4xx, nothing but
//! the good pushes may be queued, and every good push must still deploy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;

use crate::{
    scenarios::{apps, check_commits, check_pushes, count_crashes, drain, wait_builds_finished, wait_ready, PUSH_LIMIT},
    world::{self, send_push, AppRepo, World},
    Rng, Row, Scale,
};

/// The kinds of bad webhook request, sent in turn. Each must be answered 4xx and queue nothing.
fn bad_request(kind: usize, i: usize, repo_url: &str) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let good = json(serde_json::json!({"repo_url": repo_url, "ref": "refs/heads/main", "commit": format!("{:040x}", i)}));
    let ct = ("content-type", "application/json".to_string());
    match kind % 10 {
        // Signed with another secret.
        0 => {
            let sig = world::sign_with("not-the-secret", &good);
            ("generic: wrong secret".into(), vec![ct, ("x-conveyor-signature-256", sig)], good)
        }
        1 => ("generic: no signature".into(), vec![ct], good),
        2 => {
            let body: Vec<u8> = (0..200).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
            ("generic: signed garbage".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        3 => {
            let body = json(serde_json::json!({"repo_url": repo_url, "ref": "refs/heads/main"}));
            ("generic: no commit".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        4 => {
            let body = json(serde_json::json!({"repo_url": repo_url, "ref": "refs/heads/main", "commit": "$(rm -rf /)"}));
            ("generic: commit not an id".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        5 => {
            let body = json(
                serde_json::json!({"repo_url": repo_url, "ref": "refs/heads/--upload-pack=touch /tmp/x", "commit": format!("{:040x}", i)}),
            );
            ("generic: invalid ref".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        6 => {
            let body = vec![b'{'; (1 << 20) + 1024];
            ("generic: body over 1 MiB".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        7 => (
            "github: sha1 signature".into(),
            vec![ct, ("x-github-event", "push".into()), ("x-hub-signature", "sha1=0000000000000000000000000000000000000000".into())],
            good,
        ),
        8 => {
            let body = good[..good.len() / 2].to_vec();
            ("generic: truncated JSON".into(), vec![ct, ("x-conveyor-signature-256", world::sign(&body))], body)
        }
        _ => (
            "github: bad signature".into(),
            vec![ct, ("x-github-event", "push".into()), ("x-hub-signature-256", format!("sha256={}", "ab".repeat(32)))],
            good,
        ),
    }
}

/// Malformed or mis-signed webhook requests over 32 connections at two ci-service replicas,
/// with real pushes among them.
pub async fn bad_webhooks(scale: &Scale, _rng: Rng) -> anyhow::Result<Row> {
    let names = apps("app", 2);
    let world = World::new(&names).await?;
    let mut ci = world.start_ci(2, 1);
    let mut cd = world.start_cd(1);
    let ci_urls = ci.urls();
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let mut repos: Vec<AppRepo> = names.iter().map(|a| world.app_repo(a)).collect();
    let target = repos[0].bare.url();

    let answers: Arc<Mutex<HashMap<(String, String), usize>>> = Arc::default();
    let bad = futures::stream::iter(0..scale.bad_webhooks)
        .map(|i| {
            let (http, url, answers) = (world.http.clone(), ci_urls[i % ci_urls.len()].clone(), answers.clone());
            let (kind, headers, body) = bad_request(i, i, &target);
            async move {
                let mut req = http.post(format!("{url}/hooks/push")).timeout(Duration::from_secs(30)).body(body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let status = match req.send().await {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(e) => format!("error: {e}"),
                };
                *answers.lock().unwrap().entry((kind, status)).or_default() += 1;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    let http = world.http.clone();
    let good = async {
        for (n, repo) in repos.iter_mut().enumerate() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let commit = World::commit_and_push(repo, n);
            send_push(&http, &ci_urls, n, &repo.bare.url(), &commit, PUSH_LIMIT).await?;
        }
        anyhow::Ok(())
    };
    let (_, sent) = tokio::join!(bad, good);
    sent?;
    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    let answers = answers.lock().unwrap().clone();
    let refused: usize = answers.iter().filter(|((_, s), _)| s.starts_with('4')).map(|(_, n)| n).sum();
    let mut row = Row {
        scenario: "bad-webhooks",
        injected: scale.bad_webhooks,
        faults: format!("{} bad webhooks, {refused} refused 4xx", scale.bad_webhooks),
        inputs: format!("{} good pushes among them", names.len()),
        ..Row::default()
    };
    let mut by_kind: Vec<_> = answers.iter().collect();
    by_kind.sort();
    row.notes.push(format!("answers: {}", by_kind.iter().map(|((k, s), n)| format!("{k} → {s} ×{n}")).collect::<Vec<_>>().join("; ")));
    if refused != scale.bad_webhooks {
        row.not_refused = scale.bad_webhooks - refused;
        row.notes.push(format!("{} bad requests were not refused with a 4xx", scale.bad_webhooks - refused));
    }
    // Nothing was queued but the good pushes.
    let records = world.builds(&ci_urls).await;
    let queued: usize = records.values().map(Vec::len).sum();
    if queued != names.len() {
        row.duplicates += queued.saturating_sub(names.len());
        row.notes.push(format!("{queued} builds were queued for {} good pushes", names.len()));
    }
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_commits(&world, &mut row);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

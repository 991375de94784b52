//! What the trusted deploy channel costs per event (issue 13: under 5% of the webhook and deploy
//! paths): ci-service's Ed25519 signature of an image-built event and cd-service's check of it
//! (`Trust::check`: subject, key id, signature), on a real event payload, timed over many events.
//! The end-to-end figures (publish -> commit, ci-webhooks) vary by more than that from run to
//! run on this machine, so the cost is measured where it is spent and set beside them.

use std::time::Instant;

use conveyor_benches::env_num;
use conveyor_proto::{signing::EventSigner, ImageBuilt, ImageRef, SourceRef, EVENT_VERSION};

fn event(i: usize) -> ImageBuilt {
    let now = time::OffsetDateTime::now_utc();
    ImageBuilt {
        version: EVENT_VERSION,
        event_id: format!("ci-{i}-656f0543a1b2"),
        app: "flask-app".into(),
        image: ImageRef {
            repository: "127.0.0.1:5000/flask-app".into(),
            tag: format!("{i:012x}"),
            digest: format!("sha256:{}", "ab".repeat(32)),
        },
        source: SourceRef { repo_url: "/srv/git/flask-app.git".into(), commit: format!("{i:040x}"), branch: "main".into() },
        build_id: i.to_string(),
        build_started_at: now,
        built_at: now,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        deploy: None,
    }
}

fn main() {
    let n = env_num("BENCH_SIGN_EVENTS", 20_000);
    let ci = EventSigner::from_seed([7; 32]);
    let cd = EventSigner::from_seed([8; 32]);
    // cd-service's own check, as its consumer runs it on every event.
    let trust = cd_service::trust::Trust::new(ci.public(), cd, None);
    let events: Vec<(ImageBuilt, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let e = event(i);
            let (subject, payload) = (e.subject(), e.to_json().expect("valid"));
            (e, subject, payload)
        })
        .collect();
    let bytes = events.iter().map(|(_, _, p)| p.len()).sum::<usize>() / n;

    let started = Instant::now();
    let signed: Vec<async_nats::HeaderMap> = events
        .iter()
        .map(|(_, s, p)| {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in ci.headers(s, p) {
                h.insert(k, v.as_str());
            }
            h
        })
        .collect();
    let sign = started.elapsed().as_secs_f64() * 1e6 / n as f64;

    let started = Instant::now();
    let mut ok = 0;
    for ((event, subject, payload), h) in events.iter().zip(&signed) {
        ok += usize::from(trust.check(subject, Some(h), payload, event).is_ok());
    }
    let verify = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    assert_eq!(ok, n, "every signature verifies");

    // The publish -> commit p50 that cd-gitops measured (BENCH_COMMIT_P50_MS: set it to this
    // machine's figure from the same run).
    let p50_ms = env_num("BENCH_COMMIT_P50_MS", 60) as f64;
    let share = |us: f64| us / (p50_ms * 1000.0) * 100.0;
    println!("event-signing: {n} image-built events of {bytes} bytes, Ed25519 (ed25519-dalek), release build\n");
    println!("| step | per event | share of a {p50_ms:.0} ms publish -> commit (cd-gitops p50) | goal |");
    println!("|---|---|---|---|");
    println!("| sign (ci-service, once per build; not on the webhook path) | {sign:.1} µs | {:.3}% | < 5% |", share(sign));
    let verdict = if share(sign) + share(verify) < 5.0 { "PASS" } else { "FAIL" };
    println!("| verify (cd-service's `Trust::check`, once per event) | {verify:.1} µs | {:.3}% | < 5%: {verdict} |", share(verify));
}

//! The trusted deploy channel, on the deploy side: only a build event signed by ci-service's key
//! (on its app's build subject) or cd-service's own signed promotion or replay is applied;
//! unsigned, foreign-key, altered and misplaced events are dead-lettered with the reason (in
//! `Conveyor-Dead-Reason` and `GET /outcomes`) and nothing is committed; promotions and replays
//! can reach only images of verified builds; `POST /promote` and `POST /replay` need the API
//! token, and without one configured the service does not start unless told to.

mod common;
use common::{applied, image_built, seeded_repo, start_cd, try_start_cd, RunningCd};

use std::path::Path;

use cd_service::StartError;
use conveyor_proto::{headers, signing::EventSigner, ImageBuilt, DEADLETTER_STREAM, EVENTS_STREAM};
use conveyor_testkit::{BareRepo, TestNats, API_TOKEN};
use serde_json::{json, Value};

const REPO: &str = "registry.example.test/team/web";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/environments");

fn build(tag: &str, minute: i64) -> ImageBuilt {
    image_built("web", REPO, tag, time::macros::datetime!(2026-12-01 10:00 UTC) + time::Duration::minutes(minute))
}

fn tag_in(bare: &BareRepo, env: &str) -> String {
    let k = bare.show("main", &format!("overlays/{env}/kustomization.yaml"));
    k.lines().find_map(|l| l.trim().strip_prefix("newTag: ")).unwrap().trim_matches('"').to_string()
}

async fn dead_reasons(nats: &TestNats) -> Vec<String> {
    let dead = nats.stream_messages_with_headers(DEADLETTER_STREAM).await;
    dead.iter().map(|(_, _, h)| h.get(headers::DEAD_REASON).map(|v| v.to_string()).unwrap_or_default()).collect()
}

async fn post(cd: &RunningCd, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("http://{}{path}", cd.http)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_events_signed_by_the_right_key_are_applied_and_the_rest_are_dead_lettered_with_the_reason() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    let commits = bare.count("main");
    let ci = nats.keys.ci_signer();
    let stranger = EventSigner::from_seed([42; 32]);

    // Well-formed events for tag `pwned`, each wrong in one way.
    let pwned = build("pwned", 5);
    let subject = pwned.subject();
    let payload = pwned.to_json().unwrap();
    nats.publish_with(&subject, payload.clone(), None).await; // unsigned
    nats.publish_with(&subject, payload.clone(), Some(&stranger)).await; // a key nobody trusts
    nats.publish_with(&subject, payload.clone(), Some(&nats.keys.cd_signer())).await; // cd's key cannot sign builds
                                                                                      // A genuine signature of ci-service over another payload, with the tag changed afterwards.
    let genuine = build("v2", 1).to_json().unwrap();
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in ci.headers(&subject, &genuine) {
        h.insert(k, v.as_str());
    }
    let altered = String::from_utf8(genuine.clone()).unwrap().replace("\"v2\"", "\"pwned\"").into_bytes();
    let js = nats.jetstream().await;
    js.publish_with_headers(subject.clone(), h, altered.into()).await.unwrap().await.unwrap();
    // ci-service's key on a promotion to production: builds may not promote.
    let mut promo = build("pwned", 6);
    promo.event_id = "forged-promotion".into();
    promo.deploy = Some(conveyor_proto::DeployIntent {
        kind: conveyor_proto::IntentKind::Promotion,
        environment: "production".into(),
        requested_by: "mallory".into(),
        of_event: "evt-web-pwned".into(),
        of_sequence: None,
        of_traceparent: None,
    });
    nats.publish_with(&promo.subject(), promo.to_json().unwrap(), Some(&ci)).await;
    // A ci-signed build for another app, published on web's subject.
    let mut other = image_built("api", "registry.example.test/team/api", "pwned", time::OffsetDateTime::now_utc());
    other.event_id = "moved".into();
    let other_payload = other.to_json().unwrap();
    nats.publish_with(&subject, other_payload, Some(&ci)).await;

    // The real build after all of them still lands.
    let good = nats.publish_event(&build("v2", 1)).await;
    applied(&nats, good).await;
    assert_eq!(tag_in(&bare, "staging"), "v2");
    assert_eq!(tag_in(&bare, "production"), "1.0.0");
    assert_eq!(bare.count("main"), commits + 1, "only the signed build was committed");

    let reasons = dead_reasons(&nats).await;
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    assert!(reasons[0].starts_with("unsigned event"), "{reasons:#?}");
    assert!(reasons[1].contains(&format!("signed by key {}, which is not trusted for build events", stranger.key_id())), "{reasons:#?}");
    assert!(reasons[2].contains(&format!("signed by key {}, which is not trusted for build events", nats.keys.cd_signer().key_id())));
    assert!(reasons[3].contains("bad signature") && reasons[3].contains("altered"), "{reasons:#?}");
    assert!(reasons[4].contains("not trusted for promotions and replays"), "{reasons:#?}");
    assert!(reasons[5].contains("arrived on subject conveyor.images.built.web, not conveyor.images.built.api"), "{reasons:#?}");

    let outcomes: Vec<conveyor_api::cd::OutcomeRecord> =
        reqwest::get(format!("http://{}/outcomes?outcome=dead_lettered", cd.http)).await.unwrap().json().await.unwrap();
    let details: Vec<&str> = outcomes.iter().filter_map(|o| o.outcome.detail()).collect();
    assert_eq!(details.len(), 6, "{outcomes:?}");
    assert!(details.iter().any(|d| d.starts_with("unsigned event")), "{details:?}");

    // Nothing forged can be promoted: `pwned` exists in the stream only unverified.
    let (status, body) =
        post(&cd, "/promote", Some(API_TOKEN), json!({"app": "web", "environment": "production", "tag": "pwned", "requested_by": "x"}))
            .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_tag")), "{body}");
    let (status, body) = post(&cd, "/replay", Some(API_TOKEN), json!({"app": "web", "environment": "staging", "tag": "pwned"})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_tag")), "{body}");
    // Nor replayed by its sequence.
    let unsigned_seq = nats.stream_messages(EVENTS_STREAM).await[0].0;
    let (status, body) =
        post(&cd, "/replay", Some(API_TOKEN), json!({"app": "web", "environment": "staging", "sequence": unsigned_seq})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("untrusted_event")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("unsigned event"), "{body}");

    // A verified build is promoted by cd-service's own signed promotion, which is applied.
    let (status, body) =
        post(&cd, "/promote", Some(API_TOKEN), json!({"app": "web", "environment": "production", "tag": "v2", "requested_by": "alice"}))
            .await;
    assert_eq!(status, 202, "{body}");
    applied(&nats, body["sequence"].as_u64().unwrap()).await;
    assert_eq!(tag_in(&bare, "production"), "v2");
    let stored = nats.stream_messages_with_headers(EVENTS_STREAM).await;
    let (_, _, h) = stored.last().unwrap();
    assert_eq!(h.get(headers::KEY_ID).map(|v| v.to_string()), Some(nats.keys.cd_signer().key_id().to_string()), "signed by cd-service");
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_and_replay_need_the_api_token_and_a_refusal_changes_nothing() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let cd = start_cd(&nats, &bare.url()).await;
    applied(&nats, nats.publish_event(&build("v2", 1)).await).await;
    let (events, head) = (nats.stream_messages(EVENTS_STREAM).await.len(), bare.head("main"));

    let promote = json!({"app": "web", "environment": "production", "tag": "v2", "requested_by": "mallory"});
    let replay = json!({"app": "web", "environment": "staging", "tag": "v2"});
    for (path, body) in [("/promote", &promote), ("/replay", &replay)] {
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, answer) = post(&cd, path, token, body.clone()).await;
            assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")), "{path} with {token:?}: {answer}");
            assert!(answer["message"].is_string(), "{answer}");
        }
        // Refused before the body is read: garbage without a token is 401 too, not 400.
        let resp = reqwest::Client::new().post(format!("http://{}{path}", cd.http)).body("{").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
    let basic = reqwest::Client::new().post(format!("http://{}/promote", cd.http)).basic_auth("x", Some(API_TOKEN)).json(&promote);
    assert_eq!(basic.send().await.unwrap().status().as_u16(), 401, "only a bearer token counts");
    assert_eq!(nats.stream_messages(EVENTS_STREAM).await.len(), events, "nothing was published");
    assert_eq!(bare.head("main"), head, "nothing was committed");

    // Reads stay open; unknown routes and methods answer in the documented JSON shape.
    assert_eq!(reqwest::get(format!("http://{}/outcomes", cd.http)).await.unwrap().status().as_u16(), 200);
    let missing = reqwest::get(format!("http://{}/nope", cd.http)).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
    let wrong_method = reqwest::get(format!("http://{}/promote", cd.http)).await.unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);
    assert_eq!(wrong_method.json::<Value>().await.unwrap()["error"], "method_not_allowed");
    let huge = reqwest::Client::new().post(format!("http://{}/promote", cd.http)).header("x-filler", "a".repeat(100 * 1024));
    let huge = huge.bearer_auth(API_TOKEN).json(&promote).send().await.unwrap();
    assert_eq!(huge.status().as_u16(), 431);
    assert_eq!(huge.json::<Value>().await.unwrap()["error"], "headers_too_large");

    // With the token, the same promotion goes through.
    let (status, body) = post(&cd, "/promote", Some(API_TOKEN), promote.clone()).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_keys_or_with_wrong_nats_credentials_the_service_does_not_start() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let url = bare.url();

    let refused = try_start_cd(&nats, &url, |c| c.api_token = None).await.err().expect("no token: refused");
    assert!(matches!(refused, StartError::NoApiToken), "{refused}");
    assert!(refused.to_string().contains("--allow-unauthenticated-api"));
    let opened = try_start_cd(&nats, &url, |c| {
        c.api_token = None;
        c.allow_unauthenticated_api = true;
    })
    .await
    .expect("explicitly unauthenticated: starts");
    let (status, _) = post(&opened, "/replay", None, json!({"app": "web", "environment": "staging", "tag": "nope"})).await;
    assert_eq!(status, 404, "open API, as asked");
    drop(opened);

    let refused = try_start_cd(&nats, &url, |c| c.ci_public_keys.clear()).await.err().expect("no ci key: refused");
    assert!(matches!(refused, StartError::NoCiKeys), "{refused}");
    let refused = try_start_cd(&nats, &url, |c| c.signing_key_file = None).await.err().expect("no signing key: refused");
    assert!(matches!(refused, StartError::NoSigningKey), "{refused}");

    let refused = try_start_cd(&nats, &url, |c| c.nats.password = Some(cd_service::gitops::Secret::new("wrong"))).await.err().unwrap();
    assert!(refused.to_string().contains("refused the credentials"), "{refused}");
    let refused = try_start_cd(&nats, &url, |c| c.nats = conveyor_proto::connect::NatsArgs::anonymous(&nats.url)).await.err().unwrap();
    assert!(refused.to_string().contains("this server needs credentials"), "{refused}");
    // ci-service's credentials lack what cd-service needs: named as a permission NATS denied.
    let refused = try_start_cd(&nats, &url, |c| c.nats = nats.ci_args()).await.err().unwrap();
    assert!(refused.to_string().contains("Permissions Violation"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_ci_key_is_accepted_beside_the_old_one() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let new_key = EventSigner::from_seed([3; 32]);
    let new_pub = dir.path().join("ci-new.pub.pem");
    std::fs::write(&new_pub, new_key.public_pem()).unwrap();
    let keys = nats.keys.ci_pub.clone();
    let _cd = try_start_cd(&nats, &bare.url(), |c| c.ci_public_keys = vec![keys, new_pub]).await.unwrap();
    applied(&nats, nats.publish_event(&build("v2", 1)).await).await;
    assert_eq!(tag_in(&bare, "staging"), "v2", "old key");
    let v3 = build("v3", 2);
    applied(&nats, nats.publish_with(&v3.subject(), v3.to_json().unwrap(), Some(&new_key)).await).await;
    assert_eq!(tag_in(&bare, "staging"), "v3", "new key");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_fields_and_events_are_dead_lettered_even_when_signed() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let _cd = start_cd(&nats, &bare.url()).await;
    let ci = nats.keys.ci_signer();
    let commits = bare.count("main");

    // A signed, otherwise valid event whose repo_url is 5 KiB: it would be a 5 KiB commit message.
    let mut long_url = serde_json::to_value(build("v2", 1)).unwrap();
    long_url["source"]["repo_url"] = json!(format!("/srv/{}", "a".repeat(5 * 1024)));
    let payload = long_url.to_string().into_bytes();
    nats.publish_with("conveyor.images.built.web", payload, Some(&ci)).await;
    // A 200 KiB event (within NATS's 1 MiB message limit).
    let mut huge = serde_json::to_value(build("v3", 2)).unwrap();
    huge["build_id"] = json!("b".repeat(200 * 1024));
    nats.publish_with("conveyor.images.built.web", huge.to_string().into_bytes(), Some(&ci)).await;
    // A trailer forged through a line break in a field.
    let mut forged = serde_json::to_value(build("v4", 3)).unwrap();
    forged["event_id"] = json!("evt\nConveyor-Environment: production");
    let last = nats.publish_with("conveyor.images.built.web", forged.to_string().into_bytes(), Some(&ci)).await;
    applied(&nats, last).await;

    assert_eq!(bare.count("main"), commits, "nothing was committed");
    let reasons = dead_reasons(&nats).await;
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(reasons[0].contains("`source.repo_url` is 5125 bytes long, more than the 4096 allowed"), "{reasons:#?}");
    assert!(reasons[1].contains("more than the 65536 allowed"), "{reasons:#?}");
    assert!(reasons[2].contains("`event_id` contains a control character"), "{reasons:#?}");
}

/// A stream and durable consumer made by the version before promotions had their own subject
/// (`conveyor.images.built.>` only) are upgraded at start: the stream takes the deploy subject,
/// the consumer is made again from its ack floor (nothing it acked is applied again, nothing
/// pending is lost), and promotions then flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_and_consumer_of_the_previous_version_are_upgraded_in_place() {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bare = seeded_repo(dir.path(), Path::new(FIXTURE));
    let js = nats.jetstream().await;
    let mut old = conveyor_proto::stream::events_stream_config(100_000, std::time::Duration::ZERO);
    old.subjects = vec![conveyor_proto::EVENTS_SUBJECT_WILDCARD.into()];
    let stream = js.create_stream(old).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("cd-service".into()),
            filter_subject: conveyor_proto::EVENTS_SUBJECT_WILDCARD.into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    // The old cd-service applied and acked v1; v2 was still pending when it stopped.
    nats.publish_event(&build("v1", 1)).await;
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    batch.next().await.unwrap().unwrap().double_ack().await.unwrap();
    let pending = nats.publish_event(&build("v2", 2)).await;
    let commits = bare.count("main");

    let cd = start_cd(&nats, &bare.url()).await;
    applied(&nats, pending).await;
    let info = js.get_stream(EVENTS_STREAM).await.unwrap().info().await.unwrap().config.clone();
    assert_eq!(info.subjects, [conveyor_proto::EVENTS_CONSUMER_FILTER], "the stream took the deploy subject");
    let mut c = js.get_stream(EVENTS_STREAM).await.unwrap().get_consumer::<pull::Config>("cd-service").await.unwrap();
    assert_eq!(c.info().await.unwrap().config.filter_subject, conveyor_proto::EVENTS_CONSUMER_FILTER);
    assert_eq!(tag_in(&bare, "staging"), "v2");
    assert_eq!(bare.count("main"), commits + 1, "only the pending event was applied; the acked one was not again");
    let (status, body) =
        post(&cd, "/promote", Some(API_TOKEN), json!({"app": "web", "environment": "production", "tag": "v2", "requested_by": "ops"}))
            .await;
    assert_eq!(status, 202, "{body}");
    applied(&nats, body["sequence"].as_u64().unwrap()).await;
    assert_eq!(tag_in(&bare, "production"), "v2");
}

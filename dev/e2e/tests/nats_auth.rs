//! NATS as operators run it, with the users and permissions Conveyor ships
//! (`k8s-manifests/conveyor/nats-auth.conf`): anonymous clients and wrong passwords are
//! refused; cd-service's user cannot publish an image-built event; ci-service's user cannot
//! publish promotions or dead letters, nor read or drive cd-service's consumer; a denied
//! request is named for what it is. And the Kubernetes ConfigMap carries the same file.

use std::time::Duration;

use async_nats::jetstream;
use conveyor_proto::connect::{connect, ConnectError, NatsArgs};
use conveyor_testkit::{nats::AUTH_CONF, TestNats};

const LIMIT: Duration = Duration::from_secs(5);

/// JetStream over `args`' user, with a short request timeout (a denied request gets no answer).
async fn js_as(args: &NatsArgs) -> (jetstream::Context, conveyor_proto::connect::Connection) {
    let conn = connect(args, "auth-test", LIMIT).await.expect("connects");
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(2)).build(conn.client.clone());
    (js, conn)
}

/// True when JetStream stored a publish on `subject`.
async fn publish_lands(js: &jetstream::Context, subject: &str) -> bool {
    match js.publish(subject.to_string(), "{}".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_clients_and_wrong_passwords_are_refused_at_connect() {
    let nats = TestNats::start().await;
    let anonymous = connect(&NatsArgs::anonymous(&nats.url), "anon", LIMIT).await.expect_err("anonymous: refused");
    assert!(matches!(&anonymous, ConnectError::Refused { what, .. } if what.contains("needs credentials")), "{anonymous}");
    let wrong = connect(&NatsArgs::user(&nats.url, "conveyor-ci", "not-the-password"), "wrong", LIMIT).await.expect_err("refused");
    assert!(matches!(wrong, ConnectError::Refused { .. }), "{wrong}");
    let unknown = connect(&NatsArgs::user(&nats.url, "mallory", &nats.passwords.ci), "unknown", LIMIT).await.expect_err("refused");
    assert!(matches!(unknown, ConnectError::Refused { .. }), "{unknown}");
    // The plain client library sees the same: nobody gets in without one of the users.
    assert!(async_nats::connect(&nats.url).await.is_err(), "anonymous raw client refused");
    assert!(connect(&nats.ci_args(), "ci", LIMIT).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_user_may_do_only_its_own_part() {
    let nats = TestNats::start().await;
    nats.ensure_events_stream().await;
    let admin = nats.jetstream().await;
    admin.get_or_create_stream(conveyor_proto::stream::deadletter_stream_config(100)).await.unwrap();
    let events = admin.get_stream(conveyor_proto::EVENTS_STREAM).await.unwrap();
    // cd-service's durable consumer, as cd-service makes it.
    events
        .get_or_create_consumer(
            "cd-service",
            jetstream::consumer::pull::Config {
                durable_name: Some("cd-service".into()),
                filter_subject: conveyor_proto::EVENTS_CONSUMER_FILTER.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let (ci, ci_conn) = js_as(&nats.ci_args()).await;
    let (cd, cd_conn) = js_as(&nats.cd_args()).await;

    // ci-service publishes builds; cd-service cannot.
    assert!(publish_lands(&ci, "conveyor.images.built.web").await, "ci publishes image-built events");
    assert!(!publish_lands(&cd, "conveyor.images.built.web").await, "cd cannot publish an image-built event");
    let refused = cd_conn.refusals.last().expect("NATS reported the denied publish");
    assert!(refused.contains("Permissions Violation for Publish to \"conveyor.images.built.web\""), "{refused}");
    assert!(cd_conn.refusals.suffix().contains("lack this permission"));

    // cd-service publishes promotions and dead letters; ci-service cannot.
    assert!(publish_lands(&cd, "conveyor.images.deploy.web").await, "cd publishes promotions and replays");
    assert!(publish_lands(&cd, conveyor_proto::DEADLETTER_SUBJECT).await, "cd writes dead letters");
    assert!(!publish_lands(&ci, "conveyor.images.deploy.web").await, "ci cannot promote");
    assert!(!publish_lands(&ci, conveyor_proto::DEADLETTER_SUBJECT).await, "ci cannot write dead letters");
    assert!(ci_conn.refusals.last().unwrap().contains("Permissions Violation"), "{:?}", ci_conn.refusals.last());

    // ci-service cannot touch cd-service's consumer: not read it, not pull from it, not delete it.
    let ci_events = tokio::time::timeout(Duration::from_secs(3), ci.get_stream(conveyor_proto::EVENTS_STREAM)).await;
    if let Ok(Ok(stream)) = ci_events {
        let info =
            tokio::time::timeout(Duration::from_secs(3), stream.get_consumer::<jetstream::consumer::pull::Config>("cd-service")).await;
        assert!(!matches!(info, Ok(Ok(_))), "ci read cd-service's consumer");
        let deleted = tokio::time::timeout(Duration::from_secs(3), stream.delete_consumer("cd-service")).await;
        assert!(!matches!(deleted, Ok(Ok(_))), "ci deleted cd-service's consumer");
    }
    let next = ci_conn.client.request("$JS.API.CONSUMER.MSG.NEXT.CONVEYOR_IMAGES.cd-service", "{\"batch\":1,\"expires\":500000000}".into());
    assert!(!matches!(tokio::time::timeout(Duration::from_secs(3), next).await, Ok(Ok(_))), "ci pulled from cd-service's consumer");
    assert!(events.get_consumer::<jetstream::consumer::pull::Config>("cd-service").await.is_ok(), "the consumer is still there");

    // cd-service cannot reach into ci-service's job queue.
    assert!(!publish_lands(&cd, "conveyor.ci.jobs.web.0123456789abcdef").await, "cd cannot queue builds");

    // Only what was allowed landed: one build, one promotion.
    let stored = nats.stream_messages(conveyor_proto::EVENTS_STREAM).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[test]
fn the_kubernetes_configmap_carries_the_same_users_and_permissions() {
    let text = std::fs::read_to_string(conveyor_testkit::repo_root().join("k8s-manifests/conveyor/nats.yaml")).unwrap();
    use serde::Deserialize;
    let docs: Vec<serde_norway::Value> =
        serde_norway::Deserializer::from_str(&text).map(|d| serde_norway::Value::deserialize(d).expect("valid YAML")).collect();
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "nats-config")
        .expect("nats.yaml has the nats-config ConfigMap");
    assert_eq!(config_map["data"]["auth.conf"].as_str(), Some(AUTH_CONF), "nats.yaml's auth.conf differs from nats-auth.conf");
}

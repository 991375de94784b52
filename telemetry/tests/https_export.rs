//! Both export paths over `https://`: request spans on the lean OTLP/HTTP path and every other
//! span through the SDK's exporter reach a collector behind TLS (rustls in front of the test
//! receiver) when its CA is given as `OTEL_EXPORTER_OTLP_CERTIFICATE` would give it, and the
//! receiver decodes both. One test: the subscriber is global to the process.

use std::time::Duration;

use conveyor_telemetry::{context::RequestSpan, Export, Protocol, RequestSpans, Settings, Telemetry};
use conveyor_testkit::{otlp::describe, otlp::OtlpReceiver, TlsProxy};

#[tokio::test(flavor = "multi_thread")]
async fn lean_and_sdk_spans_reach_an_https_collector_with_a_private_ca() {
    let receiver = OtlpReceiver::start().await;
    let plain: std::net::SocketAddr = receiver.http_base.trim_start_matches("http://").parse().expect("host:port");
    let tls = TlsProxy::start(plain).await;
    let settings = Settings::from_vars("ci-service", |k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(tls.url()),
        "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some(tls.ca_file().display().to_string()),
        "RUST_LOG" => Some("warn".into()),
        _ => None,
    })
    .expect("settings");
    assert_eq!(
        settings.export,
        Some(Export { protocol: Protocol::HttpProtobuf, endpoint: format!("{}/v1/traces", tls.url()), certificate: Some(tls.ca_file()) })
    );
    assert_eq!(settings.request_spans, RequestSpans::Lean { always_on: false }, "a CA file keeps the lean path");
    let telemetry = Telemetry::install(settings).expect("install telemetry");

    let request = RequestSpan::start("receive", "/hooks/push", &http::HeaderMap::new());
    request.end(202, None);
    tracing::info_span!("checkout").in_scope(|| tracing::info!("a span of the SDK path"));
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = receiver
        .wait_until(Duration::from_secs(20), "both spans over https", |s| {
            s.iter().any(|x| x.name == "receive") && s.iter().any(|x| x.name == "checkout")
        })
        .await;
    let receive = spans.iter().find(|s| s.name == "receive").unwrap();
    assert_eq!(receive.attr("http.route"), Some("/hooks/push"), "{}", describe(&spans));
    assert_eq!(receive.service, "ci-service");
}

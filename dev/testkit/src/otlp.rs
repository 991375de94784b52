//! An OTLP trace receiver for tests, standing in for Jaeger's collector: it takes exports over
//! HTTP/protobuf (`POST /v1/traces`) and over gRPC (the OTLP `TraceService`), decodes the real
//! protobuf with `opentelemetry-proto`, and keeps the spans flat for assertions. HTTP bodies are
//! decoded when the spans are asked for, so a benchmark's receiver does not compete for CPU
//! with the service it measures.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::header, response::IntoResponse, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, AnyValue, KeyValue},
};
use prost::Message;

/// A span as received.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// OTLP `StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub attributes: HashMap<String, String>,
    /// (name, attributes) of each event.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Which transport delivered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// HTTP bodies not decoded yet.
    raw: Vec<Bytes>,
    requests: Vec<Transport>,
}

pub struct OtlpReceiver {
    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`.
    pub http_base: String,
    /// Address for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub grpc_endpoint: String,
    received: Arc<Mutex<Received>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Grpc(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        take(&self.0, request.into_inner(), Some(Transport::Grpc));
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl OtlpReceiver {
    /// Listens on two free loopback ports (HTTP and gRPC).
    pub async fn start() -> OtlpReceiver {
        let received: Arc<Mutex<Received>> = Arc::default();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/HTTP port");
        let http_base = format!("http://{}", http.local_addr().expect("bound"));
        let store = received.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let store = store.clone();
                async move {
                    {
                        let mut r = store.lock().expect("receiver lock");
                        r.raw.push(body);
                        r.requests.push(Transport::Http);
                    }
                    let answer = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                    ([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/gRPC port");
        let grpc_endpoint = format!("http://{}", grpc.local_addr().expect("bound"));
        let service = TraceServiceServer::new(Grpc(received.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        OtlpReceiver { http_base, grpc_endpoint, received, tasks: vec![http_task, grpc_task] }
    }

    /// Every span received so far. Panics if an HTTP export was not OTLP protobuf.
    pub fn spans(&self) -> Vec<Span> {
        let raw = std::mem::take(&mut self.received.lock().expect("receiver lock").raw);
        for body in raw {
            let req = ExportTraceServiceRequest::decode(body).unwrap_or_else(|e| panic!("an HTTP export is not OTLP protobuf: {e}"));
            take(&self.received, req, None);
        }
        self.received.lock().expect("receiver lock").spans.clone()
    }

    /// How many export requests came over each transport.
    pub fn requests(&self, transport: Transport) -> usize {
        self.received.lock().expect("receiver lock").requests.iter().filter(|t| **t == transport).count()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }

    /// Waits until `done` holds for the spans received, or panics with what arrived.
    pub async fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!("{what}: not received within {limit:?}; got:\n{}", describe(&spans));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One line per span: service, name, ids, parent, status.
pub fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {:<10} {:<12} trace={} span={} parent={} status={} {}",
                s.service,
                s.name,
                s.trace_id,
                s.span_id,
                s.parent_span_id.as_deref().unwrap_or("-"),
                s.status_code,
                s.status_message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Adds the spans of a decoded export (and counts the request, when not counted on arrival).
fn take(store: &Mutex<Received>, req: ExportTraceServiceRequest, transport: Option<Transport>) {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    kind: s.kind,
                    status_code: status.code,
                    status_message: status.message,
                    attributes: attributes(&s.attributes),
                    events: s.events.iter().map(|e| (e.name.clone(), attributes(&e.attributes))).collect(),
                    links: s.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                });
            }
        }
    }
    let mut r = store.lock().expect("receiver lock");
    r.spans.extend(out);
    r.requests.extend(transport);
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(value).unwrap_or_default())).collect()
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => a.values.iter().map(value).collect::<Vec<_>>().join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

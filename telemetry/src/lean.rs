//! The lean export path for request spans over OTLP/HTTP: a finished [`crate::context::RequestSpan`]
//! is a small record pushed onto a queue, and a background thread writes each batch straight
//! into an OTLP `ExportTraceServiceRequest` (opentelemetry-proto's types, encoded by prost) and POSTs it
//! to the same endpoint the SDK's exporter uses. This skips what the SDK does for every span
//! (span builder, sampler call, `SpanData`, the batch processor's channel, the conversion into the
//! generated protobuf types), which costs several times more than the webhook span itself. It is
//! used only where it gives the same result: OTLP/HTTP with the default parent-based always-on
//! sampler (or always-on); anything else goes through the SDK.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue as KeyValuePb},
    resource::v1::Resource as ResourcePb,
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status},
};
use opentelemetry_sdk::Resource;
use prost::{encoding, Message};

/// Spans held while the exporter is behind; more are dropped (and counted), as the SDK's batch
/// processor does with its default queue of 2048.
const MAX_QUEUE: usize = 2048;
/// Spans per request, and how long a span waits at most before it is sent.
const MAX_BATCH: usize = 512;
const DELAY: Duration = Duration::from_secs(1);
/// Tries per batch when the collector is briefly away, `RETRY_WAIT`, then twice that, apart.
const EXPORT_ATTEMPTS: u32 = 3;
const RETRY_WAIT: Duration = Duration::from_millis(200);

/// A finished request span.
pub(crate) struct Finished {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: &'static str,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<KeyValue>,
    /// The status message of an error span.
    pub error: Option<&'static str>,
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

struct Shared {
    queue: Mutex<Vec<Finished>>,
    wake: Condvar,
    stopping: AtomicBool,
    dropped: AtomicU64,
}

/// The queue and the thread that empties it.
pub(crate) struct LeanExporter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LeanExporter {
    /// Starts the export thread for `endpoint` (the full URL, e.g. `http://host:4318/v1/traces`).
    /// Posts with `client` (the one the SDK's OTLP/HTTP exporter uses too).
    pub fn start(endpoint: String, client: reqwest::blocking::Client, resource: &Resource, scope: &'static str) -> LeanExporter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::with_capacity(MAX_BATCH)),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let resource_bytes = encode_resource(resource);
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-lean-export".into())
            .spawn(move || export_loop(&worker, &client, &endpoint, &resource_bytes, scope))
            .expect("spawn the span export thread");
        LeanExporter { shared, thread: Mutex::new(Some(thread)) }
    }

    pub fn push(&self, span: Finished) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUE {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push(span);
        if q.len() >= MAX_BATCH {
            self.shared.wake.notify_one();
        }
    }

    /// Sends what is queued and stops the thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            eprintln!("telemetry: {dropped} request spans were dropped because the exporter fell behind");
        }
    }
}

fn export_loop(shared: &Shared, client: &reqwest::blocking::Client, endpoint: &str, resource: &[u8], scope: &str) {
    let mut failures = 0u64;
    loop {
        let batch = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() < MAX_BATCH && !shared.stopping.load(Ordering::SeqCst) {
                q = shared.wake.wait_timeout(q, DELAY).unwrap_or_else(|e| e.into_inner()).0;
            }
            std::mem::replace(&mut *q, Vec::with_capacity(MAX_BATCH))
        };
        for chunk in batch.chunks(MAX_BATCH) {
            let body = bytes::Bytes::from(encode_request(resource, scope, chunk));
            let post = || client.post(endpoint).header("content-type", "application/x-protobuf").body(body.clone()).send();
            let mut sent = post();
            let mut waits = ExponentialBuilder::new().with_min_delay(RETRY_WAIT).with_max_times(EXPORT_ATTEMPTS as usize - 1).build();
            // What OTLP/HTTP says to retry: a request that did not get through, 429 and 502-504.
            loop {
                let retry = match &sent {
                    Ok(r) => matches!(r.status().as_u16(), 429 | 502 | 503 | 504),
                    Err(e) => !e.is_timeout(),
                };
                let Some(wait) = waits.next().filter(|_| retry) else { break };
                std::thread::sleep(wait);
                sent = post();
            }
            let ok = matches!(&sent, Ok(r) if r.status().is_success());
            if !ok {
                failures += 1;
                // Once, then every 100th failure: the collector being away must not flood the log.
                if failures == 1 || failures.is_multiple_of(100) {
                    let why = match sent {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    eprintln!(
                        "telemetry: exporting {} request spans to {endpoint} failed ({failures} failures so far): {why}",
                        chunk.len()
                    );
                }
            }
        }
        if shared.stopping.load(Ordering::SeqCst) && shared.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return;
        }
    }
}

// The OTLP messages are opentelemetry-proto's generated types, encoded by prost. A batch is
// encoded span by span into one buffer with a single reused `Span` message (its strings and
// vectors keep their capacity), so a span costs no allocation; the enclosing messages, whose
// lengths are only known then, are written around it with prost's own wire-format functions.

/// `AnyValue` of an attribute value.
fn any_value(v: &Value) -> AnyValue {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.as_str().to_string()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::I64(i) => any_value::Value::IntValue(*i),
        Value::F64(f) => any_value::Value::DoubleValue(*f),
        Value::Array(a) => {
            let values = match a {
                Array::Bool(xs) => xs.iter().map(|x| any_value(&Value::Bool(*x))).collect(),
                Array::I64(xs) => xs.iter().map(|x| any_value(&Value::I64(*x))).collect(),
                Array::F64(xs) => xs.iter().map(|x| any_value(&Value::F64(*x))).collect(),
                Array::String(xs) => xs.iter().map(|x| any_value(&Value::String(x.clone()))).collect(),
                _ => Vec::new(),
            };
            any_value::Value::ArrayValue(ArrayValue { values })
        }
        other => any_value::Value::StringValue(other.as_str().into_owned()),
    };
    AnyValue { value: Some(value) }
}

/// Writes `v` into `slot`, reusing the string a previous span left there.
fn set_any_value(slot: &mut Option<AnyValue>, v: &Value) {
    if let (Value::String(s), Some(AnyValue { value: Some(any_value::Value::StringValue(buf)) })) = (v, slot.as_mut()) {
        buf.clear();
        buf.push_str(s.as_str());
    } else {
        *slot = Some(any_value(v));
    }
}

/// Fills the reused `Span` message with `s`, a server span.
fn fill_span(out: &mut Span, s: &Finished) {
    out.trace_id.clear();
    out.trace_id.extend_from_slice(&s.trace_id);
    out.span_id.clear();
    out.span_id.extend_from_slice(&s.span_id);
    out.parent_span_id.clear();
    if let Some(p) = &s.parent_span_id {
        out.parent_span_id.extend_from_slice(p);
    }
    out.name.clear();
    out.name.push_str(s.name);
    out.kind = SpanKind::Server as i32;
    out.start_time_unix_nano = s.start;
    out.end_time_unix_nano = s.end;
    out.attributes.truncate(s.attributes.len());
    for (i, kv) in s.attributes.iter().enumerate() {
        if i == out.attributes.len() {
            out.attributes.push(KeyValuePb::default());
        }
        let slot = &mut out.attributes[i];
        slot.key.clear();
        slot.key.push_str(kv.key.as_str());
        set_any_value(&mut slot.value, &kv.value);
    }
    out.status = s.error.map(|message| Status { message: message.to_string(), code: StatusCode::Error as i32 });
    // Sampled, and whether the parent is remote (known: it came from the caller) —
    // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | IS_REMOTE when there is a parent.
    out.flags = 0x01 | 0x100 | if s.parent_span_id.is_some() { 0x200 } else { 0 };
}

/// The `Resource` message, encoded once per exporter.
pub(crate) fn encode_resource(resource: &Resource) -> Vec<u8> {
    let attributes =
        resource.iter().map(|(k, v)| KeyValuePb { key: k.as_str().to_string(), value: Some(any_value(v)), ..Default::default() }).collect();
    ResourcePb { attributes, ..Default::default() }.encode_to_vec()
}

/// Appends field `tag` holding the already encoded message `bytes`.
fn nested(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encoding::encode_key(tag, encoding::WireType::LengthDelimited, out);
    encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource, scope_spans:
/// [ScopeSpans { scope, spans }] }] }`.
pub(crate) fn encode_request(resource: &[u8], scope: &str, spans: &[Finished]) -> Vec<u8> {
    let mut scope_spans = Vec::with_capacity(spans.len() * 256 + 64);
    encoding::message::encode(1, &InstrumentationScope { name: scope.to_string(), ..Default::default() }, &mut scope_spans);
    let mut span = Span::default();
    for s in spans {
        fill_span(&mut span, s);
        encoding::message::encode(2, &span, &mut scope_spans);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    nested(&mut resource_spans, 1, resource);
    nested(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    nested(&mut request, 1, &resource_spans);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::any_value::Value as Any,
        trace::v1::{span::SpanKind, status::StatusCode},
    };
    use prost::Message;

    #[test]
    fn encodes_what_the_generated_protobuf_types_decode() {
        let resource =
            Resource::builder_empty().with_attributes([KeyValue::new("service.name", "ci-service"), KeyValue::new("pid", 42i64)]).build();
        let resource_bytes = encode_resource(&resource);
        let spans = [
            Finished {
                trace_id: [7; 16],
                span_id: [1; 8],
                parent_span_id: Some([2; 8]),
                name: "receive",
                start: 1_700_000_000_000_000_000,
                end: 1_700_000_000_000_500_000,
                attributes: vec![
                    KeyValue::new("http.route", "/hooks/push"),
                    KeyValue::new("http.response.status_code", 202i64),
                    KeyValue::new("ok", true),
                    KeyValue::new("ratio", 0.5),
                ],
                error: None,
            },
            Finished {
                trace_id: [8; 16],
                span_id: [3; 8],
                parent_span_id: None,
                name: "receive",
                start: 5,
                end: 6,
                attributes: vec![KeyValue::new("error.type", "queue_unavailable")],
                error: Some("queue_unavailable"),
            },
        ];
        let body = encode_request(&resource_bytes, "conveyor", &spans);
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid protobuf");
        let rs = &req.resource_spans[0];
        let res: Vec<(String, Option<Any>)> =
            rs.resource.as_ref().unwrap().attributes.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap().value)).collect();
        assert!(res.contains(&("service.name".into(), Some(Any::StringValue("ci-service".into())))), "{res:?}");
        assert!(res.contains(&("pid".into(), Some(Any::IntValue(42)))), "{res:?}");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "conveyor");
        let (a, b) = (&ss.spans[0], &ss.spans[1]);
        assert_eq!(
            (a.trace_id.as_slice(), a.span_id.as_slice(), a.parent_span_id.as_slice()),
            (&[7u8; 16][..], &[1u8; 8][..], &[2u8; 8][..])
        );
        assert_eq!((a.name.as_str(), a.kind), ("receive", SpanKind::Server as i32));
        assert_eq!((a.start_time_unix_nano, a.end_time_unix_nano), (1_700_000_000_000_000_000, 1_700_000_000_000_500_000));
        let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
        };
        assert_eq!(attr(a, "http.route"), Some(Any::StringValue("/hooks/push".into())));
        assert_eq!(attr(a, "http.response.status_code"), Some(Any::IntValue(202)));
        assert_eq!(attr(a, "ok"), Some(Any::BoolValue(true)));
        assert_eq!(attr(a, "ratio"), Some(Any::DoubleValue(0.5)));
        assert_eq!(a.status, None);
        assert_eq!(a.flags & 0x301, 0x301, "sampled, remote parent");
        assert!(b.parent_span_id.is_empty());
        let status = b.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "queue_unavailable"));
    }

    /// A collector that answers 503, then 200, recording each request's body.
    fn flaky_collector() -> (String, std::sync::mpsc::Receiver<(u16, Vec<u8>)>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if n == 0 { 503 } else { 200 };
                tx.send((status, body)).unwrap();
                write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            }
        });
        (endpoint, rx)
    }

    #[test]
    fn a_batch_the_collector_refuses_with_503_is_sent_again() {
        let (endpoint, requests) = flaky_collector();
        let resource = Resource::builder_empty().with_attributes([KeyValue::new("service.name", "ci-service")]).build();
        let exporter = LeanExporter::start(endpoint, crate::otlp_http_client(None).unwrap(), &resource, "conveyor");
        exporter.push(Finished {
            trace_id: [9; 16],
            span_id: [4; 8],
            parent_span_id: None,
            name: "receive",
            start: 1,
            end: 2,
            attributes: vec![],
            error: None,
        });
        exporter.shutdown();
        let got: Vec<(u16, Vec<u8>)> = requests.try_iter().collect();
        assert_eq!(got.iter().map(|(status, _)| *status).collect::<Vec<_>>(), [503, 200], "refused once, then sent again");
        assert_eq!(got[0].1, got[1].1, "the same batch");
        let req = ExportTraceServiceRequest::decode(got[1].1.as_slice()).unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[0].span_id, [4u8; 8]);
    }
}

//! The W3C trace context (`traceparent`) across process boundaries: read from an incoming HTTP
//! request or NATS message to continue its trace, written as a `traceparent` value into the
//! headers of queued jobs and published events, and turned into ids for logs, records and
//! commit trailers. Without telemetry installed nothing here invents a trace: an incoming
//! context is passed on, otherwise the answer is `None`.

use std::{collections::HashMap, sync::OnceLock};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _},
    Context, KeyValue, Value,
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator, SdkTracer, Span as SdkSpan},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace id of `span` as 32 hex digits, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The `traceparent` that makes a receiver's span a child of `span`.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id inside a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')).then_some(id)
}

/// Makes `span` a child of the trace context in these HTTP headers (an incoming `traceparent`
/// is honoured). Call before the span is entered. False if there was no valid context.
pub fn continue_from_http(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    continue_from(span, &HttpHeaders(headers))
}

/// Makes `span` a child of the trace context in these NATS headers, else of `fallback` (a
/// `traceparent` carried in the payload). Call before the span is entered.
pub fn continue_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>, fallback: Option<&str>) -> bool {
    if headers.is_some_and(|h| continue_from(span, &NatsHeaders(h))) {
        return true;
    }
    fallback.is_some_and(|tp| continue_from(span, &HashMap::from([("traceparent".to_string(), tp.to_string())])))
}

fn continue_from(span: &tracing::Span, carrier: &dyn Extractor) -> bool {
    let cx = TraceContextPropagator::new().extract(carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// Adds a link from `span` to the span a `traceparent` names (a replay to the build it replays,
/// a batch's commit to each event's trace).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = remote_span_context(traceparent) {
        span.add_link(sc);
    }
}

fn remote_span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The tracer [`RequestSpan`]s are made with, set once when telemetry is installed.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Set when telemetry is installed without an exporter: request spans are then only ids.
static IDS_ONLY: OnceLock<RandomIdGenerator> = OnceLock::new();

/// Set when request spans take the lean export path (see `lean.rs`).
static LEAN: OnceLock<Lean> = OnceLock::new();

struct Lean {
    exporter: crate::lean::LeanExporter,
    ids: RandomIdGenerator,
    /// Sampled even under an unsampled parent.
    always_on: bool,
}

pub(crate) fn set_lean(exporter: crate::lean::LeanExporter, always_on: bool) {
    let _ = LEAN.set(Lean { exporter, ids: RandomIdGenerator::default(), always_on });
}

/// Sends the lean path's queued spans and stops its thread.
pub(crate) fn shutdown_lean() {
    if let Some(l) = LEAN.get() {
        l.exporter.shutdown();
    }
}

pub(crate) fn set_tracer(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

pub(crate) fn set_ids_only() {
    let _ = IDS_ONLY.set(RandomIdGenerator::default());
}

/// A server span made directly with the OpenTelemetry API instead of through `tracing`: the span
/// every webhook opens, where a bridged `tracing` span (several µs: registry lookups, one
/// attribute update per field) would be a measurable share of the request. It continues an
/// incoming `traceparent`, buffers its attributes and sets them once when it ends. When nothing
/// is exported it is only a pair of ids (what the job, the answer and the logs carry); over
/// OTLP/HTTP with the default sampler it is a record for the lean exporter (`lean.rs`).
pub struct RequestSpan {
    /// None when telemetry is not installed (an incoming context is still continued).
    span: Option<SdkSpan>,
    /// On the lean path, when sampled: the start time and the incoming parent.
    lean: Option<(u64, Option<[u8; 8]>)>,
    name: &'static str,
    route: &'static str,
    /// The context a child continues: this span's, else the incoming one.
    parent_of_children: SpanContext,
    attributes: Vec<KeyValue>,
    trace_id: Option<String>,
}

impl RequestSpan {
    pub fn start(name: &'static str, route: &'static str, headers: &http::HeaderMap) -> RequestSpan {
        let parent = match headers.get("traceparent") {
            Some(_) => TraceContextPropagator::new().extract(&HttpHeaders(headers)),
            None => Context::new(),
        };
        let incoming = parent.span().span_context().clone();
        if let Some(l) = LEAN.get() {
            let sampled = !incoming.is_valid() || incoming.is_sampled() || l.always_on;
            let (trace_id, state) = if incoming.is_valid() {
                (incoming.trace_id(), incoming.trace_state().clone())
            } else {
                (l.ids.new_trace_id(), TraceState::default())
            };
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let sc = SpanContext::new(trace_id, l.ids.new_span_id(), flags, false, state);
            let parent = incoming.is_valid().then(|| incoming.span_id().to_bytes());
            return RequestSpan {
                span: None,
                lean: sampled.then(|| (crate::lean::now_nanos(), parent)),
                name,
                route,
                trace_id: Some(sc.trace_id().to_string()),
                parent_of_children: sc,
                attributes: Vec::with_capacity(6),
            };
        }
        let span = TRACER.get().map(|tracer| {
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Server)
                .with_attributes([KeyValue::new("http.request.method", "POST"), KeyValue::new("http.route", route)])
                .start_with_context(tracer, &parent)
        });
        let sc = match (&span, IDS_ONLY.get()) {
            (Some(s), _) => s.span_context().clone(),
            (None, Some(ids)) => {
                let (trace_id, flags) = if incoming.is_valid() {
                    (incoming.trace_id(), incoming.trace_flags())
                } else {
                    (ids.new_trace_id(), TraceFlags::SAMPLED)
                };
                SpanContext::new(trace_id, ids.new_span_id(), flags, false, TraceState::default())
            }
            (None, None) => incoming,
        };
        let trace_id = sc.is_valid().then(|| sc.trace_id().to_string());
        RequestSpan { span, lean: None, name, route, parent_of_children: sc, attributes: Vec::with_capacity(6), trace_id }
    }

    /// The trace id, when there is a trace (an incoming context, or telemetry installed).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// The `traceparent` that makes a receiver's span (a queued job's) a child of this one.
    pub fn traceparent(&self) -> Option<String> {
        let sc = &self.parent_of_children;
        let trace_id = self.trace_id.as_deref()?;
        Some(format!("00-{trace_id}-{}-{:02x}", sc.span_id(), sc.trace_flags().to_u8()))
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.span.is_some() || self.lean.is_some() {
            self.attributes.push(KeyValue::new(key, value));
        }
    }

    /// Ends the span with the answer's status (5xx marks it as an error).
    pub fn end(mut self, status: u16, error_type: Option<&'static str>) {
        if let (Some((start, parent)), Some(l)) = (self.lean, LEAN.get()) {
            let mut attributes = Vec::with_capacity(self.attributes.len() + 4);
            attributes.push(KeyValue::new("http.request.method", "POST"));
            attributes.push(KeyValue::new("http.route", self.route));
            attributes.append(&mut self.attributes);
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
            if let Some(e) = error_type {
                attributes.push(KeyValue::new("error.type", e));
            }
            let sc = &self.parent_of_children;
            l.exporter.push(crate::lean::Finished {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                parent_span_id: parent,
                name: self.name,
                start,
                end: crate::lean::now_nanos(),
                attributes,
                error: (status >= 500).then(|| error_type.unwrap_or("server error")),
            });
            return;
        }
        let Some(mut span) = self.span.take() else { return };
        self.attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Some(e) = error_type {
            self.attributes.push(KeyValue::new("error.type", e));
        }
        span.set_attributes(std::mem::take(&mut self.attributes));
        if status >= 500 {
            span.set_status(Status::error(error_type.unwrap_or("server error")));
        }
        span.end();
    }
}

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_of_reads_only_valid_ids() {
        assert_eq!(trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn a_request_span_continues_an_incoming_traceparent_even_without_telemetry() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let span = RequestSpan::start("receive", "/hooks/push", &h);
        assert_eq!(span.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let tp = span.traceparent().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
        span.end(202, None);
        let none = RequestSpan::start("receive", "/hooks/push", &http::HeaderMap::new());
        assert_eq!((none.trace_id(), none.traceparent()), (None, None));
    }

    #[test]
    fn without_the_layer_nothing_is_invented() {
        let span = tracing::info_span!("x");
        assert_eq!(trace_id(&span), None);
        assert_eq!(traceparent(&span), None);
    }
}

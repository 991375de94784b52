//! Prometheus exposition: each service keeps its own `prometheus_client` registry (no global
//! state, so several services can run in one test process) and renders it here for `/metrics`.

pub use prometheus_client;
use prometheus_client::{encoding::text::encode, registry::Registry};

/// The content type of the text format written by [`render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).expect("writing into a String cannot fail");
    out
}

/// The `outcome` label both services count their inputs by (webhooks, events).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Registers `metric` as `name` with `help` and hands it back (a metric is a shared handle: the
/// registry renders what the service counts on its copy).
pub fn register<M: prometheus_client::registry::Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Buckets for step durations, from 10 ms to about 20 minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.5, 14)
}

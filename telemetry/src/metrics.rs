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

/// Buckets for step durations, from 10 ms to about 20 minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.5, 14)
}

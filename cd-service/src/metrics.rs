//! What cd-service counts for Prometheus (`GET /metrics`): events by outcome (committed,
//! already current, pinned, stale, held, dead-lettered, handed back), manifest commits pushed,
//! pushes retried on a moved branch, how long applying a batch took, and the consumer's lag
//! (read from JetStream when scraped). It only counts; it never decides anything.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    events: Family<Outcome, Counter>,
    pub commits_pushed: Counter,
    pub push_retries: Counter,
    pub apply_seconds: Histogram,
    pub consumer_pending: Gauge,
    pub consumer_ack_pending: Gauge,
    pub consumer_redelivered: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("conveyor_cd");
        let events = Family::<Outcome, Counter>::default();
        registry.register(
            "events",
            "Image-built events handled, by outcome (committed, partial, already_current, pinned, stale, held, dead_lettered, retry)",
            events.clone(),
        );
        let commits_pushed = Counter::default();
        registry.register("commits_pushed", "Manifest commits pushed to the remote", commits_pushed.clone());
        let push_retries = Counter::default();
        registry.register("push_retries", "Pushes refused because the branch moved, then re-applied on the new head", push_retries.clone());
        let apply_seconds = Histogram::new(conveyor_telemetry::metrics::duration_buckets());
        registry.register("apply_duration_seconds", "Time to apply one batch: fetch, rewrite, commit and push", apply_seconds.clone());
        let consumer_pending = Gauge::default();
        registry.register("consumer_pending", "Events in the stream not yet delivered to this consumer (lag)", consumer_pending.clone());
        let consumer_ack_pending = Gauge::default();
        registry.register("consumer_ack_pending", "Events delivered and not yet acknowledged", consumer_ack_pending.clone());
        let consumer_redelivered = Gauge::default();
        registry.register("consumer_redelivered", "Events being delivered again", consumer_redelivered.clone());
        Self { registry, events, commits_pushed, push_retries, apply_seconds, consumer_pending, consumer_ack_pending, consumer_redelivered }
    }
}

impl Metrics {
    pub fn event(&self, outcome: &str) {
        self.events.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    }

    pub fn render(&self) -> String {
        conveyor_telemetry::metrics::render(&self.registry)
    }
}

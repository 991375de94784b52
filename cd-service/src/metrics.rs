//! What cd-service counts for Prometheus (`GET /metrics`): events by outcome (committed,
//! already current, pinned, stale, held, dead-lettered, handed back), manifest commits pushed,
//! pushes retried on a moved branch, how long applying a batch took, and the consumer's lag
//! (read from JetStream when scraped). It only counts; it never decides anything.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use conveyor_telemetry::metrics::{register, OutcomeLabel as Outcome};

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
        let events = register(
            &mut registry,
            "events",
            "Image-built events handled, by outcome (committed, partial, already_current, pinned, stale, held, dead_lettered, retry)",
            Family::<Outcome, Counter>::default(),
        );
        let commits_pushed = register(&mut registry, "commits_pushed", "Manifest commits pushed to the remote", Counter::default());
        let push_retries = register(
            &mut registry,
            "push_retries",
            "Pushes refused because the branch moved, then re-applied on the new head",
            Counter::default(),
        );
        let apply_seconds = register(
            &mut registry,
            "apply_duration_seconds",
            "Time to apply one batch: fetch, rewrite, commit and push",
            Histogram::new(conveyor_telemetry::metrics::duration_buckets()),
        );
        let consumer_pending =
            register(&mut registry, "consumer_pending", "Events in the stream not yet delivered to this consumer (lag)", Gauge::default());
        let consumer_ack_pending =
            register(&mut registry, "consumer_ack_pending", "Events delivered and not yet acknowledged", Gauge::default());
        let consumer_redelivered = register(&mut registry, "consumer_redelivered", "Events being delivered again", Gauge::default());
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

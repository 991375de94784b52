//! What ci-service counts for Prometheus (`GET /metrics`): webhooks by outcome, builds by
//! result, step durations, push and publish retries, builds running here, commit statuses by
//! forge and result, local images removed and the engine's image disk use, and the shared
//! queue's depth (read from JetStream when scraped). It only counts; it never decides anything.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use conveyor_telemetry::metrics::{duration_buckets, register, OutcomeLabel as Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result_ {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Step {
    pub step: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Retried {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub forge: String,
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    statuses: Family<StatusLabel, Counter>,
    pub images_removed: Counter,
    pub engine_image_bytes: Gauge,
    webhooks: Family<Outcome, Counter>,
    builds: Family<Result_, Counter>,
    steps: Family<Step, Histogram>,
    retries: Family<Retried, Counter>,
    pub running: Gauge,
    pub queue_jobs: Gauge,
    pub queue_pending: Gauge,
    pub queue_ack_pending: Gauge,
    pub queue_redelivered: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("conveyor_ci");
        let webhooks = register(
            &mut registry,
            "webhooks",
            "Webhook and manual build requests by outcome (queued, duplicate, ignored, pong, unauthorized, invalid, unavailable)",
            Family::<Outcome, Counter>::default(),
        );
        let builds = register(
            &mut registry,
            "builds",
            "Builds that ended, by result (succeeded, failed, cancelled, skipped)",
            Family::<Result_, Counter>::default(),
        );
        let steps = register(
            &mut registry,
            "step_duration_seconds",
            "Duration of build steps by step and result",
            Family::<Step, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets())),
        );
        let retries = register(
            &mut registry,
            "step_retries",
            "Push and publish attempts that failed and were retried",
            Family::<Retried, Counter>::default(),
        );
        let statuses = register(
            &mut registry,
            "commit_statuses",
            "Commit status posts to forges by forge and result (posted, retried, failed, superseded, dropped)",
            Family::<StatusLabel, Counter>::default(),
        );
        let images_removed = register(
            &mut registry,
            "images_removed",
            "Local images removed by housekeeping (older than the newest per app)",
            Counter::default(),
        );
        let engine_image_bytes = register(
            &mut registry,
            "engine_image_bytes",
            "Disk used by the Docker Engine's images (all of them, as `docker system df` counts), at the last housekeeping",
            Gauge::default(),
        );
        let running = register(&mut registry, "builds_running", "Builds running in this replica", Gauge::default());
        let queue_jobs =
            register(&mut registry, "queue_jobs", "Jobs in the shared build queue (queued or running, all replicas)", Gauge::default());
        let queue_pending = register(&mut registry, "queue_pending", "Jobs no worker has taken yet (consumer lag)", Gauge::default());
        let queue_ack_pending = register(&mut registry, "queue_ack_pending", "Jobs taken by a worker and not finished", Gauge::default());
        let queue_redelivered =
            register(&mut registry, "queue_redelivered", "Jobs being delivered again (their worker died or timed out)", Gauge::default());
        Self {
            registry,
            statuses,
            images_removed,
            engine_image_bytes,
            webhooks,
            builds,
            steps,
            retries,
            running,
            queue_jobs,
            queue_pending,
            queue_ack_pending,
            queue_redelivered,
        }
    }
}

impl Metrics {
    pub fn webhook(&self, outcome: &str) {
        self.webhooks.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    }

    pub fn build_ended(&self, result: &str) {
        self.builds.get_or_create(&Result_ { result: result.to_string() }).inc();
    }

    pub fn step(&self, step: &str, ok: bool, seconds: f64) {
        let result = if ok { "succeeded" } else { "failed" };
        self.steps.get_or_create(&Step { step: step.to_string(), result: result.to_string() }).observe(seconds);
    }

    pub fn retried(&self, step: &str) {
        self.retries.get_or_create(&Retried { step: step.to_string() }).inc();
    }

    pub fn status(&self, forge: &str, result: &str) {
        self.statuses.get_or_create(&StatusLabel { forge: forge.to_string(), result: result.to_string() }).inc();
    }

    pub fn render(&self) -> String {
        conveyor_telemetry::metrics::render(&self.registry)
    }
}

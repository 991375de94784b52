//! A replica's workers: pull jobs from the shared queue (as many at once as configured), keep
//! each alive with progress acks while it runs, ack it when it ended; and apply cancel notices
//! to the builds running in this replica.

use backon::{ExponentialBuilder, Retryable};
use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{consumer::PullConsumer, AckKind};
use futures::StreamExt;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    build,
    queue::{Control, Job},
    AppState,
};

/// Pulls and runs jobs until `shutdown` fires, then waits for the running ones.
pub async fn run(state: Arc<AppState>, consumer: PullConsumer, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(state.config.workers as usize));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the worker semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let next = async {
            // One job at a time per free worker: a replica never hoards jobs another could run.
            let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
            batch.next().await.transpose()
        };
        let message = tokio::select! {
            m = next => m,
            _ = shutdown.changed() => break,
        };
        while running.try_join_next().is_some() {}
        match message {
            Ok(Some(message)) => {
                let state = state.clone();
                running.spawn(async move {
                    handle(state, message).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from the build queue; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    while running.join_next().await.is_some() {}
}

async fn handle(state: Arc<AppState>, message: async_nats::jetstream::Message) {
    let (id, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(e) => {
            tracing::warn!(error = %e, "a job without delivery info; leaving it for redelivery");
            return;
        }
    };
    let job: Job = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(job = id, error = %e, "unreadable job removed from the queue");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let message = Arc::new(message);
    let beat = message.clone();
    let every = state.queue.ack_wait() / 3;
    // Aborted when this job ends, or when the worker itself is torn down mid-build.
    let heartbeat = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = beat.ack_with(AckKind::Progress).await {
                tracing::warn!(error = %e, "progress ack failed");
            }
        }
    }));
    build::run_job(state, id, job, delivered, message.headers.as_ref()).await;
    drop(heartbeat);
    let waits = ExponentialBuilder::new().with_min_delay(Duration::from_millis(200)).with_max_times(2);
    let acked = (|| message.double_ack())
        .retry(waits)
        .notify(|e, wait| tracing::warn!(job = id, error = %e, retry_in = ?wait, "ack failed; retrying"))
        .await;
    if let Err(e) = acked {
        tracing::warn!(job = id, error = %e, "ack failed three times; JetStream will deliver the job again after its ack wait");
    }
}

/// A task that dies with its owner.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies cancel notices to this replica's running builds.
pub async fn control(state: Arc<AppState>, mut notices: async_nats::Subscriber) {
    while let Some(m) = notices.next().await {
        let notice: Control = match serde_json::from_slice(&m.payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable control notice ignored");
                continue;
            }
        };
        match notice {
            Control::Cancel { build, reason } => {
                if let Some(run) = state.running.get(build) {
                    if !run.try_cancel(reason) {
                        tracing::info!(build.id = build, "cancel refused: the image push has started");
                    }
                }
            }
        }
    }
}

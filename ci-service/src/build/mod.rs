//! The build pipeline for one push: checkout -> build -> test -> push -> publish, each step
//! recorded with its timing in the build record. A failing step ends the build; nothing after
//! it runs, so a red build never reaches the registry or the event stream.

pub mod checkout;
pub mod context;
pub mod docker;

use std::{collections::HashMap, sync::Arc};

use time::OffsetDateTime;
use tracing::Instrument;

use crate::{builds::BuildStore, publish::Publisher, webhook::PushRequest, AppState};
use conveyor_proto::{ImageBuilt, ImageRef, SourceRef, EVENT_VERSION};
use docker::LogSink;

/// A queued build: its id in the store and what to build.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub id: String,
    pub push: PushRequest,
}

struct StoreLog<'a> {
    store: &'a BuildStore,
    id: &'a str,
}

impl LogSink for StoreLog<'_> {
    fn line(&self, text: &str) {
        self.store.log(self.id, text);
    }
}

/// The tag of an image built from `commit`: the 12-character short SHA (unique enough across a
/// repository's history, and what users see in `git log --oneline`).
pub fn image_tag(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// Runs one build to the end and records the result.
pub async fn run(state: Arc<AppState>, job: BuildJob) {
    let span = tracing::info_span!("build", build.id = %job.id, app = %job.push.app, commit = %job.push.commit);
    async {
        state.builds.start(&job.id);
        let result = run_steps(&state, &job).await;
        match &result {
            Ok(()) => tracing::info!("build succeeded"),
            Err(reason) => {
                state.builds.log(&job.id, &format!("[conveyor] build failed: {reason}"));
                tracing::warn!(%reason, "build failed");
            }
        }
        state.builds.finish(&job.id, result);
    }
    .instrument(span)
    .await
}

/// Runs a step: records start/end and turns its error into the build's failure reason.
async fn step<T, E: std::fmt::Display>(
    store: &BuildStore,
    id: &str,
    name: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    store.step_started(id, name);
    let result = fut.instrument(tracing::info_span!("step", step = name)).await;
    store.step_finished(id, name, result.is_ok());
    result.map_err(|e| format!("{name}: {e}"))
}

async fn run_steps(state: &Arc<AppState>, job: &BuildJob) -> Result<(), String> {
    let cfg = &state.config;
    let store = &state.builds;
    let id = job.id.as_str();
    let push = &job.push;
    let log = StoreLog { store, id };
    let started_at = OffsetDateTime::now_utc();

    let dir = cfg.workdir.join("builds").join(id);
    let _cleanup = RemoveDirOnDrop(dir.clone());

    step(store, id, "checkout", async {
        let (url, git_ref, commit, dest) = (push.repo_url.clone(), push.git_ref.clone(), push.commit.clone(), dir.clone());
        tokio::task::spawn_blocking(move || checkout::checkout(&url, &git_ref, &commit, &dest))
            .await
            .map_err(|e| format!("checkout task failed: {e}"))?
            .map_err(|e| e.to_string())
    })
    .await?;

    let repository = format!("{}/{}", cfg.registry.trim_end_matches('/'), push.app);
    conveyor_proto::validate::image_repository(&repository).map_err(|e| e.to_string())?;
    let tag = image_tag(&push.commit);
    let image = format!("{repository}:{tag}");
    store.set_image(id, &image);

    let labels = HashMap::from([
        ("org.opencontainers.image.revision".to_string(), push.commit.clone()),
        ("org.opencontainers.image.source".to_string(), push.repo_url.clone()),
        ("org.opencontainers.image.created".to_string(), rfc3339(started_at)),
        ("io.conveyor.build-id".to_string(), id.to_string()),
    ]);

    step(store, id, "build", async {
        let spec = docker::BuildSpec {
            context_dir: dir.clone(),
            dockerfile: &cfg.dockerfile,
            image: &image,
            build_args: &cfg.build_args,
            labels: labels.clone(),
        };
        tokio::time::timeout(cfg.build_timeout(), docker::build_image(&state.docker, spec, &log))
            .await
            .unwrap_or(Err(docker::DockerError::Timeout { step: "build", secs: cfg.build_timeout_secs }))
    })
    .await?;

    let container_labels = HashMap::from([("io.conveyor.build-id".to_string(), id.to_string())]);
    step(store, id, "test", docker::run_tests(&state.docker, &image, &cfg.test_command, container_labels, cfg.test_timeout(), &log))
        .await?;

    let digest = step(store, id, "push", async {
        tokio::time::timeout(cfg.push_timeout(), docker::push_image(&state.docker, &repository, &tag, &log))
            .await
            .unwrap_or(Err(docker::DockerError::Timeout { step: "push", secs: cfg.push_timeout_secs }))
    })
    .await?;
    store.set_digest(id, &digest);
    log.line(&format!("[conveyor] pushed {image}@{digest}"));

    let event = ImageBuilt {
        version: EVENT_VERSION,
        event_id: uuid::Uuid::now_v7().to_string(),
        app: push.app.clone(),
        image: ImageRef { repository, tag, digest },
        source: SourceRef { repo_url: push.repo_url.clone(), commit: push.commit.clone(), branch: push.branch.clone() },
        build_id: id.to_string(),
        build_started_at: started_at,
        built_at: OffsetDateTime::now_utc(),
        traceparent: None,
        deploy: None,
    };
    let sequence = step(store, id, "publish", publish(&state.publisher, &event)).await?;
    store.set_event(id, &event.event_id, sequence);
    log.line(&format!("[conveyor] published event {} (stream sequence {sequence})", event.event_id));
    Ok(())
}

async fn publish(publisher: &Publisher, event: &ImageBuilt) -> Result<u64, crate::publish::PublishError> {
    publisher.publish(event).await
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a UTC timestamp always formats as RFC 3339")
}

/// Removes a build's work directory when the build ends, however it ends.
struct RemoveDirOnDrop(std::path::PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove build directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_tag_is_a_valid_short_sha() {
        let tag = super::image_tag("3f2a9c1d0e4b5a6978877665544332211aabbccd");
        assert_eq!(tag, "3f2a9c1d0e4b");
        assert!(conveyor_proto::validate::tag(&tag).is_ok());
    }
}

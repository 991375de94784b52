//! Docker Engine steps through bollard: build the image from a streamed context, run the test
//! command in a throw-away container (network `none`), push to the registry and read the digest.
//! Every container this module creates is removed, whatever the outcome.

use std::{collections::HashMap, io, path::PathBuf, time::Duration};

use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder, PushImageOptionsBuilder, RemoveContainerOptionsBuilder,
    },
    Docker,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::context::{self, ContextError};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("docker build failed: {0}")]
    Build(String),
    #[error("tests failed: `{command}` exited with code {code}")]
    TestsFailed { command: String, code: i64 },
    #[error("{step} timed out after {secs} s")]
    Timeout { step: &'static str, secs: u64 },
    #[error("registry push of {image} failed: {message}")]
    Push { image: String, message: String },
    #[error("the registry reported no digest for {0}")]
    NoDigest(String),
    #[error("docker engine error: {0}")]
    Engine(#[from] bollard::errors::Error),
}

/// What a step reports as it goes: log lines for the build record.
pub trait LogSink: Send + Sync {
    fn line(&self, text: &str);
}

pub struct BuildSpec<'a> {
    pub context_dir: PathBuf,
    pub dockerfile: &'a str,
    /// `repository:tag`.
    pub image: &'a str,
    pub build_args: &'a [(String, String)],
    pub labels: HashMap<String, String>,
}

/// Builds the image; returns the image id.
pub async fn build_image(docker: &Docker, spec: BuildSpec<'_>, log: &dyn LogSink) -> Result<String, DockerError> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let dir = spec.context_dir.clone();
    let dockerfile = spec.dockerfile.to_string();
    let producer = tokio::task::spawn_blocking(move || context::stream_context(&dir, &dockerfile, tx));
    let body = bollard::body_try_stream(tokio_stream_from(rx));

    let args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(spec.dockerfile)
        .t(spec.image)
        .rm(true)
        .forcerm(true)
        .networkmode("none")
        .buildargs(&args)
        .labels(&spec.labels)
        .build();

    let mut image_id = None;
    let mut failure = None;
    let mut stream = docker.build_image(options, None, Some(body));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref() {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        log.line(line);
                    }
                }
                if let Some(id) = info.aux.and_then(|a| a.id) {
                    image_id = Some(id);
                }
                if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                    log.line(&msg);
                    failure = Some(msg);
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    drop(stream);
    // A context error (no Dockerfile, unreadable file) is the cause of a failed build, unless
    // it only says that the engine stopped reading first.
    match (producer.await, failure) {
        (Ok(Err(e)), _) if !e.is_receiver_gone() => return Err(e.into()),
        (_, Some(msg)) => return Err(DockerError::Build(msg)),
        (Ok(Err(e)), None) => return Err(e.into()),
        (Err(join), None) => return Err(DockerError::Build(format!("context writer panicked: {join}"))),
        (Ok(Ok(files)), None) => log.line(&format!("[conveyor] sent build context: {files} entries")),
    }
    match image_id {
        Some(id) => Ok(id),
        None => {
            Ok(docker.inspect_image(spec.image).await?.id.ok_or_else(|| DockerError::Build("the engine returned no image id".into()))?)
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Removes a container when dropped (a cancelled or timed-out step drops its future), so that
/// no container outlives its step, whatever ends it.
pub struct ContainerGuard {
    docker: Docker,
    pub id: String,
    removed: bool,
}

impl ContainerGuard {
    pub fn new(docker: &Docker, id: String) -> Self {
        Self { docker: docker.clone(), id, removed: false }
    }

    /// Removes the container now and waits for it.
    pub async fn remove(mut self) {
        self.removed = true;
        remove_container(&self.docker, &self.id).await;
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.removed {
            let (docker, id) = (self.docker.clone(), self.id.clone());
            tokio::spawn(async move { remove_container(&docker, &id).await });
        }
    }
}

async fn remove_container(docker: &Docker, id: &str) {
    let removed = docker.remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build())).await;
    if let Err(e) = removed {
        tracing::warn!(container = %id, error = %e, "could not remove container");
    }
}

/// Runs `command` with `/bin/sh -c` in a container of `image` with no network. Output goes to
/// the log; a non-zero exit is [`DockerError::TestsFailed`]. The container is always removed.
pub async fn run_tests(
    docker: &Docker,
    image: &str,
    command: &str,
    labels: HashMap<String, String>,
    limit: Duration,
    log: &dyn LogSink,
) -> Result<(), DockerError> {
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), command.to_string()]),
        labels: Some(labels),
        host_config: Some(HostConfig { network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    let created = docker.create_container(Some(CreateContainerOptionsBuilder::default().build()), config).await?;
    let guard = ContainerGuard::new(docker, created.id);
    let outcome = tokio::time::timeout(limit, run_to_exit(docker, &guard.id, log)).await;
    guard.remove().await;
    let code = match outcome {
        Err(_) => return Err(DockerError::Timeout { step: "test", secs: limit.as_secs() }),
        Ok(result) => result?,
    };
    if code != 0 {
        return Err(DockerError::TestsFailed { command: command.to_string(), code });
    }
    Ok(())
}

async fn run_to_exit(docker: &Docker, id: &str, log: &dyn LogSink) -> Result<i64, DockerError> {
    docker.start_container(id, None).await?;
    let all = || LogsOptionsBuilder::default().stdout(true).stderr(true);
    let mut logs = docker.logs(id, Some(all().follow(true).build()));
    let mut lines = LineSplitter::default();
    while let Some(chunk) = logs.next().await {
        lines.push(&chunk?.into_bytes(), log);
    }
    let mut wait = docker.wait_container(id, None);
    let code = match wait.next().await {
        Some(Ok(resp)) => Ok(resp.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(e.into()),
        None => Err(DockerError::Build("the engine ended the wait without an exit code".into())),
    };
    // Following ends when the container stops, which can be before the engine's log driver has
    // written the last line when it has no newline (seen in 1 to 5 of 12 builds): read the
    // whole log once more now that the container has exited, and take what follow missed.
    let mut full = Vec::new();
    let mut rest = docker.logs(id, Some(all().follow(false).build()));
    while let Some(chunk) = rest.next().await {
        full.extend_from_slice(&chunk?.into_bytes());
    }
    if let Some(missed) = full.get(lines.seen..) {
        lines.push(missed, log);
    }
    lines.finish(log);
    code
}

/// Splits a container's output into log lines as it arrives, counting the bytes it was given.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// Bytes given so far.
    seen: usize,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], log: &dyn LogSink) {
        self.seen += bytes.len();
        self.pending.extend_from_slice(bytes);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[..pos]).trim_end_matches('\r').to_string();
            log.line(&line);
            self.pending.drain(..=pos);
        }
    }

    /// The last line, when it has no newline.
    fn finish(&mut self, log: &dyn LogSink) {
        if !self.pending.is_empty() {
            log.line(String::from_utf8_lossy(&self.pending).trim_end_matches('\r'));
            self.pending.clear();
        }
    }
}

/// Gives the image `repository:from` the additional tag `repository:to`.
pub async fn tag_image(docker: &Docker, repository: &str, from: &str, to: &str) -> Result<(), DockerError> {
    let options = bollard::query_parameters::TagImageOptionsBuilder::default().repo(repository).tag(to).build();
    docker.tag_image(&format!("{repository}:{from}"), Some(options)).await?;
    Ok(())
}

/// Pushes `repository:tag` and returns the manifest digest the registry reported.
pub async fn push_image(
    docker: &Docker,
    repository: &str,
    tag: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
    log: &dyn LogSink,
) -> Result<String, DockerError> {
    let image = format!("{repository}:{tag}");
    let mut digest = None;
    let mut stream = docker.push_image(repository, Some(PushImageOptionsBuilder::default().tag(tag).build()), credentials);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| DockerError::Push { image: image.clone(), message: e.to_string() })?;
        if let Some(status) = info.status.as_deref() {
            if info.progress_detail.is_none() || status.contains("digest") {
                log.line(status);
            }
            if let Some(d) = digest_from_status(status) {
                digest = Some(d);
            }
        }
        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Push { image, message: msg });
        }
    }
    if let Some(d) = digest {
        return Ok(d);
    }
    // Fall back to what the engine recorded for this repository.
    let inspect = docker.inspect_image(&image).await?;
    inspect
        .repo_digests
        .unwrap_or_default()
        .iter()
        .find_map(|rd| rd.strip_prefix(&format!("{repository}@")).map(str::to_string))
        .ok_or(DockerError::NoDigest(image))
}

/// Parses `<tag>: digest: sha256:<hex> size: <n>`.
fn digest_from_status(status: &str) -> Option<String> {
    let rest = &status[status.find("digest: ")? + "digest: ".len()..];
    let d = rest.split_whitespace().next()?;
    conveyor_proto::validate::digest(d).ok().map(|_| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_digest_from_push_status() {
        let hex = "ab".repeat(32);
        assert_eq!(digest_from_status(&format!("3f2a9c1: digest: sha256:{hex} size: 528")), Some(format!("sha256:{hex}")));
        assert_eq!(digest_from_status("Pushing"), None);
        assert_eq!(digest_from_status("x: digest: sha256:short size: 1"), None);
    }
}

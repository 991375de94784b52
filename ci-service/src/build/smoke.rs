//! The smoke-test stage (the "deploy to staging, test the deployed app" step teams script by
//! hand): run the built image as a service with `PORT` set, wait for its health endpoint, run the
//! HTTP checks, stop it. The app's container has network `none`: the pushed repository's code
//! reaches nothing of the host (NATS, the registry, the services, the Docker socket) nor any
//! other address. The requests come from a probe container (`--probe-image`, static busybox)
//! that joins the app's network namespace, so they travel on the app's own loopback only. No
//! container outlives the stage, however it ends.

use std::{collections::HashMap, time::Duration};

use bollard::{
    exec::{CreateExecOptions, StartExecResults},
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder},
    Docker,
};
use futures::StreamExt;

use super::docker::{ContainerGuard, LogSink};
use crate::pipeline::SmokeSpec;

/// The port the app is told to listen on (`PORT`): it has a network namespace of its own, so
/// any port is free there.
pub const APP_PORT: u16 = 8080;

/// A probe answer's body is read up to this many bytes.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("the app exited with code {code} before it was healthy")]
    Exited { code: i64 },
    #[error("the app was not healthy at {path} within {secs} s")]
    NotHealthy { path: String, secs: u64 },
    #[error("smoke checks did not finish within {secs} s")]
    Timeout { secs: u64 },
    #[error("check GET {path}: expected status {expected}, got {got}")]
    Status { path: String, expected: u16, got: u16 },
    #[error("check GET {path}: the body does not contain {expected:?}")]
    Body { path: String, expected: String },
    #[error("check GET {path}: {message}")]
    Request { path: String, message: String },
    #[error("smoke probe: {0}")]
    Probe(String),
    #[error("docker engine error: {0}")]
    Engine(#[from] bollard::errors::Error),
}

/// Runs the smoke stage for `image`; `limit` bounds it from container start to the last check.
/// `probe_image` must hold `/bin/busybox` (with `wget`).
pub async fn run(
    docker: &Docker,
    image: &str,
    probe_image: &str,
    spec: &SmokeSpec,
    labels: HashMap<String, String>,
    limit: Duration,
    log: &dyn LogSink,
) -> Result<(), SmokeError> {
    let mut env = vec![format!("PORT={APP_PORT}")];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: spec.command.as_ref().map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
        env: Some(env),
        labels: Some(labels.clone()),
        // No network but its own loopback: repository code reaches nothing outside.
        host_config: Some(HostConfig { network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    let created = docker.create_container(Some(CreateContainerOptionsBuilder::default().build()), config).await?;
    let app = ContainerGuard::new(docker, created.id);
    docker.start_container(&app.id, None).await?;
    log.line(&format!("[conveyor] smoke: started {image} (network none, PORT={APP_PORT}), probed from its own namespace"));
    let result = async {
        let probe = start_probe(docker, &app.id, probe_image, labels, limit).await?;
        let r = match tokio::time::timeout(limit, checks(docker, &app.id, &probe.id, spec, limit)).await {
            Ok(r) => r,
            Err(_) => Err(SmokeError::Timeout { secs: limit.as_secs() }),
        };
        probe.remove().await;
        r
    }
    .await;
    // The app's own output helps explain a failure.
    let mut output = docker.logs(&app.id, Some(LogsOptionsBuilder::default().stdout(true).stderr(true).tail("200").build()));
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(2), output.next()).await {
        for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
            log.line(&format!("[smoke] {line}"));
        }
    }
    app.remove().await;
    result
}

/// The probe: a container of `probe_image` in the app's network namespace, idle until removed.
async fn start_probe(
    docker: &Docker,
    app: &str,
    probe_image: &str,
    labels: HashMap<String, String>,
    limit: Duration,
) -> Result<ContainerGuard, SmokeError> {
    let config = ContainerCreateBody {
        image: Some(probe_image.to_string()),
        entrypoint: Some(vec!["/bin/busybox".into()]),
        cmd: Some(vec!["sleep".into(), (limit.as_secs() + 30).to_string()]),
        labels: Some(labels),
        host_config: Some(HostConfig { network_mode: Some(format!("container:{app}")), ..Default::default() }),
        ..Default::default()
    };
    let created = docker
        .create_container(Some(CreateContainerOptionsBuilder::default().build()), config)
        .await
        .map_err(|e| SmokeError::Probe(format!("cannot create the probe from {probe_image} (--probe-image): {e}")))?;
    let probe = ContainerGuard::new(docker, created.id);
    docker.start_container(&probe.id, None).await?;
    Ok(probe)
}

/// One answer of the app, as the probe saw it.
struct Answer {
    status: u16,
    body: String,
}

/// The request the probe sends: HTTP/1.0 (so no chunked answer), the path from the environment
/// (never spliced into the shell text), through `busybox nc` (busybox's `wget` in a static
/// build crashes on its name lookup).
const REQUEST: &str = r#"printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$CONVEYOR_PATH" | /bin/busybox nc -w 5 127.0.0.1 "$CONVEYOR_PORT""#;

/// `GET path` on the app's loopback from inside the probe; `None` when nothing answered.
async fn get(docker: &Docker, probe: &str, path: &str) -> Result<Option<Answer>, SmokeError> {
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) || !path.starts_with('/') {
        return Err(SmokeError::Request { path: path.to_string(), message: "not a request path".into() });
    }
    let env = [format!("CONVEYOR_PATH={path}"), format!("CONVEYOR_PORT={APP_PORT}")];
    let exec = docker
        .create_exec(
            probe,
            CreateExecOptions {
                cmd: Some(vec!["/bin/busybox", "sh", "-c", REQUEST]),
                env: Some(env.iter().map(String::as_str).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut answer = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await? {
        while let Some(chunk) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = chunk? {
                if answer.len() < MAX_BODY {
                    answer.extend_from_slice(&message);
                }
            }
        }
    }
    answer.truncate(MAX_BODY);
    Ok(parse_answer(&answer))
}

/// Status and body of an HTTP/1.x answer; `None` if there is none (nothing listened yet).
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text.lines().next()?;
    let rest = status_line.strip_prefix("HTTP/1.")?;
    let status = rest.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).map(|(_, b)| b.to_string()).unwrap_or_default();
    Some(Answer { status, body })
}

async fn checks(docker: &Docker, app: &str, probe: &str, spec: &SmokeSpec, limit: Duration) -> Result<(), SmokeError> {
    let started = std::time::Instant::now();
    loop {
        if let Some(answer) = get(docker, probe, &spec.health).await? {
            if (200..300).contains(&answer.status) {
                break;
            }
        }
        let state = docker.inspect_container(app, None).await?.state;
        if let Some(state) = state.filter(|s| s.running == Some(false)) {
            return Err(SmokeError::Exited { code: state.exit_code.unwrap_or(-1) });
        }
        if started.elapsed() >= limit {
            return Err(SmokeError::NotHealthy { path: spec.health.clone(), secs: limit.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for check in &spec.checks {
        let answer = get(docker, probe, &check.path)
            .await?
            .ok_or_else(|| SmokeError::Request { path: check.path.clone(), message: "the app did not answer".into() })?;
        if answer.status != check.status {
            return Err(SmokeError::Status { path: check.path.clone(), expected: check.status, got: answer.status });
        }
        if let Some(expected) = &check.contains {
            if !answer.body.contains(expected.as_str()) {
                return Err(SmokeError::Body { path: check.path.clone(), expected: expected.clone() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_status_and_body_of_an_http_answer() {
        let a = super::parse_answer(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nHello from app\n").unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "Hello from app\n"));
        let a = super::parse_answer(b"HTTP/1.1 404 NOT FOUND\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((a.status, a.body.as_str()), (404, ""));
        assert!(super::parse_answer(b"").is_none(), "nothing listening yet");
        assert!(super::parse_answer(b"garbage").is_none());
    }
}

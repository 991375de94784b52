//! The smoke-test stage (the "deploy to staging, test the deployed app" step teams script by
//! hand): run the built image as a service on the host network with `PORT` set to a free port,
//! wait for its health endpoint, run the HTTP checks, stop it. The container never outlives the
//! stage, however it ends.

use std::{collections::HashMap, time::Duration};

use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder},
    Docker,
};
use futures::StreamExt;

use super::docker::{ContainerGuard, LogSink};
use crate::pipeline::SmokeSpec;

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
    #[error("docker engine error: {0}")]
    Engine(#[from] bollard::errors::Error),
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the smoke stage for `image`; `limit` bounds it from container start to the last check.
pub async fn run(
    docker: &Docker,
    image: &str,
    spec: &SmokeSpec,
    labels: HashMap<String, String>,
    limit: Duration,
    log: &dyn LogSink,
) -> Result<(), SmokeError> {
    let port = free_port().map_err(|e| SmokeError::Request { path: spec.health.clone(), message: format!("no free port: {e}") })?;
    let mut env = vec![format!("PORT={port}")];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: spec.command.as_ref().map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
        env: Some(env),
        labels: Some(labels),
        // No bridge exists here; the app is reached on 127.0.0.1:$PORT.
        host_config: Some(HostConfig { network_mode: Some("host".into()), ..Default::default() }),
        ..Default::default()
    };
    let created = docker.create_container(Some(CreateContainerOptionsBuilder::default().build()), config).await?;
    let guard = ContainerGuard::new(docker, created.id);
    docker.start_container(&guard.id, None).await?;
    log.line(&format!("[conveyor] smoke: started {image} on 127.0.0.1:{port}"));
    let base = format!("http://127.0.0.1:{port}");
    let result = match tokio::time::timeout(limit, probe(docker, &guard.id, &base, spec, limit)).await {
        Ok(r) => r,
        Err(_) => Err(SmokeError::Timeout { secs: limit.as_secs() }),
    };
    // The app's own output helps explain a failure.
    let mut output = docker.logs(&guard.id, Some(LogsOptionsBuilder::default().stdout(true).stderr(true).tail("200").build()));
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(2), output.next()).await {
        for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
            log.line(&format!("[smoke] {line}"));
        }
    }
    guard.remove().await;
    result
}

async fn probe(docker: &Docker, id: &str, base: &str, spec: &SmokeSpec, limit: Duration) -> Result<(), SmokeError> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a plain HTTP client builds");
    let started = std::time::Instant::now();
    loop {
        if let Ok(resp) = client.get(format!("{base}{}", spec.health)).send().await {
            if resp.status().is_success() {
                break;
            }
        }
        let state = docker.inspect_container(id, None).await?.state;
        if let Some(state) = state.filter(|s| s.running == Some(false)) {
            return Err(SmokeError::Exited { code: state.exit_code.unwrap_or(-1) });
        }
        if started.elapsed() >= limit {
            return Err(SmokeError::NotHealthy { path: spec.health.clone(), secs: limit.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for check in &spec.checks {
        let resp = client
            .get(format!("{base}{}", check.path))
            .send()
            .await
            .map_err(|e| SmokeError::Request { path: check.path.clone(), message: e.to_string() })?;
        let got = resp.status().as_u16();
        if got != check.status {
            return Err(SmokeError::Status { path: check.path.clone(), expected: check.status, got });
        }
        if let Some(expected) = &check.contains {
            let body = resp.text().await.map_err(|e| SmokeError::Request { path: check.path.clone(), message: e.to_string() })?;
            if !body.contains(expected.as_str()) {
                return Err(SmokeError::Body { path: check.path.clone(), expected: expected.clone() });
            }
        }
    }
    Ok(())
}

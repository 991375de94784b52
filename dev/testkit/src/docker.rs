//! The machine's real dockerd (started by `dev/setup`): a readiness check, the local base
//! images the tests build from, and cleanup of the images and containers a test made.

use std::process::Command;

/// Local base images made by `dev/setup` without pulling from any registry.
pub const BUSYBOX_IMAGE: &str = "conveyor/busybox:latest";
pub const FLASK_BASE_IMAGE: &str = "conveyor/python-flask:bookworm";

pub struct TestDocker;

impl TestDocker {
    /// Panics with the fix when dockerd is not answering or an image is missing.
    pub fn ensure(images: &[&str]) -> Self {
        let ok = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().is_ok_and(|o| o.status.success());
        assert!(ok, "dockerd is not answering: run `dev/setup` (it starts dockerd --bridge=none --iptables=false)");
        for image in images {
            let ok = Command::new("docker").args(["image", "inspect", image]).output().is_ok_and(|o| o.status.success());
            assert!(ok, "base image {image} is missing: run `dev/setup` (it builds it without pulling)");
        }
        TestDocker
    }

    /// Containers (running or not) carrying the label `key=value`.
    pub fn containers_labelled(key: &str, value: &str) -> Vec<String> {
        let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={key}={value}")]).output().expect("docker ps");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    /// Containers (running or not) whose command line contains `marker`, e.g. the `RUN` step
    /// of a build that was cancelled (build containers carry no labels of ours).
    pub fn containers_running_command_with(marker: &str) -> Vec<String> {
        let out = Command::new("docker").args(["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]).output().expect("docker ps");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(marker)).map(str::to_string).collect()
    }
}

/// Removes every local image whose repository starts with `prefix` (a test registry's address).
pub fn remove_images_with_prefix(prefix: &str) {
    let Ok(out) = Command::new("docker").args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).output() else { return };
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect();
    if !names.is_empty() {
        let _ = Command::new("docker").arg("rmi").arg("-f").args(&names).output();
    }
}

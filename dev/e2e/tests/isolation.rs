//! Build isolation: code from a pushed repository — a Dockerfile `RUN`, the test command, the
//! smoke command — reaches no service of the host. A hostile repository
//! (`tests/fixtures/hostile-app`) tries, in each of the three steps, to connect to NATS, the
//! registry, ci-service and cd-service, looks for a Docker socket and lists its network
//! interfaces; every try must fail and each step must see no interface but loopback (so no
//! address of the host, loopback or other, is routable). The same probe run on the host network
//! reaches every service, so the probe can tell.
//!
//! Only loopback addresses are tried: this workplace forbids traffic to the host's other
//! (private-range) addresses; a namespace whose only interface is `lo` has no route to them.

use std::{path::Path, process::Command, time::Duration};

use conveyor_e2e::Stack;
use conveyor_testkit::{copy_tree, docker::FLASK_BASE_IMAGE, repo_root};

const BUILD_LIMIT: Duration = Duration::from_secs(600);

fn targets(stack: &Stack) -> String {
    let port = |url: &str| url.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let registry_port = stack.registry.addr.rsplit(':').next().unwrap().to_string();
    [
        ("nats", stack.nats.port.to_string()),
        ("registry", registry_port),
        ("ci-service", port(&stack.ci_url)),
        ("cd-service", port(&stack.cd_url)),
    ]
    .iter()
    .map(|(name, port)| format!("{name} 127.0.0.1 {port}\n"))
    .collect()
}

fn probe_lines<'a>(text: &'a str, stage: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.split_once(&format!("probe {stage} ")).map(|(_, rest)| rest)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_code_in_build_test_and_smoke_reaches_no_host_service() {
    let stack = Stack::start().await.expect("stack starts");
    let fixture = repo_root().join("dev/e2e/tests/fixtures/hostile-app");
    let targets = targets(&stack);

    // Control: the same probe on the host network reaches all four services.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    std::fs::write(dir.path().join("targets.txt"), &targets).unwrap();
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "host", "-v"])
        .arg(format!("{}:/probe:ro", dir.path().display()))
        .args([FLASK_BASE_IMAGE, "python3", "/probe/probe.py", "host"])
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&out.stdout).into_owned();
    let reached = probe_lines(&control, "host").iter().filter(|l| l.starts_with("REACHED")).count();
    assert_eq!(reached, 4, "on the host network the probe reaches every service:\n{control}");

    copy_tree(&fixture, &stack.dev.path);
    stack.dev.write("targets.txt", &targets);
    let commit = stack.dev.commit_all("a repository that tries to reach the host");
    stack.dev.push();
    let build = stack.wait_build(&commit, BUILD_LIMIT).await.unwrap();
    let logs = stack.build_logs(&build).await.unwrap();
    assert_eq!(build["state"], "succeeded", "{build}\n{logs}");

    for stage in ["build", "test", "smoke"] {
        let lines = probe_lines(&logs, stage);
        let tries: Vec<&&str> = lines.iter().filter(|l| l.starts_with("blocked") || l.starts_with("REACHED")).collect();
        assert_eq!(tries.len(), 6, "{stage}: four services and two socket paths tried:\n{logs}");
        assert!(tries.iter().all(|l| l.starts_with("blocked")), "{stage} reached something:\n{}", lines.join("\n"));
        assert!(lines.contains(&"interfaces lo"), "{stage} sees only loopback:\n{}", lines.join("\n"));
    }
    // Nothing the probes did reached NATS: the stream holds only this build's event.
    assert_eq!(stack.nats.stream_messages(conveyor_proto::EVENTS_STREAM).await.len(), 1);
    assert!(Path::new(&stack.dev.path.join("targets.txt")).exists());
}

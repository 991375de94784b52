//! What ships: `docker-compose.yml` is a valid Compose file (checked by `docker-compose config`,
//! since no public image can be pulled here) that wires NATS with JetStream and a volume, Jaeger
//! with OTLP, a registry and both services with health checks and traces; and both service
//! images build here from the locally imported runtime base, run as the non-root user, and
//! serve: cd-service in its image applies an event to a mounted manifest repository, ci-service
//! in its image answers its own health check with the Docker Engine reachable through the socket.
//! The manifests in `k8s-manifests/` are checked by `manifests.rs`.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use conveyor_e2e::bin_dir;
use conveyor_testkit::{copy_tree, free_port, repo_root, BareRepo, TestNats, WorkClone};
use serde_norway::Value;

const RUNTIME_BASE: &str = "conveyor/debian:bookworm";

fn compose(env: &[(&str, &str)]) -> Output {
    Command::new("docker-compose")
        .arg("-f")
        .arg(repo_root().join("docker-compose.yml"))
        .arg("config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run docker-compose (dev/setup installs it)")
}

#[test]
fn the_compose_file_wires_the_whole_stack_and_refuses_to_start_without_its_secrets() {
    let env = [
        ("CONVEYOR_WEBHOOK_SECRET", "s3cret"),
        ("CONVEYOR_MANIFEST_REPO", "git@git.example.test:acme/manifests.git"),
        ("CONVEYOR_DEPLOY_KEY_FILE", "/dev/null"),
        ("CONVEYOR_KNOWN_HOSTS_FILE", "/dev/null"),
        ("CONVEYOR_CI_SIGNING_KEY_FILE", "/dev/null"),
        ("CONVEYOR_CI_PUBLIC_KEY_FILE", "/dev/null"),
        ("CONVEYOR_CD_SIGNING_KEY_FILE", "/dev/null"),
        ("CONVEYOR_NATS_CI_PASSWORD", "pw-ci"),
        ("CONVEYOR_NATS_CD_PASSWORD", "pw-cd"),
        ("CONVEYOR_NATS_ADMIN_PASSWORD", "pw-admin"),
        ("CONVEYOR_API_TOKEN", "api-token"),
    ];
    let out = compose(&env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_norway::from_slice(&out.stdout).expect("docker-compose prints YAML");
    let services = &config["services"];
    for name in ["nats", "jaeger", "registry", "ci-service", "cd-service", "console"] {
        assert!(services[name].is_mapping(), "service {name} in:\n{}", String::from_utf8_lossy(&out.stdout));
        assert!(services[name]["healthcheck"]["test"].is_sequence(), "{name} has a health check");
    }
    let nats = &services["nats"];
    let command: Vec<&str> = nats["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(command.contains(&"--jetstream") && command.contains(&"/data"), "{command:?}");
    assert!(format!("{:?}", nats["volumes"]).contains("/data"), "JetStream's store is a volume");
    assert!(command.windows(2).any(|w| w == ["-c", "/etc/nats/auth.conf"]), "NATS runs with Conveyor's users: {command:?}");
    assert!(format!("{:?}", nats["volumes"]).contains("k8s-manifests/conveyor/nats-auth.conf"), "the one permissions file");
    assert_eq!(nats["environment"]["CONVEYOR_NATS_CD_PASSWORD"].as_str(), Some("pw-cd"));
    let jaeger = &services["jaeger"];
    assert_eq!(jaeger["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(), Some("true"));
    let ports = format!("{:?}", jaeger["ports"]);
    for port in ["4317", "4318", "16686"] {
        assert!(ports.contains(port), "jaeger publishes {port}: {ports}");
    }
    let ci = &services["ci-service"];
    assert_eq!(ci["environment"]["CONVEYOR_WEBHOOK_SECRET"].as_str(), Some("s3cret"));
    assert_eq!(ci["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(), Some("http://127.0.0.1:4318"));
    assert!(format!("{:?}", ci["volumes"]).contains("/var/run/docker.sock"), "ci-service drives the host's Docker Engine");
    let cd = &services["cd-service"];
    assert_eq!(cd["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(), Some("http://jaeger:4318"));
    assert_eq!(cd["environment"]["CONVEYOR_SSH_KEY"].as_str(), Some("/run/secrets/deploy_key"));
    for (svc, user, password) in [("ci-service", "conveyor-ci", "pw-ci"), ("cd-service", "conveyor-cd", "pw-cd")] {
        let env = &services[svc]["environment"];
        assert_eq!((env["CONVEYOR_NATS_USER"].as_str(), env["CONVEYOR_NATS_PASSWORD"].as_str()), (Some(user), Some(password)), "{svc}");
        assert!(env["CONVEYOR_SIGNING_KEY_FILE"].as_str().unwrap().starts_with("/run/secrets/"), "{svc} signs with a secret key");
    }
    assert_eq!(cd["environment"]["CONVEYOR_CI_PUBLIC_KEYS"].as_str(), Some("/run/secrets/ci_public_key"));
    assert_eq!(cd["environment"]["CONVEYOR_API_TOKEN"].as_str(), Some("api-token"));
    // The console reads ci-service on the host network (where ci-service listens) and ships in
    // cd-service's image.
    let console = &services["console"];
    assert_eq!(console["image"], services["cd-service"]["image"]);
    assert_eq!(console["environment"]["CONVEYOR_CI_URL"].as_str(), Some("http://127.0.0.1:8080"));
    assert_eq!(console["environment"]["CONVEYOR_CD_URL"].as_str(), Some("http://127.0.0.1:8090"));
    assert_eq!(console["network_mode"].as_str(), Some("host"));
    for svc in ["ci-service", "cd-service"] {
        let dockerfile = services[svc]["build"]["dockerfile"].as_str().unwrap();
        assert!(repo_root().join(dockerfile).is_file() || Path::new(dockerfile).is_file(), "{dockerfile}");
    }

    // The `cluster` profile: three NATS nodes routed to each other, the services on R3 and
    // every node in their NATS URL.
    let cluster_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([
            ("COMPOSE_PROFILES", "cluster"),
            ("CONVEYOR_STREAM_REPLICAS", "3"),
            ("CONVEYOR_CI_NATS_URL", "nats://127.0.0.1:4223,nats://127.0.0.1:4224,nats://127.0.0.1:4225"),
            ("CONVEYOR_CD_NATS_URL", "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"),
        ])
        .collect();
    let out = compose(&cluster_env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_norway::from_slice(&out.stdout).unwrap();
    for (node, others) in [("nats-1", ["nats-2", "nats-3"]), ("nats-2", ["nats-1", "nats-3"]), ("nats-3", ["nats-1", "nats-2"])] {
        let svc = &config["services"][node];
        assert_eq!(svc["profiles"][0].as_str(), Some("cluster"), "{node} only in the cluster profile");
        let command: Vec<&str> = svc["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
        let routes = command.windows(2).find(|w| w[0] == "--routes").map(|w| w[1]).unwrap_or("");
        assert!(others.iter().all(|o| routes.contains(&format!("nats://{o}:6222"))), "{node} routes to {others:?}: {command:?}");
        assert!(command.windows(2).any(|w| w == ["--server_name", node]) && command.contains(&"--jetstream"), "{command:?}");
        assert!(command.windows(2).any(|w| w == ["-c", "/etc/nats/auth.conf"]), "{node} runs with Conveyor's users");
        assert!(format!("{:?}", svc["volumes"]).contains(&format!("{node}-data")), "{node} has its own store");
    }
    for svc in ["ci-service", "cd-service"] {
        let env = &config["services"][svc]["environment"];
        assert_eq!(env["CONVEYOR_STREAM_REPLICAS"].as_str(), Some("3"), "{svc}");
        assert_eq!(env["CONVEYOR_NATS_URL"].as_str().unwrap().split(',').count(), 3, "{svc}");
    }

    let out = compose(&env[1..]);
    assert!(!out.status.success(), "no webhook secret: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("set CONVEYOR_WEBHOOK_SECRET"), "{}", String::from_utf8_lossy(&out.stderr));
    let without_token: Vec<_> = env.iter().filter(|(k, _)| *k != "CONVEYOR_API_TOKEN").cloned().collect();
    let out = compose(&without_token);
    assert!(!out.status.success(), "no API token: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("set CONVEYOR_API_TOKEN"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Builds a service image's `prebuilt` target from the binaries of this build; removed on drop.
struct Image(String);

impl Image {
    fn build(service: &str) -> Image {
        let tag = format!("conveyor/{service}:test-{}", uuid::Uuid::now_v7().simple());
        let bins = std::fs::canonicalize(bin_dir().expect("binaries are built")).unwrap();
        let root = std::fs::canonicalize(repo_root()).unwrap();
        let bins = bins.strip_prefix(&root).expect("the binaries are under the repository (the build context)");
        let out = Command::new("docker")
            .current_dir(repo_root())
            .args(["build", "-q", "--network", "none", "--target", "prebuilt", "-f"])
            .arg(format!("{service}/Dockerfile"))
            .args(["--build-arg", &format!("RUNTIME_IMAGE={RUNTIME_BASE}"), "--build-arg"])
            .arg(format!("BIN_DIR={}", bins.display()))
            .args(["-t", &tag, "."])
            .output()
            .expect("docker build");
        assert!(out.status.success(), "docker build of {service}: {}", String::from_utf8_lossy(&out.stderr));
        Image(tag)
    }

    fn inspect(&self, format: &str) -> String {
        let out = Command::new("docker").args(["image", "inspect", "--format", format, &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["image", "rm", "-f", &self.0]).output();
    }
}

/// A detached container, removed on drop.
struct Container(String);

impl Container {
    fn run(args: &[&str]) -> Container {
        let out = Command::new("docker").args(["run", "-d"]).args(args).output().expect("docker run");
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        Container(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn exec_ok(&self, args: &[&str]) -> bool {
        Command::new("docker").arg("exec").arg(&self.0).args(args).output().is_ok_and(|o| o.status.success())
    }

    fn logs(&self) -> String {
        let out = Command::new("docker").args(["logs", &self.0]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    async fn wait_healthy(&self, probe: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let binary = format!("/usr/local/bin/{}", probe.split('|').next().unwrap());
        let url = probe.split('|').nth(1).unwrap();
        while !self.exec_ok(&[&binary, "--probe", url]) {
            assert!(std::time::Instant::now() < deadline, "not ready within 60 s:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_images_build_here_run_as_non_root_and_serve() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();

    // cd-service in its image: clones a mounted manifest repository and applies an event.
    let cd = Image::build("cd-service");
    assert_eq!(cd.inspect("{{.Config.User}}"), "10001:10001", "non-root");
    assert!(cd.inspect("{{json .Config.Healthcheck.Test}}").contains("--probe"), "the image has a health check");
    let bare = BareRepo::create(dir.path().join("manifests.git"));
    let seed = WorkClone::init(dir.path().join("seed"), &bare);
    copy_tree(&repo_root().join("k8s-manifests"), &seed.path);
    seed.commit_all("manifests");
    seed.push();
    // The container's user (10001) owns it, as a deploy key's repository would be its own (libgit2
    // refuses a repository owned by someone else).
    conveyor_testkit::run(Command::new("chown").args(["-R", "10001:10001"]).arg(&bare.path));
    // The keys as a Kubernetes Secret or Compose secret would hand them in: files the service's
    // user can read, under /keys.
    let keys = tempfile::tempdir().unwrap();
    for (from, to) in [(&nats.keys.ci_pub, "ci.pub.pem"), (&nats.keys.cd_key, "cd.pem"), (&nats.keys.ci_key, "ci.pem")] {
        std::fs::copy(from, keys.path().join(to)).unwrap();
    }
    conveyor_testkit::run(Command::new("chown").args(["-R", "10001:10001"]).arg(keys.path()));
    let keys_mount = format!("{}:/keys:ro", keys.path().display());
    let env = |pairs: Vec<(&str, String)>| -> Vec<String> {
        pairs
            .into_iter()
            .map(|(k, v)| (k, v.replace(&*nats.keys.cd_key.to_string_lossy(), "/keys/cd.pem")))
            .map(|(k, v)| (k, v.replace(&*nats.keys.ci_pub.to_string_lossy(), "/keys/ci.pub.pem")))
            .map(|(k, v)| (k, v.replace(&*nats.keys.ci_key.to_string_lossy(), "/keys/ci.pem")))
            .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
            .collect()
    };
    let port = free_port();
    let cd_env = env(nats.cd_env());
    let mut cd_args: Vec<&str> = vec!["--network", "host", "-v", &keys_mount];
    let manifests_mount = format!("{}:/manifests/manifests.git", bare.path.display());
    let listen = format!("CONVEYOR_CD_LISTEN=127.0.0.1:{port}");
    cd_args.extend(["-v", &manifests_mount, "-e", &listen, "-e", "CONVEYOR_MANIFEST_REPO=/manifests/manifests.git"]);
    cd_args.extend(["-e", "CONVEYOR_API_TOKEN=image-test-token"]);
    cd_args.extend(cd_env.iter().map(String::as_str));
    cd_args.push(&cd.0);
    let cd_box = Container::run(&cd_args);
    cd_box.wait_healthy(&format!("cd-service|http://127.0.0.1:{port}/readyz")).await;
    let cd_port = port;
    // The image conveyor.yaml names for the app; a build of it lands in staging.
    let repository = "127.0.0.1:5000/flask-app".to_string();
    let now = time::OffsetDateTime::now_utc();
    let event = conveyor_proto::ImageBuilt {
        version: conveyor_proto::EVENT_VERSION,
        event_id: "image-test-1".into(),
        app: "flask-app".into(),
        image: conveyor_proto::ImageRef {
            repository: repository.clone(),
            tag: "from-image-test".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
        },
        source: conveyor_proto::SourceRef {
            repo_url: "/srv/git/flask-app.git".into(),
            commit: "c0ffee".repeat(7)[..40].to_string(),
            branch: "main".into(),
        },
        build_id: "1".into(),
        build_started_at: now,
        built_at: now,
        traceparent: None,
        deploy: None,
    };
    let seq = nats.publish_event(&event).await;
    nats.wait_consumer_done(conveyor_proto::EVENTS_STREAM, "cd-service", seq, Duration::from_secs(30)).await;
    // The console from cd-service's image, in front of both (ci-service starts below): its
    // page, and cd-service's matrix through it with the tag the image-run cd-service committed.
    let ci_port = free_port();
    let console_port = free_port();
    let listen = format!("CONVEYOR_CONSOLE_LISTEN=127.0.0.1:{console_port}");
    let (ci_url, cd_url) = (format!("CONVEYOR_CI_URL=http://127.0.0.1:{ci_port}"), format!("CONVEYOR_CD_URL=http://127.0.0.1:{cd_port}"));
    let console_box = Container::run(&[
        "--network",
        "host",
        "--no-healthcheck",
        "--read-only",
        "--entrypoint",
        "/usr/local/bin/conveyor-console",
        "-e",
        &listen,
        "-e",
        &ci_url,
        "-e",
        &cd_url,
        &cd.0,
    ]);
    console_box.wait_healthy(&format!("cd-service|http://127.0.0.1:{console_port}/healthz")).await;
    let page = reqwest::get(format!("http://127.0.0.1:{console_port}/")).await.unwrap();
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(page.text().await.unwrap().contains("<title>Conveyor</title>"));
    let envs: Vec<conveyor_api::cd::EnvironmentStatus> =
        reqwest::get(format!("http://127.0.0.1:{console_port}/api/cd/environments")).await.unwrap().json().await.unwrap();
    let staging = envs.iter().find(|e| e.app == "flask-app" && e.environment == "staging").expect("flask-app/staging");
    assert_eq!(staging.current.as_ref().map(|d| d.tag.as_str()), Some("from-image-test"), "{}", console_box.logs());
    conveyor_testkit::run(Command::new("chown").args(["-R", "0:0"]).arg(&bare.path));
    assert!(
        bare.show("main", conveyor_e2e::STAGING).contains("newTag: from-image-test"),
        "cd-service in its image committed the tag:\n{}",
        cd_box.logs()
    );

    // ci-service in its image: ready only when NATS and the Docker Engine (through the mounted
    // socket, as a member of its group) answer.
    let ci = Image::build("ci-service");
    assert_eq!(ci.inspect("{{.Config.User}}"), "10001:10001", "non-root");
    let socket_gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata("/var/run/docker.sock").unwrap()).to_string();
    let port = ci_port;
    let ci_env = env(nats.ci_env());
    let listen = format!("CONVEYOR_LISTEN=127.0.0.1:{port}");
    let mut ci_args: Vec<&str> = vec!["--network", "host", "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", &keys_mount];
    ci_args.extend(["--group-add", &socket_gid, "-e", &listen, "-e", "CONVEYOR_WEBHOOK_SECRET=image-test", "-e", "CONVEYOR_WORKERS=1"]);
    ci_args.extend(ci_env.iter().map(String::as_str));
    ci_args.push(&ci.0);
    let ci_box = Container::run(&ci_args);
    ci_box.wait_healthy(&format!("ci-service|http://127.0.0.1:{port}/readyz")).await;
    let builds: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/builds")).await.unwrap().json().await.unwrap();
    assert!(builds.is_array(), "{builds}");

    let builds: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{console_port}/api/ci/builds")).await.unwrap().json().await.unwrap();
    assert!(builds.is_array(), "{builds}");
}

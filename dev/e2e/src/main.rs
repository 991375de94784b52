//! `dev/demo`: runs the whole loop once on the example Flask app and prints what happened —
//! a green push that ends in a manifest commit to the staging overlay, a promotion of that image
//! to production, then a push whose tests fail and deploys nothing. With `--keep` the stack
//! stays up afterwards (until Ctrl-C), to look around in the web console whose URL it prints.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use conveyor_e2e::{Stack, APP, PRODUCTION};
use conveyor_proto::{ImageBuilt, EVENTS_STREAM};

const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    if let Some(other) = std::env::args().skip(1).find(|a| a != "--keep") {
        anyhow::bail!("unknown argument {other:?}: the demo takes only --keep (stay up afterwards, for the console)");
    }
    let t0 = Instant::now();
    say("Starting NATS JetStream, a registry, ci-service and cd-service on 127.0.0.1 ...");
    let stack = Stack::start().await?;
    println!("  NATS          {}", stack.nats.url);
    println!("  registry      {}", stack.registry.addr);
    println!("  ci-service    {}", stack.ci_url);
    println!("  cd-service    {}", stack.cd_url);
    println!("  console       {}/  (API token for its actions: {})", stack.console_url, stack.api_token);
    println!("  app repo      {}  (post-receive hook -> ci-service)", stack.app_repo.url());
    println!("  manifest repo {}  (cd-service commits here)", stack.manifest_repo.url());
    println!("  security      on: NATS users conveyor-ci / conveyor-cd with their own permissions (anonymous clients refused),");
    println!(
        "                image-built events signed by ci-service (key {}), promotions by cd-service (key {}),",
        stack.nats.keys.ci_signer().key_id(),
        stack.nats.keys.cd_signer().key_id()
    );
    println!("                POST /promote and /replay need the API token, builds run with no network (smoke probed in its namespace)");
    let manifest_before = stack.manifest_repo.head("main").context("manifest repo has main")?;

    say("1. git push of examples/flask-app");
    let (commit, hook) = stack.push_example_app("flask-app: first version");
    println!("  pushed {commit}");
    for line in hook.lines().filter(|l| l.contains("conveyor")) {
        println!("  {}", line.trim_start_matches("remote: ").trim_end());
    }
    let build = stack.wait_build(&commit, BUILD_LIMIT).await?;
    print_build(&build);
    ensure!(build["state"] == "succeeded", "the build failed:\n{}", stack.build_logs(&build).await?);
    let logs = stack.build_logs(&build).await?;
    if let Some(line) = logs.lines().find(|l| l.contains("passed")) {
        println!("  pytest: {}", line.trim());
    }
    let served = stack.registry.manifest_digest(APP, &commit[..12]).await;
    println!("  registry serves {}/{APP}:{} as {}", stack.registry.addr, &commit[..12], served.as_deref().unwrap_or("(nothing!)"));

    let events = stack.nats.stream_messages(EVENTS_STREAM).await;
    let (seq, payload) = events.last().context("an event was published")?;
    let event = ImageBuilt::from_json(payload)?;
    say(&format!("2. image-built event #{seq} on JetStream stream {EVENTS_STREAM}"));
    println!("{}", indent(&serde_json::to_string_pretty(&serde_json::from_slice::<serde_json::Value>(payload)?)?));
    ensure!(event.source.commit == commit, "event names another commit");

    let head = stack.wait_manifest_commit(&manifest_before, Duration::from_secs(60)).await?;
    say("3. cd-service committed to the manifest repo (staging: policy auto in conveyor.yaml)");
    println!("{}", indent(&stack.show_manifest_commit(&head)));
    println!("  Argo CD / Flux would apply (kustomize build):");
    println!("    staging     {}", stack.deployed_image(&head, "staging")?);
    println!("    production  {}  (policy manual: waits for a promotion)", stack.deployed_image(&head, "production")?);

    let tag = &commit[..12];
    say(&format!("4. conveyor promote {APP} --to production --tag {tag} --as demo"));
    let (ok, out, err) = stack.conveyor(&["promote", APP, "--to", "production", "--tag", tag, "--as", "demo"]);
    ensure!(ok, "promotion refused: {out}{err}");
    println!("{}", indent(out.trim()));
    let promoted = stack.wait_manifest_commit(&head, Duration::from_secs(60)).await?;
    let diff = conveyor_testkit::run(std::process::Command::new("git").arg("-C").arg(&stack.manifest_repo.path).args([
        "show",
        "--format=  %s",
        &promoted,
        "--",
        PRODUCTION,
    ]));
    println!("{}", indent(&diff));
    println!("  Argo CD / Flux would apply:");
    println!("    production  {}", stack.deployed_image(&promoted, "production")?);
    let head = promoted;
    let events_before = stack.nats.stream_messages(EVENTS_STREAM).await.len();

    say("5. git push of a change whose tests fail");
    let (bad, _) = stack.push_change(
        "app.py",
        |t| t.replace("Hello from flask-app", "Hello from a broken change"),
        "flask-app: change greeting (breaks a test)",
    );
    let build = stack.wait_build(&bad, BUILD_LIMIT).await?;
    print_build(&build);
    let events_after = stack.nats.stream_messages(EVENTS_STREAM).await.len();
    let head_after = stack.manifest_repo.head("main").unwrap_or_default();
    println!("  events in stream: {} (unchanged: {})", events_after, events_after == events_before);
    println!("  manifest head:    {} (unchanged: {})", &head_after[..12.min(head_after.len())], head_after == head);
    ensure!(build["state"] == "failed" && events_after == events_before && head_after == head, "a red build must deploy nothing");

    say(&format!(
        "Done in {:.1} s: green push deployed {} to staging and was promoted to production; red push stopped at its tests.",
        t0.elapsed().as_secs_f64(),
        event.image.reference()
    ));
    if keep {
        say(&format!("Still up (--keep): open {}/ in a browser; Ctrl-C stops and removes everything.", stack.console_url));
        println!("  API token for the console's actions: {}", stack.api_token);
        println!(
            "  push more: git -C {} commit --allow-empty -m again && git -C {} push",
            stack.dev.path.display(),
            stack.dev.path.display()
        );
        tokio::signal::ctrl_c().await?;
        println!("stopping ...");
    } else {
        println!("  (dev/demo --keep leaves the stack up afterwards, with the web console at its URL)");
    }
    Ok(())
}

fn say(text: &str) {
    println!("\n== {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn print_build(b: &serde_json::Value) {
    println!(
        "  build {} for {}: {}",
        b["id"],
        &b["commit"].as_str().unwrap_or("?")[..12],
        b["state"].as_str().unwrap_or("?").to_uppercase()
    );
    for s in b["steps"].as_array().into_iter().flatten() {
        println!(
            "    {:<9} {:<10} {:>7} ms",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["duration_ms"].as_u64().unwrap_or(0)
        );
    }
    if let (Some(repository), Some(tag)) = (b["repository"].as_str(), b["tags"][0].as_str()) {
        println!("  image  {repository}:{tag}");
    }
    if let Some(digest) = b["digest"].as_str() {
        println!("  digest {digest}");
    }
    if let Some(reason) = b["reason"].as_str() {
        println!("  reason {reason}");
    }
}

//! Five of the scenarios (`forged-deploys` is in `forged.rs`, `bad-webhooks` in `bad_webhooks.rs`). Each builds its own world, injects its faults during a burst, waits until
//! everything that went in has come out (or a limit passed), stops the services with SIGTERM and
//! checks the result:
//! - a push is lost when no image-built event names its commit and its build was not cancelled
//!   as superseded by a newer push of the same branch; an app is lost when the manifest does not
//!   end at its newest push (ci side) or newest event (cd side);
//! - a duplicate is a second event for one commit, or an event committed to the manifest twice;
//! - a crash is a service process that exited without being killed, or not cleanly on SIGTERM.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use conveyor_testkit::WorkClone;

use crate::{
    procs::Replicas,
    world::{self, event, publish, send_push, AppRepo, World},
    Rng, Row, Scale,
};

pub(crate) const READY: Duration = Duration::from_secs(60);
pub(crate) const PUSH_LIMIT: Duration = Duration::from_secs(180);
/// How long the pushes to `repos` may take to drain once they are all in: a few seconds a build
/// on two cores, and a floor for the slowest machine. A build stuck for good fails the run
/// within minutes at bounded scale instead of holding CI for half an hour.
pub(crate) fn drain(repos: &[AppRepo]) -> Duration {
    let pushes: usize = repos.iter().map(|r| r.pushed.len()).sum();
    Duration::from_secs(300 + 4 * pushes as u64)
}

type Shared = Arc<Mutex<Replicas>>;

/// Waits until every replica answers `/readyz`; the error says which did not, and shows its log.
pub(crate) async fn wait_ready(http: &reqwest::Client, replicas: &mut Replicas) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    for (i, url) in replicas.urls().iter().enumerate() {
        loop {
            let ok = http.get(format!("{url}/readyz")).timeout(Duration::from_secs(2)).send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} not ready within {READY:?}: {}", replicas.describe(i));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Kills a random replica every `every` (ms range), keeps it down for `down`, starts it again.
fn spawn_killer(replicas: Shared, stop: Arc<AtomicBool>, mut rng: Rng, every: (u64, u64), down: (u64, u64)) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(rng.millis(every.0, every.1)).await;
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let i = {
                let mut r = replicas.lock().unwrap();
                r.reap_crashes();
                let i = rng.below(r.len());
                r.kill9(i);
                i
            };
            tokio::time::sleep(rng.millis(down.0, down.1)).await;
            let mut r = replicas.lock().unwrap();
            r.respawn(i);
            r.reap_crashes();
        }
    })
}

async fn stop_killer(stop: &AtomicBool, killer: tokio::task::JoinHandle<()>) {
    stop.store(true, Ordering::SeqCst);
    let _ = killer.await;
}

/// The sum of a metric's samples (lines starting with `prefix`) over every replica that answers.
async fn metric_sum(http: &reqwest::Client, urls: &[String], prefix: &str) -> f64 {
    let mut sum = 0.0;
    for url in urls {
        let Ok(r) = http.get(format!("{url}/metrics")).timeout(Duration::from_secs(5)).send().await else { continue };
        let text = r.text().await.unwrap_or_default();
        sum += text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>();
    }
    sum
}

fn finished(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "skipped")
}

/// Waits until every pushed commit has a finished build record (or `limit` passed).
pub(crate) async fn wait_builds_finished(world: &World, repos: &[AppRepo], urls: &[String], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let records = world.builds(urls).await;
        let pending: Vec<(&str, &String)> = repos
            .iter()
            .flat_map(|r| r.pushed.iter().map(|c| (r.app.as_str(), c)))
            .filter(|(_, c)| !records.get(*c).is_some_and(|rs| rs.iter().any(|b| finished(&b.state))))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let named: Vec<String> = pending
                .iter()
                .map(|(app, c)| {
                    let states: Vec<&str> = records.get(*c).map(|rs| rs.iter().map(|b| b.state.as_str()).collect()).unwrap_or_default();
                    format!("{app} {} ({})", &c[..12.min(c.len())], if states.is_empty() { "no build".into() } else { states.join(", ") })
                })
                .collect();
            bail!("{} pushes have no finished build after {limit:?}: {}", pending.len(), named.join("; "));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Checks the ci side: one event per push (or a superseded build), each app deployed at its
/// newest push.
pub(crate) async fn check_pushes(world: &World, repos: &[AppRepo], urls: &[String], row: &mut Row) {
    let mut per_commit: HashMap<String, usize> = HashMap::new();
    let events = world.events().await;
    for (_, e) in &events {
        if e.deploy.is_none() {
            *per_commit.entry(e.source.commit.clone()).or_default() += 1;
        }
    }
    let records = world.builds(urls).await;
    let all: Vec<&world::Build> = repos.iter().flat_map(|r| r.pushed.iter()).filter_map(|c| records.get(c)).flatten().collect();
    let count = |f: &dyn Fn(&world::Build) -> bool| all.iter().filter(|b| f(b)).count();
    row.notes.push(format!(
        "builds: {} succeeded, {} cancelled as superseded, {} failed; {} taken up again after their replica died",
        count(&|b| b.state == "succeeded"),
        count(&|b| b.state == "cancelled" && b.reason.starts_with("superseded")),
        count(&|b| b.state == "failed"),
        count(&|b| b.attempts > 1),
    ));
    for repo in repos {
        for (i, commit) in repo.pushed.iter().enumerate() {
            let n = per_commit.get(commit).copied().unwrap_or(0);
            if n > 1 {
                row.duplicates += n - 1;
                row.notes.push(format!("{}@{} became {n} events", repo.app, &commit[..12]));
            }
            if n == 0 {
                let builds = records.get(commit).cloned().unwrap_or_default();
                let superseded =
                    i + 1 < repo.pushed.len() && builds.iter().any(|b| b.state == "cancelled" && b.reason.starts_with("superseded"));
                if !superseded {
                    row.losses += 1;
                    row.notes.push(format!("{}@{} has no event; its builds: {builds:?}", repo.app, &commit[..12]));
                }
            }
        }
        let Some(newest) = repo.pushed.last() else { continue };
        row.expected += 1;
        let deployed = world.deployed_tag(&repo.app);
        if deployed == newest[..12] {
            row.found += 1;
        } else if per_commit.contains_key(newest) {
            row.losses += 1;
            let order: Vec<String> = events
                .iter()
                .filter(|(_, e)| e.app == repo.app)
                .map(|(seq, e)| format!("#{seq} {} build {} started {}", e.image.tag, e.build_id, e.build_started_at))
                .collect();
            row.notes.push(format!(
                "{} deploys {deployed}, not its newest build {}; its events: {}; the manifest's history: {}",
                repo.app,
                &newest[..12],
                order.join(", "),
                world.manifests.log_oneline("main").lines().take(12).collect::<Vec<_>>().join(" | ")
            ));
        }
    }
}

/// Checks the cd side: each app at the tag of its newest event.
pub(crate) fn check_tags(world: &World, apps: &[String], rounds: usize, row: &mut Row) {
    for app in apps {
        row.expected += 1;
        let deployed = world.deployed_tag(app);
        if deployed == format!("r{rounds}") {
            row.found += 1;
        } else {
            row.losses += 1;
            row.notes.push(format!("{app} deploys {deployed}, not r{rounds}"));
        }
    }
}

/// No event committed to the manifest twice. When one is, the manifest history and the
/// cd-service logs are kept for a look (their paths are in the notes).
pub(crate) fn check_commits(world: &World, row: &mut Row) {
    let ids = world.committed_event_ids();
    let mut seen = HashSet::new();
    let mut twice = Vec::new();
    for id in &ids {
        if !seen.insert(id) {
            row.duplicates += 1;
            twice.push(id.as_str());
        }
    }
    if !twice.is_empty() {
        let keep = std::env::temp_dir().join(format!("conveyor-faults-{}-{}", row.scenario, std::process::id()));
        let _ = std::fs::create_dir_all(&keep);
        let history = conveyor_testkit::run(std::process::Command::new("git").arg("-C").arg(&world.manifests.path).args([
            "log",
            "--graph",
            "--format=%h %s%n%b",
            "main",
        ]));
        let _ = std::fs::write(keep.join("manifest-history.txt"), history);
        for entry in std::fs::read_dir(world.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
            }
        }
        row.notes.push(format!(
            "{} events committed twice: {}; history and logs kept in {}",
            twice.len(),
            twice.join(", "),
            keep.display()
        ));
    }
}

pub(crate) fn count_crashes(row: &mut Row, replicas: &mut [&mut Replicas]) {
    for r in replicas.iter_mut() {
        r.stop_all();
        for c in &r.crashes {
            row.crashes += 1;
            row.notes.push(format!("{} exited ({}); its log ends:\n{}", c.replica, c.status, c.log_tail));
        }
    }
}

pub(crate) fn apps(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Three ci-service replicas (two workers each) share the build queue while one of them at a
/// time is killed with SIGKILL every 1–4 s during a burst of pushes (one every 200 ms), each of
/// which is built (superseded builds are not cancelled here); two cd-service replicas deploy
/// what comes out.
pub async fn ci_kill9(scale: &Scale, mut rng: Rng) -> anyhow::Result<Row> {
    let names = apps("app", scale.ci_apps);
    let world = World::new(&names).await?;
    // Every push is built (no cancelling of superseded builds), so that kills land in builds.
    // A SIGKILL every 1-4 s across three replicas can hit one build in each of the 5 deliveries
    // `--max-deliver` allows by default (seen on a loaded machine: the build is then given up,
    // see the README's "Not yet"); the scenario is about surviving kills, so it allows more.
    let extra = [("CONVEYOR_CANCEL_SUPERSEDED", "false"), ("CONVEYOR_MAX_DELIVER", "30")];
    let mut ci = world.start_ci_with(3, 2, &extra);
    let mut cd = world.start_cd(2);
    let ci_urls = ci.urls();
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let ci: Shared = Arc::new(Mutex::new(ci));
    let mut repos: Vec<AppRepo> = names.iter().map(|a| world.app_repo(a)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = spawn_killer(ci.clone(), stop.clone(), rng.fork(), (1000, 4000), (100, 1500));
    for n in 0..scale.pushes {
        let repo = &mut repos[n % names.len()];
        let commit = World::commit_and_push(repo, n);
        send_push(&world.http, &ci_urls, n, &repo.bare.url(), &commit, PUSH_LIMIT).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Faults go on while the burst is built (for up to a minute after the last push).
    let _ = wait_builds_finished(&world, &repos, &ci_urls, Duration::from_secs(60)).await;
    stop_killer(&stop, killer).await;
    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    let mut row = Row { scenario: "ci-kill-9", inputs: format!("{} pushes, {} apps", scale.pushes, names.len()), ..Row::default() };
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_commits(&world, &mut row);
    let mut ci = Arc::try_unwrap(ci).ok().context("killer still holds the replicas")?.into_inner().unwrap();
    row.injected = ci.kills;
    row.faults = format!("{} × kill -9 of ci-service (3 replicas)", ci.kills);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

/// Two cd-service replicas on the one durable consumer; one at a time is killed with SIGKILL
/// every 0.4–1.5 s while events arrive.
pub async fn cd_kill9(scale: &Scale, mut rng: Rng) -> anyhow::Result<Row> {
    let names = apps("svc", scale.cd_apps);
    let world = World::new(&names).await?;
    let mut cd = world.start_cd(2);
    wait_ready(&world.http, &mut cd).await?;
    let cd: Shared = Arc::new(Mutex::new(cd));
    let client = world.nats.connect_admin().await;
    let signer = world.nats.keys.ci_signer();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = spawn_killer(cd.clone(), stop.clone(), rng.fork(), (400, 1500), (50, 600));
    let rounds = scale.events / names.len();
    let t0 = time::OffsetDateTime::now_utc();
    for round in 1..=rounds {
        for app in &names {
            publish(&client, &signer, &event(&world.registry.addr, app, round, t0), PUSH_LIMIT).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = world.wait_cd_done(Duration::from_secs(20)).await;
    stop_killer(&stop, killer).await;
    if let Err(e) = world.wait_cd_done(Duration::from_secs(300)).await {
        let mut cd = cd.lock().unwrap();
        let replicas: Vec<String> = (0..cd.len()).map(|i| cd.describe(i)).collect();
        bail!("{e:#}\n{}", replicas.join("\n"));
    }

    let mut row = Row { scenario: "cd-kill-9", inputs: format!("{} events, {} apps", rounds * names.len(), names.len()), ..Row::default() };
    check_tags(&world, &names, rounds, &mut row);
    check_commits(&world, &mut row);
    let mut cd = Arc::try_unwrap(cd).ok().context("killer still holds the replicas")?.into_inner().unwrap();
    row.injected = cd.kills;
    row.faults = format!("{} × kill -9 of cd-service (2 replicas)", cd.kills);
    count_crashes(&mut row, &mut [&mut cd]);
    Ok(row)
}

/// Pushes and events keep coming (one step every 400 ms) while NATS is stopped and started
/// again twice (2 s down each time, same port and store). Senders retry as a forge or producer
/// would.
pub async fn nats_restart(scale: &Scale, _rng: Rng) -> anyhow::Result<Row> {
    let ci_names = apps("app", 2);
    let cd_names = apps("svc", 5);
    let mut world = World::new(&[ci_names.clone(), cd_names.clone()].concat()).await?;
    let mut ci = world.start_ci(2, 2);
    let mut cd = world.start_cd(2);
    let ci_urls = ci.urls();
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let mut repos: Vec<AppRepo> = ci_names.iter().map(|a| world.app_repo(a)).collect();
    let client = world.nats.connect_admin().await;
    let signer = world.nats.keys.ci_signer();
    let rounds = scale.nats_events / cd_names.len();
    let steps = scale.nats_pushes.max(rounds);
    let t0 = time::OffsetDateTime::now_utc();

    // Inputs at a steady pace; NATS goes away a quarter of the way in, and again a quarter
    // of the time after it came back.
    let (http, registry) = (world.http.clone(), world.registry.addr.clone());
    let pace = Duration::from_millis(400);
    // Changes when NATS stops and when it is back: a send that saw it change (or began while
    // NATS was down) overlapped an outage. A send can block through a whole outage, so
    // sampling "down" at its start alone would miss it.
    let outage_epoch = std::sync::atomic::AtomicUsize::new(0);
    let (mut redelivered, mut while_down) = (0, 0);
    let inputs = async {
        let overlapped = |before: usize| before % 2 == 1 || outage_epoch.load(Ordering::SeqCst) != before;
        for step in 0..steps {
            if step < scale.nats_pushes {
                let before = outage_epoch.load(Ordering::SeqCst);
                let repo = &mut repos[step % ci_names.len()];
                let commit = World::commit_and_push(repo, step);
                redelivered += send_push(&http, &ci_urls, step, &repo.bare.url(), &commit, PUSH_LIMIT).await? - 1;
                while_down += usize::from(overlapped(before));
            }
            if step < rounds {
                let before = outage_epoch.load(Ordering::SeqCst);
                for app in &cd_names {
                    publish(&client, &signer, &event(&registry, app, step + 1, t0), PUSH_LIMIT).await?;
                }
                while_down += if overlapped(before) { cd_names.len() } else { 0 };
            }
            tokio::time::sleep(pace).await;
        }
        anyhow::Ok(())
    };
    let nats = &mut world.nats;
    let outages = async {
        for _ in 0..2 {
            tokio::time::sleep(pace * steps as u32 / 4).await;
            outage_epoch.fetch_add(1, Ordering::SeqCst);
            nats.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            nats.restart().await;
            outage_epoch.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (sent, ()) = tokio::join!(inputs, outages);
    sent?;
    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    let mut row = Row {
        scenario: "nats-restart",
        injected: 2,
        faults: "2 × NATS stopped for 2 s".into(),
        inputs: format!("{} pushes, {} events", scale.nats_pushes, rounds * cd_names.len()),
        ..Row::default()
    };
    let retried = metric_sum(&world.http, &ci_urls, "conveyor_ci_step_retries_total{step=\"publish\"}").await;
    row.notes.push(format!(
        "{while_down} pushes and events were sent while NATS was down or going down; {redelivered} webhook deliveries were answered 503 or not at all and sent again; ci-service retried {retried} event publishes"
    ));
    if while_down == 0 {
        row.injected = 0;
        row.notes.push("no input arrived while NATS was down: the outages missed the burst".into());
    }
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_tags(&world, &cd_names, rounds, &mut row);
    check_commits(&world, &mut row);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

/// The registry is stopped for 4 s while builds are pushing their images, twice.
pub async fn registry_outage(scale: &Scale, _rng: Rng) -> anyhow::Result<Row> {
    let names = apps("app", 4);
    let mut world = World::new(&names).await?;
    let mut ci = world.start_ci(2, 2);
    let mut cd = world.start_cd(1);
    let ci_urls = ci.urls();
    wait_ready(&world.http, &mut ci).await?;
    wait_ready(&world.http, &mut cd).await?;
    let mut repos: Vec<AppRepo> = names.iter().map(|a| world.app_repo(a)).collect();
    let pushes = scale.registry_pushes;

    let http = world.http.clone();
    let inputs = async {
        for n in 0..pushes {
            let repo = &mut repos[n % names.len()];
            let commit = World::commit_and_push(repo, n);
            send_push(&http, &ci_urls, n, &repo.bare.url(), &commit, PUSH_LIMIT).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        anyhow::Ok(())
    };
    let registry = &mut world.registry;
    let outages = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(400 * pushes as u64 / 3)).await;
            registry.stop();
            tokio::time::sleep(Duration::from_secs(4)).await;
            registry.restart().await;
        }
    };
    let (sent, ()) = tokio::join!(inputs, outages);
    sent?;
    wait_builds_finished(&world, &repos, &ci_urls, drain(&repos)).await?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    // The outages must have hit pushes (else this scenario tested nothing).
    let retries = metric_sum(&world.http, &ci_urls, "conveyor_ci_step_retries_total{step=\"push\"}").await;
    let mut row = Row {
        scenario: "registry-outage",
        injected: if retries > 0.0 { 2 } else { 0 },
        faults: "2 × registry stopped for 4 s".into(),
        inputs: format!("{pushes} pushes, {} apps", names.len()),
        ..Row::default()
    };
    row.notes.push(format!("{retries} registry pushes failed during the outages and were retried"));
    check_pushes(&world, &repos, &ci_urls, &mut row).await;
    check_commits(&world, &mut row);
    count_crashes(&mut row, &mut [&mut ci, &mut cd]);
    Ok(row)
}

/// A person pushes commits to the manifest repository while two cd-service replicas apply a
/// burst of events to it.
pub async fn outside_pushes(scale: &Scale, _rng: Rng) -> anyhow::Result<Row> {
    let names = apps("svc", scale.cd_apps);
    let world = World::new(&names).await?;
    let mut cd = world.start_cd(2);
    wait_ready(&world.http, &mut cd).await?;
    let client = world.nats.connect_admin().await;
    let signer = world.nats.keys.ci_signer();
    let rounds = scale.events / names.len();
    let commits = scale.outside_commits;

    let human = WorkClone::clone_of(world.path().join("human"), &world.manifests);
    let person = std::thread::spawn(move || {
        for i in 0..commits {
            human.write(&format!("docs/note-{i}.md"), &format!("note {i}\n"));
            human.commit_all(&format!("docs: note {i}"));
            human.push_rebasing(100);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let t0 = time::OffsetDateTime::now_utc();
    for round in 1..=rounds {
        for app in &names {
            publish(&client, &signer, &event(&world.registry.addr, app, round, t0), PUSH_LIMIT).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || person.join()).await?.map_err(|_| anyhow::anyhow!("the person pushing panicked"))?;
    world.wait_cd_done(Duration::from_secs(300)).await?;

    let mut row = Row {
        scenario: "outside-pushes",
        injected: commits,
        faults: format!("{commits} outside pushes to the manifest repo"),
        inputs: format!("{} events, {} apps", rounds * names.len(), names.len()),
        ..Row::default()
    };
    check_tags(&world, &names, rounds, &mut row);
    check_commits(&world, &mut row);
    let log = world.manifests.log_oneline("main");
    for i in 0..commits {
        if !log.contains(&format!("docs: note {i}")) {
            row.losses += 1;
            row.notes.push(format!("outside commit \"docs: note {i}\" is gone"));
        }
    }
    count_crashes(&mut row, &mut [&mut cd]);
    Ok(row)
}

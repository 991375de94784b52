//! The fault-injection suite: the real `ci-service` and `cd-service` binaries, NATS, a registry
//! and git repositories on 127.0.0.1, fed bursts of pushes, events and bad webhooks while
//! processes are killed with SIGKILL, NATS restarts or loses a node of its cluster, the registry goes away and people push to
//! the manifest repository. Each scenario checks what came out against what went in and gives a
//! row of the table `dev/faults` prints: faults injected, inputs, manifest updates expected and
//! found, duplicates, losses, crashes. The goal is zero duplicated, zero lost, zero crashes.

pub mod bad_webhooks;
pub mod cluster;
pub mod forged;
pub mod procs;
pub mod scenarios;
pub mod world;

use std::time::Duration;

/// How big each scenario's burst is.
#[derive(Debug, Clone)]
pub struct Scale {
    pub name: &'static str,
    /// ci-service kill -9: pushes, spread over `ci_apps` app repositories.
    pub pushes: usize,
    pub ci_apps: usize,
    /// cd-service kill -9 and outside pushes: events, spread over `cd_apps` apps.
    pub events: usize,
    pub cd_apps: usize,
    /// NATS restart: pushes and events during it.
    pub nats_pushes: usize,
    pub nats_events: usize,
    /// Registry outage: pushes during it.
    pub registry_pushes: usize,
    /// Commits a person pushes to the manifest repository during the event burst.
    pub outside_commits: usize,
    /// Malformed or mis-signed webhook requests.
    pub bad_webhooks: usize,
    /// Forged deploys: rounds of every kind of attempt, each round between real pushes.
    pub forged_rounds: usize,
}

impl Scale {
    /// The figures: 500 pushes and 500 events, 10,000 bad webhooks.
    pub fn full() -> Scale {
        Scale {
            name: "full",
            pushes: 500,
            ci_apps: 10,
            events: 500,
            cd_apps: 10,
            nats_pushes: 60,
            nats_events: 300,
            registry_pushes: 40,
            outside_commits: 50,
            bad_webhooks: 10_000,
            forged_rounds: 10,
        }
    }

    /// The form CI runs inside the test suite: the same scenarios and checks, smaller bursts
    /// (the bad webhooks stay at 10,000: they take seconds).
    pub fn bounded() -> Scale {
        Scale {
            name: "bounded",
            pushes: 30,
            ci_apps: 3,
            events: 200,
            cd_apps: 10,
            nats_pushes: 12,
            nats_events: 100,
            registry_pushes: 8,
            outside_commits: 15,
            bad_webhooks: 10_000,
            forged_rounds: 2,
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: &'static str,
    /// How many faults were injected, and what they were.
    pub injected: usize,
    pub faults: String,
    /// What went in (e.g. "500 pushes").
    pub inputs: String,
    /// Manifest updates that must be on the branch at the end (each app at its newest build)
    /// and how many are.
    pub expected: usize,
    pub found: usize,
    pub duplicates: usize,
    pub losses: usize,
    pub crashes: usize,
    /// Bad inputs answered with anything but a 4xx.
    pub not_refused: usize,
    pub seconds: f64,
    /// What each duplicate, loss or crash was, and other facts worth printing.
    pub notes: Vec<String>,
}

impl Row {
    pub fn clean(&self) -> bool {
        self.duplicates == 0
            && self.losses == 0
            && self.crashes == 0
            && self.not_refused == 0
            && self.found == self.expected
            && self.injected > 0
    }
}

/// The table `dev/faults` prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<28} {:<40} {:<24} {:>8} {:>6} {:>5} {:>6} {:>7} {:>7}\n",
        "scenario", "faults injected", "in", "expected", "found", "dups", "losses", "crashes", "seconds"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<28} {:<40} {:<24} {:>8} {:>6} {:>5} {:>6} {:>7} {:>7.0}\n",
            r.scenario, r.faults, r.inputs, r.expected, r.found, r.duplicates, r.losses, r.crashes, r.seconds
        ));
    }
    let sum = |f: fn(&Row) -> usize| rows.iter().map(f).sum::<usize>();
    out.push_str(&format!(
        "{:<28} {:<40} {:<24} {:>8} {:>6} {:>5} {:>6} {:>7} {:>7.0}\n",
        "total",
        format!("{} faults", sum(|r| r.injected)),
        "",
        sum(|r| r.expected),
        sum(|r| r.found),
        sum(|r| r.duplicates),
        sum(|r| r.losses),
        sum(|r| r.crashes),
        rows.iter().map(|r| r.seconds).sum::<f64>()
    ));
    for r in rows {
        for n in &r.notes {
            out.push_str(&format!("  {}: {n}\n", r.scenario));
        }
    }
    out
}

/// A small deterministic generator (xorshift64*), so a run can be repeated with `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo).max(1))
    }

    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// Every scenario's name, in the order `run` runs them.
pub const SCENARIOS: &[&str] = &[
    "ci-kill-9",
    "cd-kill-9",
    "nats-restart",
    "nats-node-loss",
    "nats-leader-loss",
    "registry-outage",
    "outside-pushes",
    "bad-webhooks",
    "forged-deploys",
];

/// Runs the scenarios named in `only` (all when empty), one after the other, each in its own
/// world. A scenario that cannot run at all is a row with its error as a note and a crash.
pub async fn run(scale: &Scale, seed: u64, only: &[String]) -> Vec<Row> {
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for name in SCENARIOS {
        let rng = rng.fork();
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = std::time::Instant::now();
        eprintln!("[faults] {name} ({} scale, seed {seed}) ...", scale.name);
        let result = match *name {
            "ci-kill-9" => scenarios::ci_kill9(scale, rng).await,
            "cd-kill-9" => scenarios::cd_kill9(scale, rng).await,
            "nats-restart" => scenarios::nats_restart(scale, rng).await,
            "nats-node-loss" => cluster::nats_node_loss(scale, rng).await,
            "nats-leader-loss" => cluster::nats_leader_loss(scale, rng).await,
            "registry-outage" => scenarios::registry_outage(scale, rng).await,
            "outside-pushes" => scenarios::outside_pushes(scale, rng).await,
            "bad-webhooks" => bad_webhooks::bad_webhooks(scale, rng).await,
            "forged-deploys" => forged::forged_deploys(scale, rng).await,
            _ => unreachable!(),
        };
        let mut row = result.unwrap_or_else(|e| Row {
            scenario: name,
            crashes: 1,
            notes: vec![format!("the scenario could not complete: {e:#}")],
            ..Row::default()
        });
        row.seconds = started.elapsed().as_secs_f64();
        eprintln!("[faults] {name}: {} in {:.0} s", if row.clean() { "clean" } else { "NOT CLEAN" }, row.seconds);
        rows.push(row);
    }
    rows
}

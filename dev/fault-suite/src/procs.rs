//! The service processes under test: replicas of the real `ci-service` and `cd-service` binaries,
//! each on a fixed port and work directory so that a replica killed with SIGKILL comes back as
//! itself. A replica that exits without being killed is a crash: counted, its log kept, restarted.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use conveyor_testkit::free_port;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ci,
    Cd,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Ci => "ci-service",
            Service::Cd => "cd-service",
        }
    }
}

/// A crash: a replica that exited on its own.
#[derive(Debug, Clone)]
pub struct Crash {
    pub replica: String,
    pub status: String,
    pub log_tail: String,
}

struct Replica {
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(&mut self, bin: &Path) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("replica log");
        let child = Command::new(bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
    }
}

/// The replicas of one service.
pub struct Replicas {
    pub service: Service,
    bin: PathBuf,
    replicas: Vec<Replica>,
    pub kills: usize,
    pub crashes: Vec<Crash>,
}

impl Replicas {
    /// Starts `n` replicas; `env(i, port)` gives replica `i`'s variables.
    pub fn start(service: Service, bin_dir: &Path, dir: &Path, n: usize, env: impl Fn(usize, u16) -> Vec<(String, String)>) -> Replicas {
        let bin = bin_dir.join(service.name());
        let replicas = (0..n)
            .map(|i| {
                let port = free_port();
                let mut r = Replica {
                    name: format!("{}-{i}", service.name()),
                    port,
                    env: env(i, port),
                    log: dir.join(format!("{}-{i}.log", service.name())),
                    child: None,
                };
                r.spawn(&bin);
                r
            })
            .collect();
        Replicas { service, bin, replicas, kills: 0, crashes: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The HTTP base URL of every replica (running or not).
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| format!("http://127.0.0.1:{}", r.port)).collect()
    }

    /// The last lines of replica `i`'s log, and whether it has exited (for errors).
    pub fn describe(&mut self, i: usize) -> String {
        let r = &mut self.replicas[i];
        let state = match r.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => format!("exited ({status})"),
            Some(_) => "running".to_string(),
            None => "not running".to_string(),
        };
        format!("{} is {state}; its log ends:\n{}", r.name, log_tail(&r.log))
    }

    /// SIGKILL, as the kernel's OOM killer or a node failure would: no cleanup, no goodbye.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// Starts replica `i` again if it is not running.
    pub fn respawn(&mut self, i: usize) {
        if self.replicas[i].child.is_none() {
            let bin = self.bin.clone();
            self.replicas[i].spawn(&bin);
        }
    }

    /// Records replicas that exited on their own, and starts them again.
    pub fn reap_crashes(&mut self) {
        for i in 0..self.replicas.len() {
            let r = &mut self.replicas[i];
            let Some(child) = r.child.as_mut() else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                self.crashes.push(Crash { replica: r.name.clone(), status: status.to_string(), log_tail: log_tail(&r.log) });
                r.child = None;
                self.respawn(i);
            }
        }
    }

    /// Stops every replica with SIGTERM (as an orchestrator would) and waits for it; a replica
    /// that does not exit cleanly within 30 s counts as a crash.
    pub fn stop_all(&mut self) {
        self.reap_crashes();
        for r in &mut self.replicas {
            let Some(mut child) = r.child.take() else { continue };
            conveyor_testkit::signal(child.id(), conveyor_testkit::Signal::TERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let status = loop {
                if let Ok(Some(s)) = child.try_wait() {
                    break Some(s);
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            if !status.is_some_and(|s| s.success()) {
                self.crashes.push(Crash {
                    replica: r.name.clone(),
                    status: status.map(|s| s.to_string()).unwrap_or_else(|| "did not stop within 30 s of SIGTERM".into()),
                    log_tail: log_tail(&r.log),
                });
            }
        }
    }
}

/// The last 20 lines of a replica's log.
/// The last 20 lines of a log, without backtrace frames (they would hide the error above them).
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let frame = |l: &&str| {
        let t = l.trim_start();
        t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut tail: Vec<&str> = log.lines().rev().filter(|l| !frame(l)).take(20).collect();
    tail.reverse();
    tail.join("\n")
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

//! Test harness shared by every integration test and the demo: starts the real programs
//! (nats-server with JetStream, Debian's docker-registry), checks the real dockerd, and drives
//! real git repositories with the git CLI. Everything listens on 127.0.0.1 on free ports, lives
//! in temp dirs, and is stopped and removed on drop. Nothing here is a mock.

pub mod browser;
pub mod docker;
pub mod forge;
pub mod git;
pub mod https;
pub mod nats;
pub mod otlp;
pub mod registry;
pub mod ssh;
pub mod tls;

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

pub use browser::TestBrowser;
pub use docker::TestDocker;
pub use forge::TestForge;
pub use git::{BareRepo, WorkClone};
pub use https::TestGitHttps;
pub use nats::TestNats;

/// The API token test instances of cd-service (and ci-service, where a test sets one) require.
pub const API_TOKEN: &str = "conveyor-test-api-token";
pub use registry::TestRegistry;
pub use ssh::TestSshd;
pub use tls::TlsProxy;

/// Where the workspace's binaries are: `CONVEYOR_BIN_DIR`, or the cargo target directory this
/// test runs from (`cargo test --workspace` and `cargo build` build them there).
pub fn bin_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CONVEYOR_BIN_DIR") {
        return std::path::PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test knows its executable");
    let mut dir = exe.parent().expect("an executable has a directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// The `conveyor` CLI binary (crate `conveyor-cli`) in [`bin_dir`].
pub fn conveyor_cli() -> std::path::PathBuf {
    let bin = bin_dir().join("conveyor");
    assert!(bin.is_file(), "{} not found: build it first (`cargo build -p conveyor-cli`, or run `dev/test`)", bin.display());
    bin
}

/// A free TCP port on 127.0.0.1 for a server started afterwards. It is picked at random below
/// the kernel's ephemeral range (32768–60999 by default), where the outgoing connections of
/// parallel tests never land, and checked by binding it: a port from `bind(0)` is itself an
/// ephemeral one, which a busy test run's client connections took between the check and the
/// server's bind (seen as "Address already in use" once the fault suite ran beside the e2e tests).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32);
    // Never the same port twice in one process: the server given the first may not have bound it yet.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        // splitmix64 over a per-process counter: spread across processes.
        let mut z = seed.wrapping_add(STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let port = 20_000 + ((z ^ (z >> 31)) % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// Waits until `probe` returns true, failing with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command to completion, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository root (for fixtures such as `examples/` and `k8s-manifests/`).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Copies a directory tree (files and directories; symlinks are copied as links).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create target dir");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).expect("read link"), &dest).expect("symlink");
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy file");
        }
    }
}

/// Signals a process this harness started (`kill(2)`, no subprocess); a process that has
/// already gone is not an error.
pub fn signal(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return };
    let _ = rustix::process::kill_process(pid, signal);
}

pub use rustix::process::Signal;

/// A child process stopped on drop (SIGTERM, then SIGKILL after 5 s).
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        signal(self.0.id(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

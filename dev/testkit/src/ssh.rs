//! A private OpenSSH server on a free loopback port, for git over ssh with a deploy key:
//! its own host key, an authorized deploy key, and a known_hosts file that pins the host key.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, run, ChildGuard};

pub struct TestSshd {
    pub port: u16,
    dir: tempfile::TempDir,
    _child: ChildGuard,
}

fn keygen(path: &std::path::Path) {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "conveyor-test", "-f"]).arg(path));
}

impl TestSshd {
    /// Starts sshd accepting `root` with the generated deploy key only.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("deploy_key"));
        keygen(&d.join("other_key"));
        std::fs::copy(d.join("deploy_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // Privilege separation directory required by Debian's sshd.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (run as root)");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\nAllowUsers root\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/sbin/sshd not found: run dev/setup (apt install openssh-server)");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut parts = host_pub.split_whitespace();
        let (kind, key) = (parts.next().expect("key type"), parts.next().expect("key"));
        std::fs::write(d.join("known_hosts"), format!("[127.0.0.1]:{port} {kind} {key}\n")).expect("known_hosts");
        let other_pub = std::fs::read_to_string(d.join("other_key.pub")).expect("other key");
        let other = other_pub.split_whitespace().nth(1).expect("key");
        std::fs::write(d.join("known_hosts_wrong"), format!("[127.0.0.1]:{port} {kind} {other}\n")).expect("known_hosts_wrong");
        let this = Self { port, dir, _child: ChildGuard(child) };
        crate::wait_until("sshd to listen", Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        this
    }

    /// `ssh://root@127.0.0.1:<port><abs path>`.
    pub fn url_for(&self, bare_path: &std::path::Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, bare_path.display())
    }
    /// The authorized deploy key (private).
    pub fn deploy_key(&self) -> PathBuf {
        self.dir.path().join("deploy_key")
    }
    /// A key the server does not accept.
    pub fn unauthorized_key(&self) -> PathBuf {
        self.dir.path().join("other_key")
    }
    /// known_hosts pinning the server's real host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }
    /// known_hosts with a different key for this host (a MITM, or a rebuilt server).
    pub fn wrong_known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts_wrong")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

//! Real git repositories for tests: bare remotes on disk (with hooks) and work clones driven by
//! the git CLI, exactly as a user would push.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::run;

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.test")
        .env("GIT_COMMITTER_NAME", "Test Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.test")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    c
}

/// A bare repository (a "remote") on disk.
pub struct BareRepo {
    pub path: PathBuf,
}

impl BareRepo {
    pub fn create(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        std::fs::create_dir_all(&path).expect("create bare repo dir");
        run(git(&path).args(["init", "--bare", "-q", "-b", "main"]));
        Self { path }
    }

    pub fn url(&self) -> String {
        self.path.display().to_string()
    }

    /// Installs a hook script (e.g. `ci-service/hooks/post-receive`), executable.
    pub fn install_hook(&self, name: &str, script: &Path) {
        let dest = self.path.join("hooks").join(name);
        std::fs::copy(script, &dest).unwrap_or_else(|e| panic!("install hook {}: {e}", script.display()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
    }

    pub fn set_config(&self, key: &str, value: &str) {
        run(git(&self.path).args(["config", key, value]));
    }

    /// The commit a branch points at, if it exists.
    pub fn head(&self, branch: &str) -> Option<String> {
        let out = git(&self.path).args(["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}")]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A file's content at a branch.
    pub fn show(&self, branch: &str, path: &str) -> String {
        run(git(&self.path).args(["show", &format!("{branch}:{path}")]))
    }

    /// Full commit message of a commit.
    pub fn message(&self, rev: &str) -> String {
        run(git(&self.path).args(["log", "-1", "--format=%B", rev]))
    }

    /// Number of commits on a branch.
    pub fn count(&self, branch: &str) -> usize {
        run(git(&self.path).args(["rev-list", "--count", branch])).trim().parse().expect("rev-list count")
    }

    /// Every value of the trailer `key` (e.g. `Conveyor-Event-Id`) in the branch's commit
    /// messages, newest commit first. Read with git's trailer rules (`conveyor_proto::trailers`), so a body line that merely
    /// looks like a trailer does not count.
    pub fn trailer_values(&self, branch: &str, key: &str) -> Vec<String> {
        run(git(&self.path).args(["log", "--format=%B%x00", branch]))
            .split('\0')
            .flat_map(|message| conveyor_proto::trailers::values(message.trim_start_matches('\n'), key))
            .collect()
    }

    /// `git log --oneline` of a branch.
    pub fn log_oneline(&self, branch: &str) -> String {
        run(git(&self.path).args(["log", "--oneline", branch]))
    }
}

/// A developer's clone of a bare repository.
pub struct WorkClone {
    pub path: PathBuf,
}

impl WorkClone {
    /// Initialises a work tree with `origin` pointing at the bare repo, branch `main`.
    pub fn init(path: impl Into<PathBuf>, origin: &BareRepo) -> Self {
        let path = path.into();
        std::fs::create_dir_all(&path).expect("create work dir");
        run(git(&path).args(["init", "-q", "-b", "main"]));
        run(git(&path).args(["remote", "add", "origin", &origin.url()]));
        Self { path }
    }

    /// Clones the bare repo (its `main`).
    pub fn clone_of(path: impl Into<PathBuf>, origin: &BareRepo) -> Self {
        let path = path.into();
        run(Command::new("git").args(["clone", "-q", "-b", "main", &origin.url()]).arg(&path));
        Self { path }
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().expect("a file has a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write file");
    }

    /// `git add -A && git commit`; returns the new commit id.
    pub fn commit_all(&self, message: &str) -> String {
        run(git(&self.path).args(["add", "-A"]));
        run(git(&self.path).args(["commit", "-q", "-m", message]));
        run(git(&self.path).args(["rev-parse", "HEAD"])).trim().to_string()
    }

    /// `git pull --rebase` from origin main.
    pub fn pull(&self) {
        run(git(&self.path).args(["pull", "-q", "--rebase", "origin", "main"]));
    }

    /// `git push origin main`, rebasing on what others pushed meanwhile, up to `tries` times, as
    /// a person would: a little longer between tries each time (10 ms, 20 ms … at most 200 ms),
    /// so a writer that commits every few milliseconds does not win every race.
    pub fn push_rebasing(&self, tries: usize) {
        let mut refused = String::new();
        for i in 0..tries {
            let out = git(&self.path).args(["push", "-q", "origin", "main"]).output().expect("git push");
            if out.status.success() {
                return;
            }
            refused = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis((10 * (i as u64 + 1)).min(200)));
            run(git(&self.path).args(["pull", "-q", "--rebase", "origin", "main"]));
        }
        panic!("push still rejected after {tries} tries; the last refusal:\n{refused}");
    }

    /// `git push origin main`; returns git's output (hooks print to stderr).
    pub fn push(&self) -> String {
        let out = git(&self.path).args(["push", "origin", "main"]).output().expect("git push");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "git push failed:\n{text}");
        text
    }

    /// Runs `git <args>` in the work tree; returns its standard output.
    pub fn git(&self, args: &[&str]) -> String {
        run(git(&self.path).args(args))
    }

    /// Tags HEAD with `tag` and pushes the tag; returns git's output.
    pub fn push_tag(&self, tag: &str) -> String {
        run(git(&self.path).args(["tag", tag]));
        let out = git(&self.path).args(["push", "origin", &format!("refs/tags/{tag}")]).output().expect("git push");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "git push of tag {tag} failed:\n{text}");
        text
    }
}

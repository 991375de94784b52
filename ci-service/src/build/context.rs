//! Build context: the checked-out tree as a tar stream for the Docker Engine, without `.git` and
//! without what `.dockerignore` excludes (Docker's rules: `*`/`?` stay within a path segment,
//! `**` spans segments, a pattern excludes everything under a matching directory, later `!`
//! lines re-include, and the Dockerfile and `.dockerignore` are always sent).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use bytes::Bytes;
use globset::{Glob, GlobBuilder, GlobMatcher};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("invalid .dockerignore pattern {pattern:?}: {source}")]
    Pattern { pattern: String, source: globset::Error },
    #[error("cannot read the build context at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the Dockerfile {0:?} is not in the repository")]
    NoDockerfile(String),
    #[error("{what} {path:?} is {kind}, not a regular file of the repository: refused before the build (it is not read)")]
    NotRegular { what: &'static str, path: String, kind: &'static str },
    #[error(".dockerignore is larger than {max} bytes")]
    IgnoreTooLarge { max: usize },
}

/// A `.dockerignore` is read up to this many bytes; a larger one is refused.
pub const MAX_IGNORE_BYTES: usize = 1 << 20;

/// What a repository path is, without following a link: `None` if it does not exist.
fn kind(path: &Path) -> Result<Option<&'static str>, ContextError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContextError::Io { path: path.to_path_buf(), source }),
        Ok(m) if m.file_type().is_symlink() => Ok(Some("a symbolic link")),
        Ok(m) if m.is_dir() => Ok(Some("a directory")),
        Ok(m) if !m.is_file() => Ok(Some("a device, socket or pipe")),
        Ok(_) => Ok(Some("file")),
    }
}

/// Reads the `.dockerignore` of `root`: a regular file (a link is refused unread), at most
/// [`MAX_IGNORE_BYTES`].
fn read_ignore(root: &Path) -> Result<DockerIgnore, ContextError> {
    use std::io::Read;
    let path = root.join(".dockerignore");
    match kind(&path)? {
        None => return Ok(DockerIgnore { rules: Vec::new() }),
        Some("file") => {}
        Some(kind) => return Err(ContextError::NotRegular { what: "the .dockerignore", path: ".dockerignore".into(), kind }),
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_IGNORE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|source| ContextError::Io { path: path.clone(), source })?;
    if bytes.len() > MAX_IGNORE_BYTES {
        return Err(ContextError::IgnoreTooLarge { max: MAX_IGNORE_BYTES });
    }
    DockerIgnore::parse(&String::from_utf8_lossy(&bytes))
}

struct Rule {
    matcher: GlobMatcher,
    exclude: bool,
}

/// Parsed `.dockerignore`.
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<Self, ContextError> {
        let mut rules = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclude, pattern) = match line.strip_prefix('!') {
                Some(p) => (false, p.trim()),
                None => (true, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob: Glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| ContextError::Pattern { pattern: pattern.clone(), source })?;
            rules.push(Rule { matcher: glob.compile_matcher(), exclude });
        }
        Ok(Self { rules })
    }

    /// Whether a path (relative, '/'-separated) is left out of the context. A rule matches a
    /// path when it matches the path or one of its parent directories; the last matching rule wins.
    pub fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if matches_or_parent(&rule.matcher, rel) {
                excluded = rule.exclude;
            }
        }
        excluded
    }

    /// Whether any `!` rule could re-include something under `dir`: then the walk must descend
    /// into an excluded directory instead of pruning it.
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| !r.exclude)
    }
}

fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn matches_or_parent(m: &GlobMatcher, rel: &str) -> bool {
    if m.is_match(rel) {
        return true;
    }
    let mut cur = rel;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        if m.is_match(parent) {
            return true;
        }
        cur = parent;
    }
    false
}

/// A `Write` that forwards chunks to an async receiver, so a blocking tar writer can stream
/// into an HTTP body without holding the whole context in memory.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the docker build request was dropped"))
    }
}

/// Lists the files and directories of the context, in a stable order.
pub fn context_entries(root: &Path, dockerfile: &str) -> Result<Vec<(PathBuf, String)>, ContextError> {
    let ignore = read_ignore(root)?;
    let dockerfile = clean(dockerfile);
    // The Dockerfile and every directory on the way to it must be the repository's own: no
    // link (it could lead out of the checkout), nothing but a regular file at the end.
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = dockerfile.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match kind(&at)? {
            None => return Err(ContextError::NoDockerfile(dockerfile)),
            Some("file") if last => {}
            Some("a directory") if !last => {}
            Some(kind) => return Err(ContextError::NotRegular { what: "the Dockerfile", path: parts[..=i].join("/"), kind }),
        }
    }
    let always = [dockerfile.as_str(), ".dockerignore"];
    let mut entries = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).min_depth(1).follow_links(false).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| ContextError::Io {
            path: e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf()),
            source: e.into_io_error().unwrap_or_else(|| io::Error::other("walk error")),
        })?;
        let rel = entry.path().strip_prefix(root).expect("walkdir yields paths under its root").to_string_lossy().replace('\\', "/");
        if rel == ".git" {
            walk.skip_current_dir();
            continue;
        }
        if ignore.excludes(&rel) && !always.contains(&rel.as_str()) {
            if entry.file_type().is_dir() && !ignore.has_exceptions() {
                walk.skip_current_dir();
            }
            continue;
        }
        entries.push((entry.path().to_path_buf(), rel));
    }
    Ok(entries)
}

/// Streams the context of `root` as a tar archive into `tx`. Deterministic headers (fixed
/// mtime, uid 0) so an unchanged tree hits the Docker layer cache. On failure an error item is
/// sent after the partial data, so the HTTP body aborts: a tar cut short at an entry boundary
/// would otherwise read as a complete (smaller) context.
pub fn stream_context(root: &Path, dockerfile: &str, tx: mpsc::Sender<Result<Bytes, io::Error>>) -> Result<u64, ContextError> {
    let result = write_context(root, dockerfile, tx.clone());
    if let Err(e) = &result {
        if !e.is_receiver_gone() {
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    }
    result
}

impl ContextError {
    /// The build request went away first (the engine failed or the build was cancelled): the
    /// engine's error, not this one, is the cause.
    pub fn is_receiver_gone(&self) -> bool {
        matches!(self, ContextError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

fn write_context(root: &Path, dockerfile: &str, tx: mpsc::Sender<Result<Bytes, io::Error>>) -> Result<u64, ContextError> {
    let entries = context_entries(root, dockerfile)?;
    let mut writer = ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) };
    let mut tar = tar::Builder::new(&mut writer);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let count = entries.len() as u64;
    for (path, rel) in entries {
        tar.append_path_with_name(&path, &rel).map_err(|source| ContextError::Io { path: path.clone(), source })?;
    }
    tar.finish().map_err(|source| ContextError::Io { path: root.to_path_buf(), source })?;
    drop(tar);
    writer.flush().map_err(|source| ContextError::Io { path: root.to_path_buf(), source })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linked_or_special_dockerignore_or_dockerfile_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        let secret = root.join("..").join("host-secret.txt");
        std::fs::write(&secret, "top secret host file\n").unwrap();
        std::os::unix::fs::symlink(&secret, root.join(".dockerignore")).unwrap();
        let err = context_entries(root, "Dockerfile").unwrap_err().to_string();
        assert!(err.contains(".dockerignore") && err.contains("symbolic link") && !err.contains("top secret"), "{err}");
        std::fs::remove_file(root.join(".dockerignore")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join(".dockerignore")).unwrap();
        assert!(context_entries(root, "Dockerfile").unwrap_err().to_string().contains("symbolic link"));
        std::fs::remove_file(root.join(".dockerignore")).unwrap();

        std::fs::create_dir(root.join("docker")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("docker/Dockerfile")).unwrap();
        let err = context_entries(root, "docker/Dockerfile").unwrap_err().to_string();
        assert!(err.contains("the Dockerfile \"docker/Dockerfile\" is a symbolic link"), "{err}");
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        let err = context_entries(root, "etc/passwd").unwrap_err().to_string();
        assert!(err.contains("the Dockerfile \"etc\" is a symbolic link"), "{err}");
        assert!(matches!(context_entries(root, "nope/Dockerfile"), Err(ContextError::NoDockerfile(_))));
        assert!(context_entries(root, "Dockerfile").is_ok());
    }

    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn dockerignore_follows_docker_rules() {
        let i = ig("# comment\n*.pyc\n/build\n**/__pycache__\nsecrets/*\n!secrets/public.txt\n");
        assert!(i.excludes("x.pyc"));
        assert!(!i.excludes("src/x.pyc"), "`*` does not cross '/'");
        assert!(i.excludes("build/out/a.o"), "a matching directory excludes its contents");
        assert!(i.excludes("a/b/__pycache__/m.cpython.pyc"));
        assert!(i.excludes("secrets/key.pem"));
        assert!(!i.excludes("secrets/public.txt"), "a later ! rule re-includes");
        assert!(!i.excludes("app.py"));
    }

    #[test]
    fn context_leaves_out_git_and_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["Dockerfile", "app.py", ".git/HEAD", "tests/test_app.py", "venv/lib/x.py", ".dockerignore"] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        std::fs::write(root.join(".dockerignore"), "venv\nDockerfile\n.dockerignore\n").unwrap();
        let names: Vec<String> = context_entries(root, "Dockerfile").unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(names, vec![".dockerignore", "Dockerfile", "app.py", "tests", "tests/test_app.py"]);
    }

    #[test]
    fn a_context_that_cannot_be_written_aborts_the_body_instead_of_ending_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)\n").unwrap();
        // tar cannot archive a socket: the writer fails after the first entries.
        let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("z.sock")).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let root = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || stream_context(&root, "Dockerfile", tx));
        let mut items = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            items.push(item);
        }
        assert!(writer.join().unwrap().is_err());
        assert!(items.last().is_some_and(|i| i.is_err()), "the body must end with an error, not a clean EOF");
    }

    #[test]
    fn missing_dockerfile_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = context_entries(dir.path(), "Dockerfile").unwrap_err();
        assert!(err.to_string().contains("Dockerfile"), "{err}");
    }
}

//! Checkout: fetches the pushed ref from the source repository with git2 (with the repository's
//! deploy key or token when it is private) and checks out exactly the pushed commit into a
//! fresh work directory. A tag object (an annotated tag, or a tag of a tag) is peeled to the
//! commit it names. Blocking; callers use `spawn_blocking`.

use std::path::Path;

use conveyor_git::{GitAuth, Seen, TransportError};
use git2::{build::CheckoutBuilder, FetchOptions, Oid, Repository};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot fetch {git_ref} from {repo_url}: {source}")]
    Fetch { repo_url: String, git_ref: String, source: git2::Error },
    #[error("cannot fetch {git_ref}: {0}", git_ref = .1)]
    Transport(TransportError, String),
    #[error("commit {commit} is not reachable from {git_ref} in {repo_url} (was the branch force-pushed?)")]
    CommitNotFound { repo_url: String, git_ref: String, commit: String },
    #[error("git error during checkout: {0}")]
    Git(#[from] git2::Error),
}

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOut {
    /// The commit (the pushed id peeled, when it named a tag object).
    pub commit: String,
    /// The pushed id, when it was a tag object and not the commit itself.
    pub tag_object: Option<String>,
    pub message: String,
}

/// Checks out `commit` (a commit, or a tag object naming one, reachable from `git_ref` of
/// `repo_url`) into `dest`, which must not exist or be empty. `dest` then holds the work tree,
/// `.git` included.
pub fn checkout(repo_url: &str, git_ref: &str, commit: &str, auth: &GitAuth, dest: &Path) -> Result<CheckedOut, CheckoutError> {
    let repo = Repository::init(dest)?;
    let mut remote = repo.remote_anonymous(repo_url)?;
    let refspec = format!("+{git_ref}:refs/remotes/origin/build");
    let seen = Seen::default();
    let mut opts = FetchOptions::new();
    opts.download_tags(git2::AutotagOption::None);
    opts.remote_callbacks(conveyor_git::callbacks(repo_url, auth, &seen));
    remote.fetch(&[refspec.as_str()], Some(&mut opts), None).map_err(|source| {
        match conveyor_git::classify(repo_url, auth, &seen, &source) {
            Some(t) => CheckoutError::Transport(t, git_ref.to_string()),
            None => CheckoutError::Fetch { repo_url: repo_url.to_string(), git_ref: git_ref.to_string(), source },
        }
    })?;
    drop(opts);
    let not_found =
        || CheckoutError::CommitNotFound { repo_url: repo_url.to_string(), git_ref: git_ref.to_string(), commit: commit.to_string() };
    let oid = Oid::from_str(commit).map_err(|_| not_found())?;
    let object = repo.find_object(oid, None).map_err(|_| not_found())?;
    let target = object.peel_to_commit().map_err(|_| not_found())?;
    // The fetched ref must lead to that commit (it is the ref's head, or behind it).
    let head = repo.find_reference("refs/remotes/origin/build")?.peel_to_commit()?;
    if head.id() != target.id() && !repo.graph_descendant_of(head.id(), target.id())? {
        return Err(not_found());
    }
    repo.checkout_tree(target.as_object(), Some(CheckoutBuilder::new().force()))?;
    repo.set_head_detached(target.id())?;
    Ok(CheckedOut {
        commit: target.id().to_string(),
        tag_object: (target.id() != oid).then(|| oid.to_string()),
        message: target.message().unwrap_or_default().to_string(),
    })
}

//! Checkout: fetches the pushed ref from the source repository with git2 and checks out exactly
//! the pushed commit into a fresh work directory. Blocking; callers use `spawn_blocking`.

use std::path::Path;

use git2::{build::CheckoutBuilder, FetchOptions, Oid, Repository};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot fetch {git_ref} from {repo_url}: {source}")]
    Fetch { repo_url: String, git_ref: String, source: git2::Error },
    #[error("commit {commit} is not reachable from {git_ref} in {repo_url} (was the branch force-pushed?)")]
    CommitNotFound { repo_url: String, git_ref: String, commit: String },
    #[error("git error during checkout: {0}")]
    Git(#[from] git2::Error),
}

/// Checks out `commit` (reachable from `git_ref` of `repo_url`) into `dest`, which must not exist
/// or be empty. `dest` then holds the work tree, `.git` included; returns the commit message.
pub fn checkout(repo_url: &str, git_ref: &str, commit: &str, dest: &Path) -> Result<String, CheckoutError> {
    let repo = Repository::init(dest)?;
    let mut remote = repo.remote_anonymous(repo_url)?;
    let refspec = format!("+{git_ref}:refs/remotes/origin/build");
    let mut opts = FetchOptions::new();
    opts.download_tags(git2::AutotagOption::None);
    remote.fetch(&[refspec.as_str()], Some(&mut opts), None).map_err(|source| CheckoutError::Fetch {
        repo_url: repo_url.to_string(),
        git_ref: git_ref.to_string(),
        source,
    })?;
    let not_found =
        || CheckoutError::CommitNotFound { repo_url: repo_url.to_string(), git_ref: git_ref.to_string(), commit: commit.to_string() };
    let oid = Oid::from_str(commit).map_err(|_| not_found())?;
    let target = repo.find_commit(oid).map_err(|_| not_found())?;
    repo.checkout_tree(target.as_object(), Some(CheckoutBuilder::new().force()))?;
    repo.set_head_detached(oid)?;
    let message = target.message().unwrap_or_default().to_string();
    Ok(message)
}

//! What is deployed, per app and environment, kept in memory: read from the whole branch when
//! the clone opens, then extended with just the commits each fetch brings (a branch whose
//! history was rewritten is read again from scratch). The stale-build guard and the history API
//! read it instead of walking commits on every push attempt and every request.

use std::collections::{HashMap, VecDeque};

use git2::{Oid, Repository, Sort};
use time::OffsetDateTime;

use conveyor_api::cd::Deployment;
use conveyor_proto::trailers::{self, DeployRecord};

/// Deployments kept per app (newest first); older ones are still in the repository's history.
const KEEP_PER_APP: usize = 5000;

#[derive(Debug, Default)]
pub struct DeployIndex {
    /// The commit the index is complete up to.
    head: Option<Oid>,
    by_app: HashMap<String, VecDeque<Deployment>>,
    /// When the build deployed now started, per (app, environment): from the newest block that
    /// records a build start.
    started: HashMap<(String, String), OffsetDateTime>,
    /// Commits read since the index was made or last read again.
    commits_read: usize,
}

impl DeployIndex {
    /// Brings the index up to `head`: reads only the commits since the last refresh, or the
    /// whole history when `head` does not descend from it.
    pub fn refresh(&mut self, repo: &Repository, head: Oid) -> Result<(), git2::Error> {
        if self.head == Some(head) {
            return Ok(());
        }
        let mut walk = repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        walk.push(head)?;
        match self.head {
            Some(old) if repo.graph_descendant_of(head, old)? => walk.hide(old)?,
            Some(old) => {
                tracing::warn!(%old, new = %head, "manifest branch history was rewritten: reading the deploy index again");
                *self = Self::default();
            }
            None => {}
        }
        let before = self.commits_read;
        // Oldest first: a later commit, and a later block within one commit, overrides.
        for oid in walk {
            let commit = repo.find_commit(oid?)?;
            self.commits_read += 1;
            let when = OffsetDateTime::from_unix_timestamp(commit.time().seconds()).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let id = commit.id().to_string();
            for record in trailers::parse(commit.message().unwrap_or_default()) {
                self.add(deployment(record, &id, when));
            }
        }
        self.head = Some(head);
        tracing::debug!(%head, read = self.commits_read - before, total = self.commits_read, "deploy index refreshed");
        Ok(())
    }

    fn add(&mut self, d: Deployment) {
        if let Some(started) = d.build_started_at {
            self.started.insert((d.app.clone(), d.environment.clone()), started);
        }
        let list = self.by_app.entry(d.app.clone()).or_default();
        list.push_front(d);
        list.truncate(KEEP_PER_APP);
    }

    /// When the build deployed to `env` of `app` started, if any was.
    pub fn build_started(&self, app: &str, env: &str) -> Option<OffsetDateTime> {
        self.started.get(&(app.to_string(), env.to_string())).copied()
    }

    /// The deployments of `app` (in `env`, or every environment), newest first.
    pub fn deployments(&self, app: &str, env: Option<&str>, limit: usize) -> Vec<Deployment> {
        self.by_app
            .get(app)
            .map(|list| list.iter().filter(|d| env.is_none_or(|e| d.environment == e)).take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Every app with a deployment, sorted.
    pub fn apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.by_app.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// How many commits the index has read since it was made (or last read again).
    #[cfg(test)]
    pub fn commits_read(&self) -> usize {
        self.commits_read
    }
}

/// The deployment one trailer block of manifest commit `commit` (made at `when`) records.
fn deployment(record: DeployRecord, commit: &str, when: OffsetDateTime) -> Deployment {
    Deployment {
        tag: record.tag().to_string(),
        kind: record.kind().to_string(),
        of_event: record.intent.as_ref().map(|i| i.of_event.clone()),
        requested_by: record.intent.as_ref().map(|i| i.requested_by.clone()),
        app: record.app,
        environment: record.environment,
        image: record.image,
        digest: record.digest,
        source_commit: record.source_commit,
        event_id: record.event_id,
        sequence: None,
        build_id: record.build_id,
        trace_id: record.trace_id,
        manifest_commit: commit.to_string(),
        deployed_at: when,
        build_started_at: record.build_started_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(repo: &Repository, parent: Option<Oid>, message: &str) -> Oid {
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let parents: Vec<git2::Commit> = parent.map(|p| repo.find_commit(p).unwrap()).into_iter().collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(None, &sig, &sig, message, &tree, &refs).unwrap()
    }

    fn deploy(app: &str, env: &str, tag: &str, started: &str) -> String {
        format!(
            "deploy\n\n[skip ci]\n\nConveyor-App: {app}\nConveyor-Environment: {env}\nConveyor-Image: r/{app}:{tag}\n\
             Conveyor-Event-Id: {tag}\nConveyor-Build-Started-At: {started}\n"
        )
    }

    #[test]
    fn reads_only_new_commits_and_starts_over_on_a_rewritten_branch() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let c1 = commit(&repo, None, &deploy("web", "staging", "v1", "2026-11-23T10:00:00Z"));
        let c2 = commit(&repo, Some(c1), "human edit");
        let mut index = DeployIndex::default();
        index.refresh(&repo, c2).unwrap();
        assert_eq!(index.commits_read(), 2);
        let c3 = commit(&repo, Some(c2), &deploy("web", "staging", "v2", "2026-11-23T11:00:00Z"));
        index.refresh(&repo, c3).unwrap();
        assert_eq!(index.commits_read(), 3, "only the new commit is read");
        let tags: Vec<String> = index.deployments("web", None, 10).into_iter().map(|d| d.tag).collect();
        assert_eq!(tags, ["v2", "v1"]);
        assert_eq!(index.build_started("web", "staging").unwrap().hour(), 11);
        assert!(index.build_started("web", "production").is_none());
        assert!(index.deployments("web", Some("production"), 10).is_empty());

        // A force-pushed branch without c3: v2 is no longer deployed.
        let other = commit(&repo, Some(c2), "another human edit");
        index.refresh(&repo, other).unwrap();
        assert_eq!(index.commits_read(), 3, "c1, c2 and the new commit, read again from scratch");
        assert_eq!(index.build_started("web", "staging").unwrap().hour(), 10);
        assert_eq!(index.deployments("web", None, 10).len(), 1);
    }

    #[test]
    fn within_a_batch_commit_the_last_block_of_an_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let both = format!(
            "{}{}",
            deploy("web", "staging", "v1", "2026-11-23T10:00:00Z"),
            deploy("web", "staging", "v2", "2026-11-23T09:00:00Z").split("[skip ci]\n\n").nth(1).unwrap()
        );
        let c = commit(&repo, None, &both);
        let mut index = DeployIndex::default();
        index.refresh(&repo, c).unwrap();
        assert_eq!(index.build_started("web", "staging").unwrap().hour(), 9);
        assert_eq!(index.deployments("web", None, 1)[0].tag, "v2");
    }
}

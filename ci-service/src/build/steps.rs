//! The steps of one build, in two halves: `prepare` (checkout, pipeline file, build, test,
//! smoke; cancellable) and `release` (push and publish; never cancelled once the push started).
//! `mod.rs` runs them inside the build's record, log and spans.

use super::*;

/// What the cancellable half hands to the release half.
pub(super) struct Prepared {
    pub(super) repository: String,
    pub(super) tags: Vec<String>,
    pub(super) push_timeout: Duration,
    /// The built commit (a pushed tag object peeled).
    pub(super) commit: String,
}

pub(super) async fn prepare(ctx: &Ctx<'_>, id: u64, push: &PushRequest) -> Result<Prepared, Stop> {
    let state = ctx.state;
    let cfg = &state.config;
    // Removed when the build ends, however it ends.
    let work = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir_in(cfg.workdir.join("builds"))
        .map_err(|e| Stop::Failed(format!("cannot make the build's work directory under {}: {e}", cfg.workdir.display())))?;
    let dir = work.path().to_path_buf();

    // The repository's deploy key or token, when it is private (the secrets file says).
    let identity = push.authenticated_repo.as_deref().unwrap_or(&push.repo_url);
    let auth = state.secrets.fetch_auth(&[identity, push.repo_url.as_str()]).map_err(|e| Stop::Failed(format!("checkout: {e}")))?;
    let checked = ctx
        .step("checkout", async {
            let (url, git_ref, commit, dest) = (push.repo_url.clone(), push.git_ref.clone(), push.commit.clone(), dir.clone());
            tokio::task::spawn_blocking(move || checkout::checkout(&url, &git_ref, &commit, &auth, &dest))
                .await
                .map_err(|e| format!("checkout task failed: {e}"))?
                .map_err(|e| e.to_string())
        })
        .await?;
    let commit = checked.commit.clone();
    if let Some(object) = &checked.tag_object {
        ctx.log.line(&format!("[conveyor] {} is the tag object {object}; building the commit it names, {commit}", push.git_ref));
        ctx.update(|r| {
            r.push.commit = commit.clone();
            r.push.tag_object = Some(object.clone());
        })
        .await;
    }
    let message = checked.message;
    if skips_ci(&message) {
        return Err(Stop::Skipped("the commit message asks to skip CI".into()));
    }
    // A hostile repository's file: parsed with bounds, off the async runtime.
    let pipeline = {
        let (dir, app, cfg) = (dir.clone(), push.app.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || pipeline::load(&dir, &app, &cfg))
            .await
            .map_err(|e| Stop::Failed(format!("reading {} failed: {e}", pipeline::FILE_NAME)))?
            .map_err(|e| Stop::Failed(e.to_string()))?
    };
    // The image must be one its repository may push (the webhook secrets file grants them).
    let grant = state.secrets.grant(&[identity, push.repo_url.as_str()], &push.app).map_err(Stop::Failed)?;
    if !grant.images.contains(&pipeline.image_name) {
        return Err(Stop::Failed(format!(
            "{}: image {:?} is not granted to repository {} (it may push {:?}; list more under `images:` in its entry of the webhook secrets file)",
            pipeline::FILE_NAME,
            pipeline.image_name,
            grant.repository,
            grant.images
        )));
    }
    if pipeline.from_file {
        ctx.log.line(&format!("[conveyor] pipeline from {}", pipeline::FILE_NAME));
    }
    if push.ref_kind == RefKind::Branch && !pipeline.builds_branch(&push.ref_name) {
        return Err(Stop::Skipped(format!("branch {} is not among the branches of {}", push.ref_name, pipeline::FILE_NAME)));
    }
    // A pull request builds when the branch it merges into builds.
    let pr = push.pull_request.as_ref();
    if let Some(pr) = pr.filter(|pr| !pipeline.builds_branch(&pr.base_ref)) {
        return Err(Stop::Skipped(format!("base branch {} is not among the branches of {}", pr.base_ref, pipeline::FILE_NAME)));
    }
    // A fork's code gets none of the service's build args (they may hold credentials).
    let mut pipeline = pipeline;
    if pr.is_some_and(|pr| pr.from_fork) {
        pipeline.build_args.retain(|arg| !cfg.build_args.contains(arg) || cfg.fork_build_args.contains(&arg.0));
        ctx.log.line("[conveyor] pull request from a fork: built without the service's build args and never pushed");
    }

    // A context that is a symlink out of the checkout is refused.
    let context_dir = std::fs::canonicalize(dir.join(&pipeline.context))
        .ok()
        .filter(|c| std::fs::canonicalize(&dir).is_ok_and(|root| c.starts_with(root)) && c.is_dir())
        .ok_or_else(|| Stop::Failed(format!("build context {:?} is not a directory inside the repository", pipeline.context)))?;
    // A pull request's image stays on this engine under a name no registry or deploy uses.
    let repository = match pr {
        Some(_) => format!("{}/{}", housekeeping::PR_REPOSITORY, pipeline.image_name),
        None => format!("{}/{}", cfg.registry.trim_end_matches('/'), pipeline.image_name),
    };
    conveyor_proto::validate::image_repository(&repository).map_err(|e| Stop::Failed(e.to_string()))?;
    let mut tags = Vec::new();
    match pr {
        Some(pr) => tags.push(format!("pr-{}-{}", pr.number, image_tag(&commit))),
        None if push.ref_kind == RefKind::Tag => tags.extend([push.ref_name.clone(), image_tag(&commit)]),
        None => tags.push(image_tag(&commit)),
    }
    let image = format!("{repository}:{}", tags[0]);
    ctx.update(|r| {
        r.repository = Some(repository.clone());
        r.tags = tags.clone();
    })
    .await;

    let build_id = id.to_string();
    let labels = HashMap::from([
        ("org.opencontainers.image.revision".to_string(), commit.clone()),
        ("org.opencontainers.image.source".to_string(), push.repo_url.clone()),
        ("org.opencontainers.image.created".to_string(), rfc3339(OffsetDateTime::now_utc())),
        ("io.conveyor.build-id".to_string(), build_id.clone()),
        (housekeeping::APP_LABEL.to_string(), push.app.clone()),
    ]);
    ctx.step("build", async {
        let span = tracing::Span::current();
        span.record("container.image.name", repository.as_str());
        span.record("container.image.tags", tags.join(",").as_str());
        let spec = docker::BuildSpec {
            context_dir: context_dir.clone(),
            dockerfile: &pipeline.dockerfile,
            image: &image,
            build_args: &pipeline.build_args,
            labels: labels.clone(),
        };
        tokio::time::timeout(pipeline.build_timeout, docker::build_image(&state.docker, spec, &ctx.log))
            .await
            .unwrap_or(Err(docker::DockerError::Timeout { step: "build", secs: pipeline.build_timeout.as_secs() }))?;
        for extra in &tags[1..] {
            docker::tag_image(&state.docker, &repository, &tags[0], extra).await?;
        }
        Ok::<_, docker::DockerError>(())
    })
    .await?;

    let container_labels =
        HashMap::from([("io.conveyor.build-id".to_string(), build_id), ("io.conveyor.replica".to_string(), state.replica.clone())]);
    ctx.step(
        "test",
        docker::run_tests(&state.docker, &image, &pipeline.test_command, container_labels.clone(), pipeline.test_timeout, &ctx.log),
    )
    .await?;
    if let Some(spec) = &pipeline.smoke {
        ctx.step(
            "smoke",
            smoke::run(&state.docker, &image, &state.config.probe_image, spec, container_labels, pipeline.smoke_timeout, &ctx.log),
        )
        .await?;
    }
    Ok(Prepared { repository, tags, push_timeout: pipeline.push_timeout, commit })
}

/// Push and publish: not cancellable; each retried with a bounded backoff.
pub(super) async fn release(ctx: &Ctx<'_>, push: &PushRequest, p: Prepared) -> Result<(), Stop> {
    let state = ctx.state;
    let digest = ctx
        .step("push", async {
            let span = tracing::Span::current();
            span.record("container.image.name", p.repository.as_str());
            span.record("container.image.tags", p.tags.join(",").as_str());
            let mut digest = String::new();
            for tag in &p.tags {
                digest = ctx
                    .retry("push", || async {
                        tokio::time::timeout(
                            p.push_timeout,
                            docker::push_image(&state.docker, &p.repository, tag, state.registry_auth.clone(), &ctx.log),
                        )
                        .await
                        .unwrap_or(Err(docker::DockerError::Timeout { step: "push", secs: p.push_timeout.as_secs() }))
                    })
                    .await?;
            }
            span.record("oci.manifest.digest", digest.as_str());
            Ok::<_, docker::DockerError>(digest)
        })
        .await?;
    ctx.update(|r| r.digest = Some(digest.clone())).await;
    ctx.log.line(&format!("[conveyor] pushed {}:{}@{digest}", p.repository, p.tags[0]));

    let (id, started_at) = {
        let rec = ctx.rec.lock().await;
        (rec.id, rec.started_at.unwrap_or_else(OffsetDateTime::now_utc))
    };
    let mut event = ImageBuilt {
        version: EVENT_VERSION,
        // Stable across retries of this build, so a re-publish is de-duplicated downstream.
        event_id: format!("ci-{id}-{}", digest.strip_prefix("sha256:").unwrap_or(&digest).chars().take(12).collect::<String>()),
        app: push.app.clone(),
        image: ImageRef { repository: p.repository.clone(), tag: p.tags[0].clone(), digest },
        source: SourceRef { repo_url: push.repo_url.clone(), commit: p.commit.clone(), branch: push.ref_name.clone() },
        build_id: id.to_string(),
        build_started_at: started_at,
        built_at: OffsetDateTime::now_utc(),
        traceparent: None,
        deploy: None,
    };
    let sequence = ctx
        .step("publish", async {
            // cd-service continues the trace from here (the header, and the field as a fallback).
            let span = tracing::Span::current();
            event.traceparent = trace_context::traceparent(&span);
            span.record("messaging.system", "nats");
            span.record("messaging.operation.type", "publish");
            span.record("messaging.destination.name", conveyor_proto::subject_for_app(&event.app).as_str());
            span.record("messaging.message.id", event.event_id.as_str());
            ctx.retry("publish", || state.publisher.publish(&event)).await
        })
        .await?;
    ctx.update(|r| {
        r.event_id = Some(event.event_id.clone());
        r.event_sequence = Some(sequence);
    })
    .await;
    ctx.log.line(&format!("[conveyor] published event {} (stream sequence {sequence})", event.event_id));
    Ok(())
}

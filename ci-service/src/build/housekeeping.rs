//! Local image housekeeping: the images builds leave on the Docker Engine. A pull request's
//! image is removed when its build ends (it is never pushed). Of an app's other images the
//! newest `--keep-images` stay (layer cache, `retry`); older ones are removed once their build
//! has ended, never one a build still uses (queued, running, or holding a container). Only
//! images this deployment built are touched (labelled with their app, and named by their build's
//! record), each by its own tags. After a
//! sweep the engine's image disk use is read for the metrics.

use std::{collections::HashMap, sync::Arc};

use bollard::{
    query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder},
    Docker,
};

use crate::AppState;

/// Every image a build makes carries its app under this label.
pub const APP_LABEL: &str = "io.conveyor.app";
/// Pull requests' images are named `conveyor-pr/<image>:pr-<n>-<sha>`: no registry, nothing
/// deploys them.
pub const PR_REPOSITORY: &str = "conveyor-pr";

/// Removes the given tags of one image (the image goes with its last tag); whether any went.
pub async fn remove_tags(docker: &Docker, names: Vec<String>) -> bool {
    let mut gone = false;
    for name in names {
        let options = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
        match docker.remove_image(&name, Some(options), None).await {
            Ok(_) => gone = true,
            Err(e) => tracing::debug!(image = %name, error = %e, "image not removed"),
        }
    }
    gone
}

/// Removes the app's images beyond the newest `--keep-images` whose builds ended, and its
/// pull-request images whose builds ended.
pub async fn sweep(state: Arc<AppState>, app: String) {
    // Not while a build runs here: removing an image also removes its untagged parent layers,
    // which the classic builder may be using as cache for a running build at that moment. The
    // last build to end sweeps.
    if !state.running.is_empty() {
        return;
    }
    let label = format!("{APP_LABEL}={app}");
    let options = ListImagesOptionsBuilder::default().filters(&HashMap::from([("label", vec![label.as_str()])])).build();
    let mut images = match state.docker.list_images(Some(options)).await {
        Ok(images) => images,
        Err(e) => return tracing::warn!(app, error = %e, "cannot list the app's images for housekeeping"),
    };
    // Ours: the build record (in this deployment's NATS) names exactly this image. An image of
    // another deployment on the same engine is neither counted nor touched.
    let build_of = |i: &bollard::models::ImageSummary| i.labels.get("io.conveyor.build-id").and_then(|b| b.parse::<u64>().ok());
    let mut ours = Vec::new();
    for image in images.drain(..) {
        let Some(id) = build_of(&image) else { continue };
        let Ok(Some(rec)) = state.records.get(id).await else { continue };
        let names: Vec<String> = rec.repository.iter().flat_map(|r| rec.tags.iter().map(move |t| format!("{r}:{t}"))).collect();
        if image.repo_tags.iter().any(|t| names.contains(t)) {
            ours.push((image, rec));
        }
    }
    // Newest first; the build number breaks ties (`created` has a one-second grain).
    ours.sort_by_key(|(i, rec)| std::cmp::Reverse((i.created, rec.id)));
    let mut kept = 0;
    let mut removed = 0u64;
    for (image, rec) in &ours {
        let is_pr = rec.push.pull_request.is_some();
        if !is_pr && kept < state.config.keep_images {
            kept += 1;
            continue;
        }
        // Never an image whose build has not ended (another replica may still test or push
        // it), nor one a container uses.
        if image.containers > 0 || !rec.state.is_finished() || state.running.get(rec.id).is_some() {
            continue;
        }
        let tags: Vec<String> = image.repo_tags.iter().filter(|t| *t != "<none>:<none>").cloned().collect();
        if remove_tags(&state.docker, tags).await {
            removed += 1;
            tracing::info!(app, build.id = rec.id, image = %image.repo_tags.join(","), "removed an old image from the engine");
        }
    }
    if removed > 0 {
        state.metrics.images_removed.inc_by(removed);
    }
    if let Some(bytes) = engine_image_bytes(&state.docker).await {
        state.metrics.engine_image_bytes.set(bytes);
    }
}

/// The engine's image disk use (`docker system df`'s image size: every layer once). Read from
/// `/system/df` in the API version the client negotiated; its shape differs between versions
/// (`LayersSize` up to 1.47, `ImageUsage.TotalSize` after), so it is read as plain JSON.
pub async fn engine_image_bytes(docker: &Docker) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .map_or(Some("/var/run/docker.sock".to_string()), |h| h.strip_prefix("unix://").map(String::from))?;
    let version = docker.client_version();
    let request =
        format!("GET /v{}.{}/system/df?type=image HTTP/1.0\r\nHost: docker\r\n\r\n", version.major_version, version.minor_version);
    let read = async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.take(64 << 20).read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), read).await.ok()??;
    let text = String::from_utf8_lossy(&answer);
    let (_, body) = text.split_once("\r\n\r\n")?;
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["LayersSize"].as_i64().or_else(|| value["ImageUsage"]["TotalSize"].as_i64())
}

//! Image references in Kubernetes YAML, in the shapes our users' repositories have:
//! - `image: repo:tag` fields (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod; `containers`
//!   and `initContainers`), a pinned digest kept pinned;
//! - Helm values: a mapping with `repository` (plus `registry`, if split) and `tag` (and
//!   `digest`), or `image: repo` with a sibling `tag`;
//! - kustomize `images:` entries (`name`/`newName`, `newTag`, `digest`) in kustomization files;
//! - Flux setter markers (`# {"$imagepolicy": "ns:<app>"}`, `...:tag`), the policy name being
//!   the app;
//! - `repo:${IMAGE_TAG}` templates are recognised and left alone (the env file next to them
//!   carries the tag).
//!
//! A `conveyor:pin` comment on a reference (or its tag line) stops it from being updated.
//! Only the bytes of a value change; a plain tag that a YAML 1.1 or 1.2 loader would read as
//! anything but a string (`1.10`, `012345678901`, `1e3`, `yes`, `2026-12-02`; see
//! [`super::plain`]) is written quoted, with the quote character the file itself uses most.

use std::collections::BTreeMap;

use super::{
    line::{block_scalar_lines, mapping_of, parse, KeyLine, Span},
    plain, FileRewrite, Target,
};

/// Rewrites the references to `target` in one YAML file.
pub fn rewrite(text: &str, target: &Target<'_>, kustomization: bool) -> FileRewrite {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = FileRewrite::default();
    let mut edits: BTreeMap<usize, (Span, String)> = BTreeMap::new();
    // Text inside block scalars is never a reference, whatever it looks like.
    let mut consumed = block_scalar_lines(&lines);
    let pinned = |k: &KeyLine<'_>| k.comment.is_some_and(|c| c.contains("conveyor:pin"));
    let quote = quote_style(&lines);

    // Helm values with configured key paths: the tag at `tag_path` where `repository_path` holds
    // the image's repository.
    if let Some((repository_path, tag_path)) = target.helm {
        let paths = key_paths(&lines, &consumed);
        let value_at = |path: &str| paths.iter().position(|p| p.as_deref() == Some(path)).and_then(|i| Some((i, parse(lines[i])?)));
        if let (Some((ri, r)), Some((ti, t))) = (value_at(repository_path), value_at(tag_path)) {
            if r.value_str(lines[ri]) == Some(target.repository) {
                out.references += 1;
                consumed[ri] = true;
                consumed[ti] = true;
                if pinned(&r) || pinned(&t) {
                    out.pinned.push(ti + 1);
                } else if let Some(span) = t.value {
                    edits.insert(ti, (span, scalar(target.tag, span, quote)));
                }
            }
        }
    }

    for idx in 0..lines.len() {
        let line = lines[idx];
        if consumed[idx] {
            continue;
        }
        let Some(k) = parse(line) else { continue };

        // Flux setter markers decide for their line.
        if let Some((policy, field)) = k.comment.and_then(image_policy) {
            consumed[idx] = true;
            if policy != target.app {
                continue;
            }
            out.references += 1;
            let (Some(span), Some(old)) = (k.value, k.value_str(line)) else { continue };
            if pinned(&k) {
                out.pinned.push(idx + 1);
                continue;
            }
            let new = match field {
                PolicyField::Full => full_ref(old, target),
                PolicyField::Tag => scalar(target.tag, span, quote),
                PolicyField::Name => continue,
            };
            edits.insert(idx, (span, new));
            continue;
        }
        let Some(value) = k.value_str(line) else { continue };

        // Repository and tag in separate keys: Helm values, kustomize images.
        if let Some((repository, tag_key)) = split_reference(&lines, idx, &k, value, kustomization) {
            let mapping = mapping_of(&lines, idx);
            let find = |key: &str| mapping.iter().find(|(_, m)| m.key == key);
            if repository != target.repository {
                continue;
            }
            out.references += 1;
            let tag_line = find(tag_key);
            let digest_line = find("digest");
            for (i, _) in [tag_line, digest_line].into_iter().flatten() {
                consumed[*i] = true;
            }
            if pinned(&k) || tag_line.is_some_and(|(_, t)| pinned(t)) || digest_line.is_some_and(|(_, d)| pinned(d)) {
                out.pinned.push(idx + 1);
                continue;
            }
            if let Some((i, t)) = tag_line {
                if let Some(span) = t.value {
                    edits.insert(*i, (span, scalar(target.tag, span, quote)));
                }
            }
            if let Some((i, d)) = digest_line {
                if let Some(span) = d.value {
                    edits.insert(*i, (span, target.digest.to_string()));
                }
            }
            continue;
        }

        // `image: repo:tag`.
        if k.key == "image" {
            let Some(r) = ImageRefParts::parse(value) else { continue };
            if r.repository != target.repository {
                continue;
            }
            out.references += 1;
            if value.contains("${") {
                out.templates = true;
                continue;
            }
            if pinned(&k) {
                out.pinned.push(idx + 1);
                continue;
            }
            edits.insert(idx, (k.value.expect("a value was read from this span"), full_ref(value, target)));
        }
    }

    let mut text_out = String::with_capacity(text.len() + 64);
    for (idx, line) in lines.iter().enumerate() {
        match edits.get(&idx) {
            Some((span, new)) if &line[span.start..span.end] != new => {
                text_out.push_str(&line[..span.start]);
                text_out.push_str(new);
                text_out.push_str(&line[span.end..]);
                out.changes.push((idx + 1, line[span.start..span.end].to_string(), new.trim_matches('"').to_string()));
            }
            _ => text_out.push_str(line),
        }
    }
    out.text = text_out;
    out
}

/// For a key that names a repository with the tag elsewhere: (full repository, tag key).
fn split_reference(lines: &[&str], idx: usize, k: &KeyLine<'_>, value: &str, kustomization: bool) -> Option<(String, &'static str)> {
    let mapping = || mapping_of(lines, idx);
    let value_of =
        |key: &str| mapping().into_iter().find(|(_, m)| m.key == key).and_then(|(i, m)| m.value_str(lines[i]).map(str::to_string));
    match k.key {
        "name" | "newName" if kustomization => {
            let m = mapping();
            if !m.iter().any(|(_, e)| e.key == "newTag" || e.key == "digest") {
                return None;
            }
            // With a newName, the newName line is the reference; `name` is what it replaces.
            if k.key == "name" && m.iter().any(|(_, e)| e.key == "newName") {
                return None;
            }
            Some((value.to_string(), "newTag"))
        }
        "repository" => {
            let full = match value_of("registry") {
                Some(reg) => format!("{}/{value}", reg.trim_end_matches('/')),
                None => value.to_string(),
            };
            Some((full, "tag"))
        }
        "image" if ImageRefParts::parse(value).is_some_and(|r| r.tag.is_none() && r.digest.is_none()) && value_of("tag").is_some() => {
            Some((value.to_string(), "tag"))
        }
        _ => None,
    }
}

/// `repo:tag`, or `repo:tag@digest` where the old value pinned a digest or pinning is asked for.
fn full_ref(old: &str, target: &Target<'_>) -> String {
    if target.pin_digest || ImageRefParts::parse(old).is_some_and(|r| r.digest.is_some()) {
        format!("{}:{}@{}", target.repository, target.tag, target.digest)
    } else {
        format!("{}:{}", target.repository, target.tag)
    }
}

/// The dotted key path of every `key: value` line (sequence entries add no segment), so that
/// configured Helm key paths can be found whatever the keys are called.
fn key_paths(lines: &[&str], skip: &[bool]) -> Vec<Option<String>> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            if skip[i] {
                return None;
            }
            let k = parse(line)?;
            while stack.last().is_some_and(|(col, _)| *col >= k.col) {
                stack.pop();
            }
            stack.push((k.col, k.key.to_string()));
            Some(stack.iter().map(|(_, key)| key.as_str()).collect::<Vec<_>>().join("."))
        })
        .collect()
}

/// A tag written into a value: a plain scalar some YAML loader would not read as that string
/// gets quotes, in the file's style (`quote`).
fn scalar(tag: &str, span: Span, quote: char) -> String {
    if span.quote.is_some() || (!plain::misread(tag) && reads_as_string(tag)) {
        tag.to_string()
    } else {
        format!("{quote}{tag}{quote}")
    }
}

/// The quote character the file's quoted values use most (`"` when it has none).
fn quote_style(lines: &[&str]) -> char {
    let count = |q: char| lines.iter().filter(|l| l.contains(&format!(": {q}")) || l.trim_start().starts_with(&format!("- {q}"))).count();
    if count('\'') > count('"') {
        '\''
    } else {
        '"'
    }
}

fn reads_as_string(plain: &str) -> bool {
    matches!(serde_norway::from_str::<serde_norway::Value>(plain), Ok(serde_norway::Value::String(s)) if s == plain)
}

#[derive(Debug, PartialEq, Eq)]
enum PolicyField {
    Full,
    Tag,
    Name,
}

/// Reads `{"$imagepolicy": "<namespace>:<name>[:tag|:name]"}` from a comment: (name, field).
fn image_policy(comment: &str) -> Option<(&str, PolicyField)> {
    let rest = &comment[comment.find("\"$imagepolicy\"")? + "\"$imagepolicy\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let value = &rest[..rest.find('"')?];
    let mut parts = value.split(':');
    let (_namespace, name) = (parts.next()?, parts.next()?);
    let field = match parts.next() {
        None => PolicyField::Full,
        Some("tag") => PolicyField::Tag,
        Some("name") => PolicyField::Name,
        Some(_) => return None,
    };
    Some((name, field))
}

/// A container image reference split into repository, tag and digest.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageRefParts<'a> {
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl<'a> ImageRefParts<'a> {
    pub fn parse(value: &'a str) -> Option<Self> {
        if value.is_empty() || value.chars().any(|c| c.is_whitespace()) {
            return None;
        }
        let (name, digest) = match value.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (value, None),
        };
        let (repository, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        Some(Self { repository, tag, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target {
        app: "flask-app",
        repository: "127.0.0.1:5000/flask-app",
        tag: "abc123",
        digest: "sha256:feed",
        pin_digest: false,
        helm: None,
    };

    fn rw(text: &str) -> FileRewrite {
        rewrite(text, &T, false)
    }

    #[test]
    fn splices_only_the_value_and_keeps_every_other_byte() {
        let before = "# app\r\napiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n    spec:\r\n      initContainers:\r\n        - name: migrate\r\n          image: \"127.0.0.1:5000/flask-app:old\"   # keep me\r\n      containers:\r\n      - name: web\r\n        image: 127.0.0.1:5000/flask-app:old # pinned by CI\r\n        ports: [{containerPort: 8080}]\r\n      - name: sidecar\r\n        image: '127.0.0.1:5000/other:old'\r\n---\r\nkind: Pod\r\nspec:\r\n  containers:\r\n  - {name: x, image: 127.0.0.1:5000/flask-app:flow}\r\n  - image:   127.0.0.1:5000/flask-app\r\n";
        let expected = before
            .replace("\"127.0.0.1:5000/flask-app:old\"", "\"127.0.0.1:5000/flask-app:abc123\"")
            .replace("image: 127.0.0.1:5000/flask-app:old #", "image: 127.0.0.1:5000/flask-app:abc123 #")
            .replace("image:   127.0.0.1:5000/flask-app\r\n", "image:   127.0.0.1:5000/flask-app:abc123\r\n");
        let r = rw(before);
        assert_eq!(r.text, expected);
        assert_eq!(r.references, 3, "flow mappings are not rewritten, the other repo is not ours");
        assert_eq!(r.changes.iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 12, 21]);
    }

    #[test]
    fn a_current_tag_is_a_reference_but_no_change() {
        let text = "image: 127.0.0.1:5000/flask-app:abc123\n";
        let r = rw(text);
        assert_eq!((r.references, r.changes.len(), r.text.as_str()), (1, 0, text));
    }

    #[test]
    fn a_pinned_digest_stays_pinned_with_the_new_one() {
        assert_eq!(
            rw("  image: 127.0.0.1:5000/flask-app:old@sha256:dead\n").text,
            "  image: 127.0.0.1:5000/flask-app:abc123@sha256:feed\n"
        );
    }

    #[test]
    fn does_not_touch_lookalikes() {
        for line in [
            "imagePullPolicy: Always\n",
            "image: 127.0.0.1:5000/flask-app-worker:old\n",
            "myimage: 127.0.0.1:5000/flask-app:old\n",
            "# image: 127.0.0.1:5000/flask-app:old\n",
            "image: |\n",
            "description: \"image: 127.0.0.1:5000/flask-app:old\"\n",
        ] {
            let r = rw(line);
            assert_eq!(r.text, line);
            assert_eq!(r.references, 0, "{line:?}");
        }
    }

    #[test]
    fn helm_values_update_the_sibling_tag() {
        let split = "image:\n  registry: 127.0.0.1:5000\n  repository: flask-app\n  pullPolicy: IfNotPresent\n  # Overrides the chart's appVersion\n  tag: \"1.0.0\"\nservice:\n  tag: keep\n";
        assert_eq!(rw(split).text, split.replace("\"1.0.0\"", "\"abc123\""));
        let joined = "image:\n  repository: 127.0.0.1:5000/flask-app\n  tag: 1.0.0\n";
        assert_eq!(rw(joined).text, joined.replace("1.0.0", "abc123"));
        let image_key = "web:\n  image: 127.0.0.1:5000/flask-app\n  tag: v1 # app version\n";
        assert_eq!(rw(image_key).text, image_key.replace("v1", "abc123"), "a tag-less image with a sibling tag keeps its own key");
    }

    #[test]
    fn numeric_looking_tags_are_quoted_in_plain_values() {
        let t = Target { tag: "1.10", ..T };
        let text = "image:\n  repository: 127.0.0.1:5000/flask-app\n  tag: 1.0.0\n";
        assert_eq!(rewrite(text, &t, false).text, "image:\n  repository: 127.0.0.1:5000/flask-app\n  tag: \"1.10\"\n");
    }

    /// The outage: an all-digit short SHA with a leading zero written plain is an integer to
    /// kustomize (YAML 1.2), which then refuses `newTag`. Every misread form is quoted, in the
    /// file's own quote style; a tag every loader reads as a string stays plain.
    #[test]
    fn tags_any_yaml_loader_would_misread_are_quoted_in_the_files_style() {
        let k = "images:\n  - name: 127.0.0.1:5000/flask-app\n    newTag: old\n";
        for tag in ["012345678901", "123456789012", "1e3", "0x1f", "yes", "off", "2026-12-02", "1_000"] {
            let t = Target { tag, ..T };
            assert_eq!(rewrite(k, &t, true).text, k.replace("newTag: old", &format!("newTag: \"{tag}\"")), "{tag}");
        }
        let single = "labels:\n  team: 'web'\nimages:\n  - name: 127.0.0.1:5000/flask-app\n    newTag: old\n";
        let t = Target { tag: "012345678901", ..T };
        assert_eq!(rewrite(single, &t, true).text, single.replace("newTag: old", "newTag: '012345678901'"), "the file quotes with '");
        let t = Target { tag: "0a1b2c3d4e5f", ..T };
        assert_eq!(rewrite(k, &t, true).text, k.replace("newTag: old", "newTag: 0a1b2c3d4e5f"), "a string to every loader");
    }

    #[test]
    fn kustomize_images_entries() {
        let k = "resources:\n  - deployment.yaml\nimages:\n  - name: flask-app\n    newName: 127.0.0.1:5000/flask-app\n    newTag: old\n  - name: 127.0.0.1:5000/flask-app-worker\n    newTag: keep\n  - name: 127.0.0.1:5000/flask-app\n    digest: sha256:dead\n";
        let r = rewrite(k, &T, true);
        assert_eq!(r.text, k.replace("newTag: old", "newTag: abc123").replace("sha256:dead", "sha256:feed"));
        assert_eq!(r.references, 2);
        assert_eq!(rewrite(k, &T, false).references, 0, "name/newTag only count in kustomization files");
    }

    #[test]
    fn flux_setter_markers() {
        let text = "spec:\n  image: registry.other/x:1 # {\"$imagepolicy\": \"flux-system:flask-app\"}\n  tag: 1 # {\"$imagepolicy\": \"flux-system:flask-app:tag\"}\n  name: r/x # {\"$imagepolicy\": \"flux-system:flask-app:name\"}\n  image: a/b:2 # {\"$imagepolicy\": \"flux-system:other\"}\n";
        let r = rw(text);
        assert_eq!(
            r.text,
            "spec:\n  image: 127.0.0.1:5000/flask-app:abc123 # {\"$imagepolicy\": \"flux-system:flask-app\"}\n  tag: abc123 # {\"$imagepolicy\": \"flux-system:flask-app:tag\"}\n  name: r/x # {\"$imagepolicy\": \"flux-system:flask-app:name\"}\n  image: a/b:2 # {\"$imagepolicy\": \"flux-system:other\"}\n"
        );
    }

    #[test]
    fn pins_and_templates_are_left_alone() {
        let text =
            "a:\n  image: 127.0.0.1:5000/flask-app:1.0 # conveyor:pin incident-42\nb:\n  image: 127.0.0.1:5000/flask-app:${IMAGE_TAG}\n";
        let r = rw(text);
        assert_eq!(r.text, text);
        assert_eq!((r.references, r.pinned.clone(), r.templates), (2, vec![2], true));
        let helm = "image:\n  repository: 127.0.0.1:5000/flask-app\n  tag: 1.0 # conveyor:pin\n";
        assert_eq!(rw(helm).text, helm);
    }

    #[test]
    fn configured_helm_key_paths() {
        let t = Target { helm: Some(("web.deployment.imageRepo", "web.deployment.imageVersion")), ..T };
        let text = "web:\n  deployment:\n    imageRepo: 127.0.0.1:5000/flask-app\n    # the version\n    imageVersion: \"1.0\"\n  other:\n    imageVersion: keep\nimageVersion: keep\n";
        let r = rewrite(text, &t, false);
        assert_eq!(r.text, text.replacen("\"1.0\"", "\"abc123\"", 1));
        assert_eq!(r.references, 1);
        let other = text.replace("127.0.0.1:5000/flask-app", "127.0.0.1:5000/other");
        assert_eq!(rewrite(&other, &t, false).text, other, "another image's values are left alone");
    }

    #[test]
    fn pin_digest_adds_the_digest_to_plain_references() {
        let t = Target { pin_digest: true, ..T };
        assert_eq!(
            rewrite("image: 127.0.0.1:5000/flask-app:old\n", &t, false).text,
            "image: 127.0.0.1:5000/flask-app:abc123@sha256:feed\n"
        );
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            ImageRefParts::parse("reg:5000/a/b:t@sha256:x"),
            Some(ImageRefParts { repository: "reg:5000/a/b", tag: Some("t"), digest: Some("sha256:x") })
        );
        assert_eq!(ImageRefParts::parse("reg:5000/a"), Some(ImageRefParts { repository: "reg:5000/a", tag: None, digest: None }));
    }
}

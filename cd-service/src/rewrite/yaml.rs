//! Image references in Kubernetes YAML, found on the parsed document ([`super::doc`]), in the
//! shapes our users' repositories have, block or flow style, through anchors and merge keys:
//! - `image: repo:tag` fields of any workload kind (containers, initContainers, CronJob
//!   templates, CRDs such as Argo Rollouts), a pinned digest kept pinned;
//! - Helm values: a mapping with `repository` (plus `registry`, if split) and `tag` (and
//!   `digest`), `image: repo` with a sibling `tag`, and configured key paths;
//! - `images:` entries (`name`/`newName`, `newTag`, `digest`): kustomization files, Flux
//!   `Kustomization` and Argo CD `Application` specs; Argo CD's `kustomize.images` strings
//!   (`[name=]repo:tag`) and `helm.parameters` (`.argocd-source-<app>.yaml` overrides);
//! - Flux setter markers (`# {"$imagepolicy": "ns:<app>"}`, `...:tag`), the policy name being
//!   the app;
//! - `repo:${IMAGE_TAG}` templates are recognised and left alone (the env file next to them
//!   carries the tag).
//!
//! A `conveyor:pin` comment on a reference (or its tag line) stops it from being updated. An
//! anchored value is rewritten once, where the anchor is; its aliases follow. Any other scalar
//! that is exactly a reference to the image (`repo:tag` or `repo@digest`) under a key none of
//! these shapes covers is reported as left behind, never silently skipped. Only the bytes of a
//! value change; a plain tag that a YAML 1.1 or 1.2 loader would read as anything but a string
//! (`1.10`, `012345678901`, `1e3`, `yes`, `2026-12-02`; see [`super::plain`]) is written
//! quoted, with the quote character the file itself uses most.

use std::{
    collections::{BTreeMap, HashSet},
    ops::Range,
};

pub use super::reference::ImageRefParts;
use super::{
    doc::{Node, NodeId, ParseError, Stream, Style},
    plain,
    reference::{image_policy, PolicyField},
    FileRewrite, Target,
};

/// What a reference's value becomes.
#[derive(Debug, Clone, Copy)]
enum New {
    /// `repo:tag` (`@digest` where one was pinned or pinning is asked for).
    Reference,
    /// An Argo CD `kustomize.images` string: a reference, or `name=reference`.
    ArgoImage,
    Tag,
    Digest,
}

struct Edit {
    token: Range<usize>,
    text: String,
    line: usize,
    old: String,
    new: String,
}

struct Rules<'s, 't, 'a> {
    s: &'s Stream<'t>,
    target: &'a Target<'a>,
    quote: char,
    out: FileRewrite,
    edits: BTreeMap<usize, Edit>,
    /// Scalars a rule has decided about: the left-behind scan skips them.
    seen: HashSet<NodeId>,
    /// Scalars with a Flux setter marker: no other shape applies to them.
    marked: HashSet<NodeId>,
    /// Every value scalar, with the key it sits under, for the left-behind scan.
    values: Vec<(NodeId, String)>,
    /// Configured Helm key paths found in the current document: (repository, tag) values.
    helm: (Option<NodeId>, Option<NodeId>),
}

/// Rewrites the references to `target` in one YAML file. A file the parser refuses is an
/// error (the caller decides whether it matters).
pub fn rewrite(text: &str, target: &Target<'_>) -> Result<FileRewrite, ParseError> {
    let s = Stream::parse(text)?;
    let (double, single) = s.nodes.iter().fold((0, 0), |(d, q), n| match n {
        Node::Scalar(sc) if sc.style == Style::Double => (d + 1, q),
        Node::Scalar(sc) if sc.style == Style::Single => (d, q + 1),
        _ => (d, q),
    });
    let mut r = Rules {
        s: &s,
        target,
        quote: if single > double { '\'' } else { '"' },
        out: FileRewrite::default(),
        edits: BTreeMap::new(),
        seen: HashSet::new(),
        marked: HashSet::new(),
        values: Vec::new(),
        helm: (None, None),
    };
    for &root in &s.docs {
        r.helm = (None, None);
        let mut path = Vec::new();
        r.walk(root, "", &mut path, 0);
        if let (Some(repo), Some(tag)) = r.helm {
            r.reference(&[repo], &[(tag, New::Tag)]);
        }
    }
    r.left_behind();
    let Rules { mut out, edits, .. } = r;
    let mut text_out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for edit in edits.values() {
        if edit.token.start < at {
            continue;
        }
        text_out.push_str(&text[at..edit.token.start]);
        text_out.push_str(&edit.text);
        at = edit.token.end;
        out.changes.push((edit.line, edit.old.clone(), edit.new.clone()));
    }
    text_out.push_str(&text[at..]);
    out.text = text_out;
    Ok(out)
}

impl<'t> Rules<'_, 't, '_> {
    fn walk(&mut self, id: NodeId, key: &str, path: &mut Vec<String>, depth: usize) {
        if depth > 256 {
            return;
        }
        match &self.s.nodes[id] {
            Node::Scalar(_) => self.values.push((id, key.to_string())),
            Node::Map(entries) => {
                // A Flux setter marker decides for its value before any shape does.
                for (_, v) in entries {
                    self.marker(*v);
                }
                self.mapping(id, key);
                for (k, v) in entries.clone() {
                    let Some(name) = self.s.str(k).map(str::to_string) else { continue };
                    path.push(name.clone());
                    if let Some((repo_path, tag_path)) = self.target.helm {
                        let dotted = path.join(".");
                        if dotted == repo_path && self.s.str(v) == Some(self.target.repository) {
                            self.helm.0 = Some(v);
                        } else if dotted == tag_path && self.s.scalar(v).is_some() {
                            self.helm.1 = Some(v);
                        }
                    }
                    self.walk(v, &name, path, depth + 1);
                    path.pop();
                }
            }
            Node::Seq(items) => {
                let items = items.clone();
                if key == "parameters" && path.iter().rev().nth(1).is_some_and(|p| p == "helm") {
                    self.helm_parameters(&items);
                }
                for &item in &items {
                    self.marker(item);
                }
                for item in items {
                    if key == "images" && path.iter().rev().nth(1).is_some_and(|p| p == "kustomize") {
                        self.kustomize_image_string(item);
                    }
                    self.walk(item, key, path, depth + 1);
                }
            }
            // The anchored node is walked where it is defined.
            Node::Alias(_) => {}
        }
    }

    /// The comment on a value's line. A block scalar's bytes are its content lines, after its
    /// header: what follows them is not its comment.
    fn comment(&self, id: NodeId) -> Option<&'t str> {
        self.s.scalar(id).filter(|sc| !matches!(sc.style, Style::Literal | Style::Folded)).and_then(|sc| self.s.comment_after(&sc.token))
    }

    fn line(&self, id: NodeId) -> usize {
        self.s.scalar(id).map(|sc| self.s.line(sc.token.start)).unwrap_or(0)
    }

    /// A Flux setter marker decides for its scalar.
    fn marker(&mut self, id: NodeId) {
        if !matches!(self.s.nodes[id], Node::Scalar(_)) || self.marked.contains(&id) {
            return;
        }
        let Some((policy, field)) = self.comment(id).and_then(image_policy) else { return };
        self.marked.insert(id);
        match field {
            _ if policy != self.target.app => {}
            PolicyField::Full => return self.reference(&[], &[(id, New::Reference)]),
            PolicyField::Tag => return self.reference(&[], &[(id, New::Tag)]),
            PolicyField::Name => self.out.references += 1,
        }
        self.seen.insert(id);
    }

    /// The shapes that live in one mapping.
    fn mapping(&mut self, map: NodeId, key: &str) {
        let s = self.s;
        let get = |k: &str| s.get(map, k).filter(|v| !self.marked.contains(&s.resolve(*v)));
        let repository = self.target.repository;

        // `images:` entries: kustomize, Flux Kustomization, Argo CD Application.
        if key == "images" && (get("newTag").is_some() || get("digest").is_some()) {
            if let Some(name) = get("newName").or_else(|| get("name")) {
                if s.str(name) == Some(repository) {
                    let mut edits = Vec::new();
                    edits.extend(get("newTag").map(|t| (t, New::Tag)));
                    edits.extend(get("digest").map(|d| (d, New::Digest)));
                    self.reference(&[name], &edits);
                }
                return;
            }
        }

        // Helm: `repository` (+ `registry`) with `tag` / `digest`.
        if let Some(repo) = get("repository").filter(|r| s.scalar(*r).is_some()) {
            let registry = get("registry").and_then(|r| s.str(r)).filter(|r| !r.is_empty());
            let value = s.str(repo).unwrap_or_default();
            let full = match registry {
                Some(reg) => format!("{}/{value}", reg.trim_end_matches('/')),
                None => value.to_string(),
            };
            if full == repository {
                let mut edits = Vec::new();
                edits.extend(get("tag").filter(|t| s.scalar(*t).is_some()).map(|t| (t, New::Tag)));
                let digest = get("digest").filter(|d| s.str(*d).is_some_and(|v| !v.is_empty() || self.target.pin_digest));
                edits.extend(digest.map(|d| (d, New::Digest)));
                self.seen.insert(s.resolve(repo));
                // A defaults block merged elsewhere (`<<: *defaults`) is not itself a reference.
                let merged = s.nodes.iter().any(|n| matches!(n, Node::Alias(Some(a)) if *a == map));
                if edits.is_empty() && self.target.helm.is_none() && !merged {
                    self.out.references += 1;
                    self.out.left_behind.push((
                        self.line(repo),
                        format!("the Helm image block of {repository} has no `tag` or `digest` value to set (Conveyor changes values, it never adds keys)"),
                    ));
                } else if !edits.is_empty() {
                    self.reference(&[repo], &edits);
                }
                return;
            }
        }

        // `image: repo` with a sibling `tag`.
        if let (Some(image), Some(tag)) = (get("image"), get("tag")) {
            if let Some(r) = s.str(image).and_then(ImageRefParts::parse) {
                if r.tag.is_none() && r.digest.is_none() && s.scalar(tag).is_some() {
                    if r.repository == repository {
                        let mut edits = vec![(tag, New::Tag)];
                        edits.extend(get("digest").filter(|d| s.str(*d).is_some_and(|v| !v.is_empty())).map(|d| (d, New::Digest)));
                        self.reference(&[image], &edits);
                    }
                    return;
                }
            }
        }

        // `image: repo:tag`, or a `repo:${IMAGE_TAG}` template.
        if let Some(image) = get("image") {
            let Some(value) = s.str(image) else { return };
            if value.strip_prefix(repository).is_some_and(|rest| rest.starts_with(':') && rest.contains("${")) {
                self.seen.insert(s.resolve(image));
                self.out.references += 1;
                self.out.templates = true;
                return;
            }
            if ImageRefParts::parse(value).is_some_and(|r| r.repository == repository) {
                self.reference(&[], &[(image, New::Reference)]);
            }
        }
    }

    /// Argo CD `kustomize.images` strings: `repo:tag`, `repo@digest`, `name=repo:tag`.
    fn kustomize_image_string(&mut self, item: NodeId) {
        let Some(value) = self.s.str(item) else { return };
        let reference = value.split_once('=').map_or(value, |(_, r)| r);
        if ImageRefParts::parse(reference).is_some_and(|r| r.repository == self.target.repository) {
            self.reference(&[], &[(item, New::ArgoImage)]);
        }
    }

    /// Argo CD `helm.parameters`: `{name: image.repository, value: repo}` with `image.tag`.
    fn helm_parameters(&mut self, items: &[NodeId]) {
        let s = self.s;
        let params: Vec<(&str, NodeId)> = items
            .iter()
            .filter_map(|i| Some((s.str(s.get(*i, "name")?)?, s.get(*i, "value").filter(|v| s.scalar(*v).is_some())?)))
            .collect();
        let value_of = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let repository = self.target.repository;
        for &(name, value) in &params {
            let v = s.str(value).unwrap_or_default();
            if let Some((repo_path, tag_path)) = self.target.helm {
                if name == repo_path && v == repository {
                    if let Some(tag) = value_of(tag_path) {
                        self.reference(&[value], &[(tag, New::Tag)]);
                    }
                    continue;
                }
            }
            let prefix = name.strip_suffix(".repository").or_else(|| name.strip_suffix(".name"));
            if let Some(prefix) = prefix {
                let full = match value_of(&format!("{prefix}.registry")).and_then(|r| s.str(r)) {
                    Some(reg) if !reg.is_empty() => format!("{}/{v}", reg.trim_end_matches('/')),
                    _ => v.to_string(),
                };
                if full == repository {
                    if let Some(tag) = value_of(&format!("{prefix}.tag")) {
                        self.reference(&[value], &[(tag, New::Tag)]);
                    }
                }
            } else if ImageRefParts::parse(v).is_some_and(|r| r.repository == repository && r.tag.is_some()) {
                self.reference(&[], &[(value, New::Reference)]);
            }
        }
    }

    /// One reference: `holders` are scalars that name it (checked for a pin), `edits` the
    /// values to write.
    fn reference(&mut self, holders: &[NodeId], edits: &[(NodeId, New)]) {
        let s = self.s;
        let all: Vec<NodeId> = holders.iter().chain(edits.iter().map(|(n, _)| n)).map(|n| s.resolve(*n)).collect();
        let already = edits.iter().all(|(e, _)| self.seen.contains(&s.resolve(*e))) && !edits.is_empty();
        self.seen.extend(all.iter().copied());
        if already {
            // An alias of a value rewritten where its anchor is.
            self.out.references += 1;
            return;
        }
        self.out.references += 1;
        if all.iter().any(|n| self.comment(*n).is_some_and(|c| c.contains("conveyor:pin"))) {
            let line = edits.first().map(|(n, _)| *n).or(holders.first().copied()).map(|n| self.line(n)).unwrap_or(0);
            self.out.pinned.push(line);
            return;
        }
        for &(node, new) in edits {
            self.write(node, new);
        }
    }

    fn write(&mut self, node: NodeId, new: New) {
        let s = self.s;
        let Some(sc) = s.scalar(node) else { return };
        let value = match new {
            New::Reference => full_ref(&sc.value, self.target),
            // Argo CD's `name=repo:tag` keeps its name.
            New::ArgoImage => match sc.value.split_once('=') {
                Some((name, old)) => format!("{name}={}", full_ref(old, self.target)),
                None => full_ref(&sc.value, self.target),
            },
            New::Tag => self.target.tag.to_string(),
            New::Digest => self.target.digest.to_string(),
        };
        if value == sc.value {
            return;
        }
        let raw = &s.text[sc.token.clone()];
        // The token must look like its style; if the parser's positions were off, nothing is
        // spliced (and the reference is reported).
        let located = match sc.style {
            Style::Double => raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"'),
            Style::Single => raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\''),
            // Plain: the same words (a multi-line plain scalar folds its line breaks).
            Style::Plain => !sc.value.is_empty() && raw.split_whitespace().eq(sc.value.split_whitespace()),
            Style::Literal | Style::Folded => !sc.value.trim().is_empty(),
        };
        if !located || !sc.exact {
            let why = if sc.exact {
                "the parser's position for this value is off: not rewritten"
            } else {
                "the value holds a tab after `:` or `-`, which the YAML parser cannot read exactly: not rewritten"
            };
            self.out.left_behind.push((s.line(sc.token.start), why.to_string()));
            return;
        }
        let (token, text) = match sc.style {
            Style::Double => (sc.token.clone(), format!("\"{value}\"")),
            Style::Single => (sc.token.clone(), format!("'{value}'")),
            Style::Plain if sc.tagged || (!plain::misread(&value) && reads_as_string(&value)) => (sc.token.clone(), value.clone()),
            Style::Plain => (sc.token.clone(), format!("{q}{value}{q}", q = self.quote)),
            Style::Literal | Style::Folded => {
                let content = raw.trim();
                if content.contains('\n') || content != sc.value.trim_end() {
                    self.out
                        .left_behind
                        .push((s.line(sc.token.start), "a block scalar of several lines: Conveyor does not rewrite it".to_string()));
                    return;
                }
                let start = sc.token.start + raw.find(content).unwrap_or(0);
                (start..start + content.len(), value.clone())
            }
        };
        let line = s.line(token.start);
        self.edits.insert(token.start, Edit { token, text, line, old: sc.value.clone(), new: value });
    }

    /// Scalars that are exactly a reference to the image and that no rule covered.
    fn left_behind(&mut self) {
        let s = self.s;
        for (id, key) in std::mem::take(&mut self.values) {
            if self.seen.contains(&id) {
                continue;
            }
            let Some(sc) = s.scalar(id) else { continue };
            if matches!(sc.style, Style::Literal | Style::Folded) {
                continue;
            }
            let Some(r) = ImageRefParts::parse(&sc.value) else { continue };
            if r.repository != self.target.repository || (r.tag.is_none() && r.digest.is_none()) {
                continue;
            }
            self.out.references += 1;
            let line = s.line(sc.token.start);
            if self.comment(id).is_some_and(|c| c.contains("conveyor:pin")) {
                self.out.pinned.push(line);
                continue;
            }
            let key = if key.is_empty() { "the document".to_string() } else { format!("`{key}`") };
            self.out.left_behind.push((
                line,
                format!(
                    "{key} holds {}, which is not a field Conveyor rewrites (`image`, Helm `tag`, kustomize `newTag`); add a Flux setter marker to have it rewritten or `# conveyor:pin` to keep it",
                    sc.value
                ),
            ));
        }
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

fn reads_as_string(plain: &str) -> bool {
    matches!(serde_norway::from_str::<serde_norway::Value>(plain), Ok(serde_norway::Value::String(s)) if s == plain)
}

#[cfg(test)]
#[path = "yaml_tests.rs"]
mod tests;

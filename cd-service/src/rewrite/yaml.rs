//! `image:` fields in Kubernetes YAML (Deployment, Pod, ... `containers` / `initContainers`):
//! finds `image: <ref>` mappings line by line, plain or quoted, and splices the new reference
//! into exactly the bytes of the old one. Comments, quoting, indentation, key order, document
//! separators and line endings stay as they were.

use super::Target;

/// The result of rewriting one file.
#[derive(Debug, PartialEq, Eq)]
pub struct FileRewrite {
    pub text: String,
    /// References to the target repository found (current or not).
    pub references: usize,
    /// (1-based line, old value, new value) for each replaced reference.
    pub changes: Vec<(usize, String, String)>,
}

/// Rewrites the references to `target.repository` in `text`.
pub fn rewrite(text: &str, target: &Target<'_>) -> FileRewrite {
    let mut out = String::with_capacity(text.len() + 64);
    let mut references = 0;
    let mut changes = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let Some((start, end)) = image_value_span(line) else {
            out.push_str(line);
            continue;
        };
        let old = &line[start..end];
        let Some(r) = ImageRefParts::parse(old) else {
            out.push_str(line);
            continue;
        };
        if r.repository != target.repository {
            out.push_str(line);
            continue;
        }
        references += 1;
        let new = match r.digest {
            Some(_) => format!("{}:{}@{}", target.repository, target.tag, target.digest),
            None => format!("{}:{}", target.repository, target.tag),
        };
        if new == old {
            out.push_str(line);
            continue;
        }
        out.push_str(&line[..start]);
        out.push_str(&new);
        out.push_str(&line[end..]);
        changes.push((idx + 1, old.to_string(), new));
    }
    FileRewrite { text: out, references, changes }
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

/// Byte range of the value of an `image:` mapping on this line (inside quotes, if quoted), or
/// `None` if the line is not one.
fn image_value_span(line: &str) -> Option<(usize, usize)> {
    let bytes = line.as_bytes();
    let mut i = skip_ws(bytes, 0);
    // A sequence entry: `- image: x`.
    if bytes.get(i) == Some(&b'-') && bytes.get(i + 1).is_some_and(|b| *b == b' ' || *b == b'\t') {
        i = skip_ws(bytes, i + 1);
    }
    let rest = &line[i..];
    let key_len = ["image", "\"image\"", "'image'"].iter().find(|k| rest.starts_with(**k)).map(|k| k.len())?;
    i = skip_ws(bytes, i + key_len);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    if !bytes.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
        return None;
    }
    i = skip_ws(bytes, i);
    match bytes.get(i)? {
        q @ (b'"' | b'\'') => {
            let start = i + 1;
            let len = line[start..].find(*q as char)?;
            let value = &line[start..start + len];
            if value.contains('\\') {
                return None;
            }
            Some((start, start + len))
        }
        b'|' | b'>' | b'&' | b'*' | b'{' | b'[' | b'#' | b'\n' | b'\r' => None,
        _ => {
            let start = i;
            let mut end = line.len();
            if let Some(pos) = line[start..].find(" #").or_else(|| line[start..].find("\t#")) {
                end = start + pos;
            }
            let value = line[start..end].trim_end();
            if value.is_empty() {
                return None;
            }
            Some((start, start + value.len()))
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target { repository: "127.0.0.1:5000/flask-app", tag: "abc123", digest: "sha256:feed" };

    #[test]
    fn splices_only_the_value_and_keeps_every_other_byte() {
        let before = "# app\r\napiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n    spec:\r\n      initContainers:\r\n        - name: migrate\r\n          image: \"127.0.0.1:5000/flask-app:old\"   # keep me\r\n      containers:\r\n      - name: web\r\n        image: 127.0.0.1:5000/flask-app:old # pinned by CI\r\n        ports: [{containerPort: 8080}]\r\n      - name: sidecar\r\n        image: '127.0.0.1:5000/other:old'\r\n---\r\nkind: Pod\r\nspec:\r\n  containers:\r\n  - {name: x, image: 127.0.0.1:5000/flask-app:flow}\r\n  - image:   127.0.0.1:5000/flask-app\r\n";
        let expected = before
            .replace("\"127.0.0.1:5000/flask-app:old\"", "\"127.0.0.1:5000/flask-app:abc123\"")
            .replace("image: 127.0.0.1:5000/flask-app:old #", "image: 127.0.0.1:5000/flask-app:abc123 #")
            .replace("image:   127.0.0.1:5000/flask-app\r\n", "image:   127.0.0.1:5000/flask-app:abc123\r\n");
        let r = rewrite(before, &T);
        assert_eq!(r.text, expected);
        assert_eq!(r.references, 3, "flow mappings are not rewritten yet, the other repo is not ours");
        assert_eq!(r.changes.iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 12, 21]);
    }

    #[test]
    fn a_current_tag_is_a_reference_but_no_change() {
        let text = "image: 127.0.0.1:5000/flask-app:abc123\n";
        let r = rewrite(text, &T);
        assert_eq!((r.references, r.changes.len(), r.text.as_str()), (1, 0, text));
    }

    #[test]
    fn a_pinned_digest_stays_pinned_with_the_new_one() {
        let r = rewrite("  image: 127.0.0.1:5000/flask-app:old@sha256:dead\n", &T);
        assert_eq!(r.text, "  image: 127.0.0.1:5000/flask-app:abc123@sha256:feed\n");
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
            let r = rewrite(line, &T);
            assert_eq!(r.text, line);
            assert_eq!(r.references, 0, "{line:?}");
        }
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

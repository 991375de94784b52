//! `IMAGE_TAG` settings in env files (`.env`, `*.env`): `IMAGE_TAG=1.2.3`, `export IMAGE_TAG="1.2.3"`.
//! A file belongs to the image when it names the repository (`IMAGE=`, `IMAGE_REPOSITORY=`,
//! `IMAGE_NAME=`) or sits next to a `repo:${IMAGE_TAG}` template of it. `IMAGE_DIGEST=` is
//! updated with the tag when present. Quoting, comments and everything else are kept.

use super::{FileRewrite, Target};

/// Byte range of a value within its line (inside the quotes when quoted).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

pub fn is_env_file(name: &str) -> bool {
    name == ".env" || name.ends_with(".env")
}

struct Assign<'a> {
    key: &'a str,
    value: Span,
    pinned: bool,
}

fn parse(line: &str) -> Option<Assign<'_>> {
    let t = line.trim_start();
    let offset = line.len() - t.len();
    let (t, offset) = match t.strip_prefix("export ") {
        Some(rest) => (rest.trim_start(), line.len() - rest.trim_start().len()),
        None => (t, offset),
    };
    let eq = t.find('=')?;
    let key = &t[..eq];
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let vstart = offset + eq + 1;
    let rest = line[vstart..].trim_end_matches(['\n', '\r']);
    let (span, tail) = match rest.as_bytes().first() {
        Some(q @ (b'"' | b'\'')) => {
            let len = rest[1..].find(*q as char)?;
            (Span { start: vstart + 1, end: vstart + 1 + len }, &rest[len + 2..])
        }
        _ => {
            let len = rest.find(" #").unwrap_or(rest.len());
            let v = rest[..len].trim_end();
            (Span { start: vstart, end: vstart + v.len() }, &rest[len..])
        }
    };
    Some(Assign { key, value: span, pinned: tail.contains("conveyor:pin") })
}

/// Rewrites `IMAGE_TAG` (and `IMAGE_DIGEST`) when the file belongs to `target`'s image.
pub fn rewrite(text: &str, target: &Target<'_>, next_to_template: bool) -> FileRewrite {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let parsed: Vec<Option<Assign<'_>>> = lines.iter().map(|l| parse(l)).collect();
    let names_repo = parsed.iter().zip(&lines).any(|(a, l)| {
        a.as_ref().is_some_and(|a| {
            matches!(a.key, "IMAGE" | "IMAGE_REPOSITORY" | "IMAGE_NAME") && &l[a.value.start..a.value.end] == target.repository
        })
    });
    let mut out = FileRewrite::default();
    if !(names_repo || next_to_template) {
        out.text = text.to_string();
        return out;
    }
    for (idx, (line, a)) in lines.iter().zip(&parsed).enumerate() {
        let new = match a {
            Some(a) if a.key == "IMAGE_TAG" => Some(target.tag),
            Some(a) if a.key == "IMAGE_DIGEST" => Some(target.digest),
            _ => None,
        };
        let (Some(a), Some(new)) = (a, new) else {
            out.text.push_str(line);
            continue;
        };
        if a.key == "IMAGE_TAG" {
            out.references += 1;
        }
        let old = &line[a.value.start..a.value.end];
        if a.pinned {
            if a.key == "IMAGE_TAG" {
                out.pinned.push(idx + 1);
            }
            out.text.push_str(line);
            continue;
        }
        if old == new {
            out.text.push_str(line);
            continue;
        }
        out.text.push_str(&line[..a.value.start]);
        out.text.push_str(new);
        out.text.push_str(&line[a.value.end..]);
        out.changes.push((idx + 1, old.to_string(), new.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> =
        Target { app: "web", repository: "reg/web", tag: "abc123", digest: "sha256:feed", pin_digest: false, helm: None };

    #[test]
    fn updates_image_tag_in_an_env_file_that_names_the_repository() {
        let text =
            "# deploy settings\nIMAGE_REPOSITORY=reg/web\nexport IMAGE_TAG=\"1.0\" # set by CI\nIMAGE_DIGEST=sha256:dead\nOTHER_TAG=1.0\n";
        let r = rewrite(text, &T, false);
        assert_eq!(r.text, text.replace("\"1.0\"", "\"abc123\"").replace("sha256:dead", "sha256:feed"));
        assert_eq!(r.references, 1);
    }

    #[test]
    fn leaves_files_of_other_images_and_pins_alone() {
        let other = "IMAGE_REPOSITORY=reg/api\nIMAGE_TAG=1.0\n";
        assert_eq!(rewrite(other, &T, false).text, other);
        assert_eq!(rewrite(other, &T, false).references, 0);
        let pinned = "IMAGE_TAG=1.0 # conveyor:pin\n";
        let r = rewrite(pinned, &T, true);
        assert_eq!((r.text.as_str(), r.pinned.clone()), (pinned, vec![1]));
    }

    #[test]
    fn a_template_next_to_the_file_claims_it() {
        assert_eq!(rewrite("IMAGE_TAG=1.0\r\n", &T, true).text, "IMAGE_TAG=abc123\r\n");
        assert!(is_env_file(".env") && is_env_file("staging.env") && !is_env_file("env.yaml"));
    }
}

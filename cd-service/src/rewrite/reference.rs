//! What an image reference is: `repository[:tag][@digest]` split and checked against the
//! distribution grammar's characters, and Flux's `$imagepolicy` setter markers. Pure: no I/O.

#[derive(Debug, PartialEq, Eq)]
pub enum PolicyField {
    Full,
    Tag,
    Name,
}

/// Reads `{"$imagepolicy": "<namespace>:<name>[:tag|:name]"}` from a comment: (name, field).
pub fn image_policy(comment: &str) -> Option<(&str, PolicyField)> {
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
    /// `repository[:tag][@digest]` in the distribution grammar's characters: a tag is 1 to 128
    /// of `[A-Za-z0-9_.-]` not starting with `.` or `-`; anything else is not a reference.
    pub fn parse(value: &'a str) -> Option<Self> {
        let (name, digest) = match value.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (value, None),
        };
        let (repository, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        let repo_ok = !repository.is_empty() && repository.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
        let tag_ok = tag.is_none_or(|t| {
            (1..=128).contains(&t.len())
                && !t.starts_with(['.', '-'])
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        });
        let digest_ok = digest.is_none_or(|d| d.contains(':') && d.bytes().all(|b| b.is_ascii_alphanumeric() || b"+._:-".contains(&b)));
        (repo_ok && tag_ok && digest_ok).then_some(Self { repository, tag, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            ImageRefParts::parse("reg:5000/a/b:t@sha256:x"),
            Some(ImageRefParts { repository: "reg:5000/a/b", tag: Some("t"), digest: Some("sha256:x") })
        );
        assert_eq!(ImageRefParts::parse("reg:5000/a"), Some(ImageRefParts { repository: "reg:5000/a", tag: None, digest: None }));
        for not_a_reference in ["", "reg/a:", "reg/a:-x", "reg/a:t=x", "reg/a:tag with space", "reg/a:ü", "reg/a@nodigest", "=reg/a"] {
            assert_eq!(ImageRefParts::parse(not_a_reference), None, "{not_a_reference:?}");
        }
    }

    #[test]
    fn reads_flux_setter_markers() {
        assert_eq!(image_policy(r#" {"$imagepolicy": "flux-system:web"}"#), Some(("web", PolicyField::Full)));
        assert_eq!(image_policy(r#"{"$imagepolicy": "ns:web:tag"}"#), Some(("web", PolicyField::Tag)));
        assert_eq!(image_policy(r#"{"$imagepolicy": "ns:web:name"}"#), Some(("web", PolicyField::Name)));
        assert_eq!(image_policy(r#"{"$imagepolicy": "ns:web:other"}"#), None);
        assert_eq!(image_policy("just a comment"), None);
    }
}

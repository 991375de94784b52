//! The safety net after a YAML splice: both versions are parsed, and the new one must be the old
//! one with exactly the replaced values changed. A file that fails this is not written.

use serde_norway::Value;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the rewritten file is not valid YAML: {0}")]
    Invalid(String),
    #[error("the rewritten file differs from the original beyond the replaced values: {0}")]
    Changed(String),
}

/// Parses every document of a YAML stream. libyaml refuses a UTF-8 byte order mark that
/// kustomize and saphyr accept; it is not content, so it is set aside.
pub fn parse_all(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_norway::Deserializer::from_str(text).map(|doc| Value::deserialize(doc).map_err(|e| e.to_string())).collect()
}

/// Checks that `new` is `old` with only `(old value, new value)` pairs of `changes` replaced.
pub fn check(old: &[Value], new_text: &str, changes: &[(usize, String, String)]) -> Result<(), VerifyError> {
    let new = parse_all(new_text).map_err(VerifyError::Invalid)?;
    if old.len() != new.len() {
        return Err(VerifyError::Changed(format!("{} documents became {}", old.len(), new.len())));
    }
    for (a, b) in old.iter().zip(&new) {
        same(a, b, changes, "")?;
    }
    Ok(())
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn same(a: &Value, b: &Value, changes: &[(usize, String, String)], path: &str) -> Result<(), VerifyError> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            if x.len() != y.len() || x.keys().zip(y.keys()).any(|(k1, k2)| k1 != k2) {
                return Err(VerifyError::Changed(format!("keys changed at {path:?}")));
            }
            for ((k, v1), v2) in x.iter().zip(y.values()) {
                let key = scalar_text(k).unwrap_or_else(|| "?".into());
                same(v1, v2, changes, &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            if x.len() != y.len() {
                return Err(VerifyError::Changed(format!("sequence length changed at {path:?}")));
            }
            x.iter().zip(y).enumerate().try_for_each(|(i, (v1, v2))| same(v1, v2, changes, &format!("{path}[{i}]")))
        }
        (Value::Tagged(x), Value::Tagged(y)) if x.tag == y.tag => same(&x.value, &y.value, changes, path),
        _ if a == b => Ok(()),
        _ => {
            let (old, new) = (scalar_text(a), scalar_text(b));
            // Every value Conveyor writes (reference, tag, digest) must read back as a string.
            // The old value as the rewriter read it: the same string, or plain text that reads as
            // the same number, bool or null (`tag: 1.10` is the float 1.1 to libyaml).
            let was = |co: &str| match a {
                Value::String(s) => s == co,
                _ => old.as_deref() == Some(co) || serde_norway::from_str::<Value>(co).is_ok_and(|v| &v == a),
            };
            let allowed = match b {
                Value::String(n) => changes.iter().any(|(_, co, cn)| was(co) && cn == n),
                _ => false,
            };
            if allowed {
                Ok(())
            } else {
                Err(VerifyError::Changed(format!("{path}: {old:?} -> {new:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_announced_changes() {
        let old = parse_all("a: {image: r/x:1}\n---\nb: [1, 2]\n").unwrap();
        let changes = vec![(1, "r/x:1".to_string(), "r/x:2".to_string())];
        assert!(check(&old, "a: {image: r/x:2}\n---\nb: [1, 2]\n", &changes).is_ok());
        assert!(matches!(check(&old, "a: {image: r/x:2}\n---\nb: [1, 3]\n", &changes), Err(VerifyError::Changed(_))));
        assert!(matches!(check(&old, "a: {image: r/x:2}\n", &changes), Err(VerifyError::Changed(_))));
        assert!(matches!(check(&old, "a: [\n", &changes), Err(VerifyError::Invalid(_))));
        let tag = parse_all("tag: \"1.0\"\n").unwrap();
        let to_number = vec![(1, "1.0".to_string(), "2024".to_string())];
        assert!(check(&tag, "tag: 2024\n", &to_number).is_err(), "a string tag must not become a number");
        assert!(check(&tag, "tag: \"2024\"\n", &to_number).is_ok());
        // A plain float tag written as a string; its old text is what the rewriter read.
        let float = parse_all("tag: 1.10\n").unwrap();
        assert!(check(&float, "tag: v2\n", &[(1, "1.10".to_string(), "v2".to_string())]).is_ok());
        assert!(check(&float, "tag: v2\n", &[(1, "1.2".to_string(), "v2".to_string())]).is_err());
        // A quote is part of a value, never trimmed away.
        let quoted = parse_all("tag: a\"\n").unwrap();
        assert!(check(&quoted, "tag: v2\n", &[(1, "a\"".to_string(), "v2".to_string())]).is_ok());
        assert!(check(&quoted, "tag: v2\n", &[(1, "a".to_string(), "v2".to_string())]).is_err());
    }
}

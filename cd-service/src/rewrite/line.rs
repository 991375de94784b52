//! One line of YAML as `[- ]key: value  # comment`, with byte offsets, so that format rules can
//! replace a value without touching anything else. Block scalars, flow collections, anchors and
//! aliases are not simple values and are never edited.

/// Byte range of a scalar value within its line (inside the quotes when quoted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    /// `"` or `'` when the value is quoted.
    pub quote: Option<u8>,
}

/// A `key: value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine<'a> {
    /// Column of the key (after any `- `).
    pub col: usize,
    /// Whether the line starts a sequence entry (`- key: value`).
    pub dash: bool,
    pub key: &'a str,
    pub value: Option<Span>,
    /// The comment after the value, without `#`.
    pub comment: Option<&'a str>,
}

impl KeyLine<'_> {
    pub fn value_str<'l>(&self, line: &'l str) -> Option<&'l str> {
        self.value.map(|s| &line[s.start..s.end])
    }
}

/// Whether a line carries no key (blank or only a comment).
pub fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Column of the first non-blank character.
pub fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
        i += 1;
    }
    i
}

pub fn parse(line: &str) -> Option<KeyLine<'_>> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    let mut dash = false;
    if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|c| *c == b' ' || *c == b'\t') {
        dash = true;
        i = skip_ws(b, i + 1);
    }
    let col = i;
    // The key: plain, or quoted.
    let (key, after_key) = match b.get(i)? {
        q @ (b'"' | b'\'') => {
            let end = line[i + 1..].find(*q as char)? + i + 1;
            (&line[i + 1..end], end + 1)
        }
        _ => {
            let len = line[i..].find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$' | '/')))?;
            (&line[i..i + len], i + len)
        }
    };
    if key.is_empty() {
        return None;
    }
    i = skip_ws(b, after_key);
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let at_end = |j: usize| j >= b.len() || b[j] == b'\n' || b[j] == b'\r';
    if !at_end(i) && b[i] != b' ' && b[i] != b'\t' {
        return None;
    }
    i = skip_ws(b, i);
    let comment_from = |j: usize| -> Option<&str> {
        let rest = &line[j..];
        let t = rest.trim_start();
        t.strip_prefix('#').map(|c| c.trim_end_matches(['\n', '\r']))
    };
    if at_end(i) {
        return Some(KeyLine { col, dash, key, value: None, comment: None });
    }
    match b[i] {
        b'#' => Some(KeyLine { col, dash, key, value: None, comment: comment_from(i) }),
        b'|' | b'>' | b'&' | b'*' | b'{' | b'[' | b'!' | b'%' | b'@' | b'`' => None,
        q @ (b'"' | b'\'') => {
            let start = i + 1;
            let len = line[start..].find(q as char)?;
            let value = &line[start..start + len];
            if q == b'"' && value.contains('\\') {
                return None;
            }
            let end = start + len;
            let rest = &line[end + 1..];
            let rest_trim = rest.trim_end_matches(['\n', '\r']).trim();
            if !(rest_trim.is_empty() || rest_trim.starts_with('#')) {
                return None;
            }
            Some(KeyLine { col, dash, key, value: Some(Span { start, end, quote: Some(q) }), comment: comment_from(end + 1) })
        }
        _ => {
            let start = i;
            let body = line[start..].trim_end_matches(['\n', '\r']);
            let mut end = start + body.len();
            let mut comment = None;
            if let Some(pos) = body.find(" #").or_else(|| body.find("\t#")) {
                end = start + pos;
                comment = comment_from(end);
            }
            let value = line[start..end].trim_end();
            if value.is_empty() {
                return None;
            }
            Some(KeyLine { col, dash, key, value: Some(Span { start, end: start + value.len(), quote: None }), comment })
        }
    }
}

/// Marks the lines that are the content of block scalars (`key: |`, `- >-`, ...): text, not
/// keys, whatever they look like.
pub fn block_scalar_lines(lines: &[&str]) -> Vec<bool> {
    let mut inside = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if opens_block_scalar(line) {
            let parent = indent(line);
            let mut j = i + 1;
            while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > parent) {
                inside[j] = true;
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    inside
}

fn opens_block_scalar(line: &str) -> bool {
    let body = line.trim_end_matches(['\n', '\r']);
    let body = match body.find(" #") {
        Some(p) => &body[..p],
        None => body,
    };
    let body = body.trim_end();
    let Some(pos) = body.rfind([' ', '\t']) else { return false };
    let token = &body[pos + 1..];
    let before = body[..pos].trim_end();
    (token.starts_with('|') || token.starts_with('>'))
        && token[1..].chars().all(|c| matches!(c, '+' | '-' | '0'..='9'))
        && (before.ends_with(':') || before.ends_with('-'))
}

/// The other `key: value` lines of the mapping that line `idx` belongs to, as (line index,
/// parsed line), the line itself included. A mapping is the lines with the same key column,
/// up to a shallower line or the next `- ` entry at that column; deeper lines are skipped.
pub fn mapping_of<'a>(lines: &'a [&'a str], idx: usize) -> Vec<(usize, KeyLine<'a>)> {
    let Some(me) = parse(lines[idx]) else { return Vec::new() };
    let col = me.col;
    let mut out = Vec::new();
    // Backwards, to the start of the mapping.
    let mut start = idx;
    if !me.dash {
        let mut j = idx;
        while j > 0 {
            j -= 1;
            let l = lines[j];
            if is_blank_or_comment(l) {
                continue;
            }
            match parse(l) {
                Some(k) if k.col == col => {
                    start = j;
                    if k.dash {
                        break;
                    }
                }
                Some(k) if k.col > col => continue,
                _ if indent(l) > col => continue,
                _ => break,
            }
        }
    }
    // Forwards from the start.
    let mut j = start;
    while j < lines.len() {
        let l = lines[j];
        if is_blank_or_comment(l) {
            j += 1;
            continue;
        }
        match parse(l) {
            Some(k) if k.col == col => {
                if k.dash && j != start {
                    break;
                }
                out.push((j, k));
            }
            Some(k) if k.col > col => {}
            _ if indent(l) > col => {}
            _ => break,
        }
        j += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_lines() {
        let l = "  - image: \"reg/app:1\"   # note\r\n";
        let k = parse(l).unwrap();
        assert_eq!((k.col, k.dash, k.key), (4, true, "image"));
        assert_eq!(k.value_str(l), Some("reg/app:1"));
        assert_eq!(k.comment.map(str::trim), Some("note"));
        assert_eq!(parse("tag: 1.0 #x\n").unwrap().value_str("tag: 1.0 #x\n"), Some("1.0"));
        assert_eq!(parse("image:\n").unwrap().value, None);
        assert!(parse("image: |\n").is_none());
        assert!(parse("just text\n").is_none());
        assert!(parse("url: http://x\n").is_some_and(|k| k.key == "url"));
        assert!(parse("a:b\n").is_none());
    }

    #[test]
    fn marks_block_scalar_content() {
        let text = "data:\n  run.sh: |\n    image: r/x:1\n\n    echo\n  next: 1\nlist:\n- >-\n  image: r/x:1\nimage: r/x:1\n";
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let inside = block_scalar_lines(&lines);
        assert_eq!(inside, vec![false, false, true, true, true, false, false, false, true, false]);
    }

    #[test]
    fn finds_the_mapping_of_a_line() {
        let text = "images:\n- name: a\n  newTag: \"1\"\n  # c\n  digest: x\n- name: b\n  newTag: 2\nother: 1\n";
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let keys = |idx| mapping_of(&lines, idx).into_iter().map(|(_, k)| k.key).collect::<Vec<_>>();
        assert_eq!(keys(2), vec!["name", "newTag", "digest"]);
        assert_eq!(keys(5), vec!["name", "newTag"]);
        let helm = "image:\n  registry: r\n  repository: app\n  nested:\n    tag: no\n  tag: 1\nservice: {}\n";
        let lines: Vec<&str> = helm.split_inclusive('\n').collect();
        assert_eq!(
            mapping_of(&lines, 2).into_iter().map(|(_, k)| k.key).collect::<Vec<_>>(),
            vec!["registry", "repository", "nested", "tag"]
        );
    }
}

//! A YAML stream as a tree of nodes with the byte range each scalar occupies in the file, built
//! from `saphyr-parser` events (a YAML 1.2 parser). Its markers count characters, not bytes, and
//! a quoted or anchored scalar's span starts at its properties and may run past its closing
//! quote; this module turns them into the exact bytes of each scalar token, which is what a
//! byte-preserving rewrite splices. Comments are not events: [`Stream::comment_after`] reads the
//! one on a token's line.

use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle};

pub type NodeId = usize;

/// How a scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Single,
    Double,
    Literal,
    Folded,
}

#[derive(Debug)]
pub struct Scalar {
    /// The value as a loader reads it.
    pub value: String,
    pub style: Style,
    /// The bytes of the token: the quotes included, properties (`&anchor`, `!tag`) excluded;
    /// for a block scalar, its content lines.
    pub token: Range<usize>,
    /// Whether it carries a tag (`!!str 012`): its value is then not resolved from the text.
    pub tagged: bool,
    /// Whether `value` was read from the file's own bytes (see [`Stream::parse`]).
    pub exact: bool,
}

#[derive(Debug)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<NodeId>),
    Map(Vec<(NodeId, NodeId)>),
    /// An alias, with the node its anchor names (none for an unknown anchor).
    Alias(Option<NodeId>),
}

/// Where and why a file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Every document of a file.
#[derive(Debug)]
pub struct Stream<'t> {
    pub text: &'t str,
    pub nodes: Vec<Node>,
    /// The root node of each document.
    pub docs: Vec<NodeId>,
    line_starts: Vec<usize>,
}

enum Frame {
    Map(NodeId, Option<NodeId>),
    Seq(NodeId),
}

impl<'t> Stream<'t> {
    pub fn parse(text: &'t str) -> Result<Self, ParseError> {
        match Self::parse_input(text, text) {
            // saphyr refuses a tab right after `:` or `-` (`key:\tvalue`), which YAML 1.2 allows
            // as separation. A space in its place keeps every offset; a scalar whose own bytes
            // changed that way is marked inexact and never rewritten.
            Err(e) if text.contains(":\t") || text.contains("-\t") => {
                let patched = text.replace(":\t", ": ").replace("-\t", "- ");
                Self::parse_input(text, &patched).map_err(|_| e)
            }
            other => other,
        }
    }

    fn parse_input(text: &'t str, input: &str) -> Result<Self, ParseError> {
        let bytes_at = CharIndex::new(text);
        let mut nodes: Vec<Node> = Vec::new();
        let mut docs = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut anchors: Vec<Option<NodeId>> = Vec::new();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));

        for event in Parser::new_from_str(input) {
            let (event, span) =
                event.map_err(|e| ParseError { line: e.marker().line(), col: e.marker().col() + 1, message: e.info().to_string() })?;
            let new = match event {
                Event::Scalar(value, style, anchor, tag) => {
                    let start = bytes_at.byte(span.start.index());
                    let end = bytes_at.byte(span.end.index());
                    let style = match style {
                        ScalarStyle::Plain => Style::Plain,
                        ScalarStyle::SingleQuoted => Style::Single,
                        ScalarStyle::DoubleQuoted => Style::Double,
                        ScalarStyle::Literal => Style::Literal,
                        ScalarStyle::Folded => Style::Folded,
                    };
                    let token = token(text, start, end, style);
                    let exact = std::ptr::eq(text, input) || text.get(token.clone()) == input.get(token.clone());
                    Some((anchor, Node::Scalar(Scalar { value: value.into_owned(), style, token, tagged: tag.is_some(), exact })))
                }
                Event::Alias(anchor) => Some((0, Node::Alias(anchors.get(anchor).copied().flatten()))),
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    let id = nodes.len();
                    nodes.push(if matches!(event, Event::SequenceStart(..)) { Node::Seq(Vec::new()) } else { Node::Map(Vec::new()) });
                    remember(&mut anchors, anchor, id);
                    stack.push(if matches!(nodes[id], Node::Seq(_)) { Frame::Seq(id) } else { Frame::Map(id, None) });
                    None
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let done = match stack.pop() {
                        Some(Frame::Map(id, _) | Frame::Seq(id)) => id,
                        None => continue,
                    };
                    attach(&mut nodes, &mut stack, &mut docs, done);
                    None
                }
                _ => None,
            };
            if let Some((anchor, node)) = new {
                let id = nodes.len();
                nodes.push(node);
                remember(&mut anchors, anchor, id);
                attach(&mut nodes, &mut stack, &mut docs, id);
            }
        }
        Ok(Stream { text, nodes, docs, line_starts })
    }

    /// The node an alias stands for (the node itself otherwise).
    pub fn resolve(&self, mut id: NodeId) -> NodeId {
        for _ in 0..64 {
            match self.nodes[id] {
                Node::Alias(Some(target)) => id = target,
                _ => break,
            }
        }
        id
    }

    pub fn scalar(&self, id: NodeId) -> Option<&Scalar> {
        match &self.nodes[self.resolve(id)] {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A block-style or flow-style scalar's value, through aliases.
    pub fn str(&self, id: NodeId) -> Option<&str> {
        self.scalar(id).map(|s| s.value.as_str())
    }

    /// The entries of a mapping, with those merged in by `<<: *anchor` (or `<<: [*a, *b]`) after
    /// its own; keys it sets itself win.
    pub fn entries(&self, id: NodeId) -> Vec<(&str, NodeId)> {
        let mut out = Vec::new();
        self.collect_entries(self.resolve(id), &mut out, 0);
        out
    }

    fn collect_entries<'s>(&'s self, id: NodeId, out: &mut Vec<(&'s str, NodeId)>, depth: usize) {
        let Node::Map(entries) = &self.nodes[id] else { return };
        let mut merges = Vec::new();
        for (k, v) in entries {
            match self.scalar(*k) {
                Some(key) if key.value == "<<" && key.style == Style::Plain => merges.push(*v),
                Some(key) if !out.iter().any(|(existing, _)| *existing == key.value) => out.push((key.value.as_str(), *v)),
                _ => {}
            }
        }
        if depth < 16 {
            for m in merges {
                match &self.nodes[self.resolve(m)] {
                    Node::Seq(items) => items.iter().for_each(|i| self.collect_entries(self.resolve(*i), out, depth + 1)),
                    _ => self.collect_entries(self.resolve(m), out, depth + 1),
                }
            }
        }
    }

    /// The value of `key` in a mapping (merges included).
    pub fn get(&self, map: NodeId, key: &str) -> Option<NodeId> {
        self.entries(map).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, byte: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= byte)
    }

    /// The comment on the line where a token ends (without `#`), if any.
    pub fn comment_after(&self, token: &Range<usize>) -> Option<&'t str> {
        let rest = &self.text[token.end..];
        // A lone CR ends a line too (YAML line breaks are LF, CRLF and CR).
        let line = &rest[..rest.find(['\n', '\r']).unwrap_or(rest.len())];
        let b = line.as_bytes();
        let mut quote = None;
        let mut i = 0;
        while i < b.len() {
            match (quote, b[i]) {
                (None, q @ (b'"' | b'\'')) => quote = Some(q),
                (Some(b'"'), b'\\') => i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, b'#') if i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t' => {
                    return Some(&line[i + 1..]);
                }
                _ => {}
            }
            i += 1;
        }
        None
    }
}

fn remember(anchors: &mut Vec<Option<NodeId>>, anchor: usize, id: NodeId) {
    if anchor == 0 {
        return;
    }
    if anchors.len() <= anchor {
        anchors.resize(anchor + 1, None);
    }
    anchors[anchor] = Some(id);
}

fn attach(nodes: &mut [Node], stack: &mut [Frame], docs: &mut Vec<NodeId>, id: NodeId) {
    match stack.last_mut() {
        Some(Frame::Seq(seq)) => {
            if let Node::Seq(items) = &mut nodes[*seq] {
                items.push(id);
            }
        }
        Some(Frame::Map(map, pending)) => match pending.take() {
            None => *pending = Some(id),
            Some(key) => {
                if let Node::Map(entries) = &mut nodes[*map] {
                    entries.push((key, id));
                }
            }
        },
        None => docs.push(id),
    }
}

/// The exact bytes of a scalar token, from the parser's span `start..end` (bytes).
fn token(text: &str, start: usize, end: usize, style: Style) -> Range<usize> {
    let b = text.as_bytes();
    let mut i = start;
    if matches!(style, Style::Literal | Style::Folded) {
        return start..end.max(start);
    }
    // Properties: `&anchor`, `!tag`, with separation (comments too) before the value.
    loop {
        match b.get(i) {
            Some(b'&' | b'!') => {
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
            }
            Some(b' ' | b'\t' | b'\n' | b'\r') if i > start => i += 1,
            Some(b'#') if i > start => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    match style {
        Style::Double | Style::Single if b.get(i) != Some(if style == Style::Double { &b'"' } else { &b'\'' }) => i..i,
        Style::Double => {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i..(j + 1).min(b.len())
        }
        Style::Single => {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == b'\'' {
                    if b.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            i..(j + 1).min(b.len())
        }
        // An empty scalar (`key: !tag` then a new line) has no bytes: never skip past its span.
        _ if i > end => end..end,
        _ => i..end,
    }
}

/// Character index to byte offset (saphyr's markers count characters).
struct CharIndex {
    /// Byte offset of each character, or empty for ASCII text (where they are the same).
    offsets: Vec<usize>,
    len: usize,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        let offsets = if text.is_ascii() { Vec::new() } else { text.char_indices().map(|(i, _)| i).collect() };
        CharIndex { offsets, len: text.len() }
    }

    fn byte(&self, index: usize) -> usize {
        if self.offsets.is_empty() {
            index.min(self.len)
        } else {
            self.offsets.get(index).copied().unwrap_or(self.len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<(String, &str, Style)> {
        let s = Stream::parse(text).unwrap();
        s.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Scalar(sc) => Some((sc.value.clone(), &text[sc.token.clone()], sc.style)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tokens_are_the_exact_bytes_of_each_scalar() {
        let text =
            "\u{feff}a: \"r/x:1\"  # c\nb: &i 'q''s'\nc: *i\nd: [{image: r/x:2}, x]\né: |\n  lit\nf: plain\n  cont\ng: !!str 012\nh:\tv\n";
        let t = tokens(text);
        let want = [
            ("a", "a", Style::Plain),
            ("r/x:1", "\"r/x:1\"", Style::Double),
            ("b", "b", Style::Plain),
            ("q's", "'q''s'", Style::Single),
            ("c", "c", Style::Plain),
            ("d", "d", Style::Plain),
            ("image", "image", Style::Plain),
            ("r/x:2", "r/x:2", Style::Plain),
            ("x", "x", Style::Plain),
            ("é", "é", Style::Plain),
            ("lit\n", "lit\n", Style::Literal),
            ("f", "f", Style::Plain),
            ("plain cont", "plain\n  cont", Style::Plain),
            ("g", "g", Style::Plain),
            ("012", "012", Style::Plain),
            ("h", "h", Style::Plain),
            ("v", "v", Style::Plain),
        ];
        let got: Vec<(&str, &str, Style)> = t.iter().map(|(v, tok, st)| (v.as_str(), *tok, *st)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn aliases_merges_lines_and_comments() {
        let text = "base: &b\n  repository: r/x\nimg: &i r/x:1 # keep\nuse:\n  <<: *b\n  tag: \"2\"  # {\"$imagepolicy\": \"ns:x:tag\"}\nref: *i\n";
        let s = Stream::parse(text).unwrap();
        let root = s.docs[0];
        let used = s.get(root, "use").unwrap();
        assert_eq!(s.entries(used).iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec!["tag", "repository"]);
        assert_eq!(s.str(s.get(used, "repository").unwrap()), Some("r/x"));
        let reference = s.get(root, "ref").unwrap();
        let img = s.scalar(reference).unwrap();
        assert_eq!((&text[img.token.clone()], s.line(img.token.start)), ("r/x:1", 3));
        assert_eq!(s.comment_after(&img.token), Some(" keep"));
        let tag = s.scalar(s.get(used, "tag").unwrap()).unwrap();
        assert_eq!(s.comment_after(&tag.token), Some(" {\"$imagepolicy\": \"ns:x:tag\"}"));
        assert!(Stream::parse("a: [\n").is_err());
        // A tab after `:` as separation parses; a quoted value holding `:\t` is inexact.
        let s = Stream::parse("a:\tv\nb: \"x:\ty\"\n").unwrap();
        let exact: Vec<(String, bool)> = s
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Scalar(sc) => Some((sc.value.clone(), sc.exact)),
                _ => None,
            })
            .collect();
        assert_eq!(exact, [("a", true), ("v", true), ("b", true), ("x: y", false)].map(|(v, e)| (v.to_string(), e)));
    }

    #[test]
    fn multi_document_streams_with_directives() {
        let s = Stream::parse("%YAML 1.2\n---\na: 1\n...\n---\nb: 2\n").unwrap();
        assert_eq!(s.docs.len(), 2);
    }
}

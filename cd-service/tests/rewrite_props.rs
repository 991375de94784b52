//! Properties of the manifest rewriter over generated manifests: random comments, quoting,
//! block or flow style, indentation, line endings, a byte order mark and unrelated keys around
//! the reference. After the rewrite the parsed document equals the original with only the image
//! value changed, and the bytes differ only inside that value's token.

use cd_service::rewrite::{verify, yaml, Target};
use proptest::prelude::*;
use serde_norway::Value;

const REPOSITORY: &str = "registry.example.com:5000/team/web";

/// One generated manifest: `before + token + after` is the text, `path` where the value sits.
#[derive(Debug, Clone)]
struct Manifest {
    before: String,
    token: String,
    after: String,
    path: Vec<String>,
    /// The value the rewrite must produce.
    new_value: String,
}

fn quote(style: u8, value: &str) -> String {
    match style {
        0 => value.to_string(),
        1 => format!("'{value}'"),
        _ => format!("\"{value}\""),
    }
}

/// Comments may hold anything printable, including what looks like keys and references (a Flux
/// marker for another policy only away from the value: on it, it would hand the value to Flux).
fn comment_text(marker: bool) -> impl Strategy<Value = String> {
    let marker = if marker { "# {\"$imagepolicy\": \"flux-system:other\"}" } else { "# {$imagepolicy}" };
    prop_oneof![
        Just(String::new()),
        "[ -~]{0,24}".prop_map(|c| format!("# {c}")),
        Just(format!("# image: {REPOSITORY}:old")),
        Just(marker.to_string()),
    ]
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,15}",
        "[0-9]{1,12}",
        "0[0-9]{11}",
        Just("1e3".to_string()),
        Just("yes".to_string()),
        Just("2026-12-02".to_string()),
        Just("0x1f".to_string()),
    ]
}

prop_compose! {
    fn manifest()(
        indent in 1usize..=4,
        crlf in any::<bool>(),
        bom in any::<bool>(),
        style in 0u8..3,
        helm in any::<bool>(),
        flow in any::<bool>(),
        old in tag(),
        new in tag(),
        c_top in comment_text(true),
        c_value in comment_text(false),
        c_between in comment_text(true),
        extra in proptest::collection::vec(("[a-z][a-zA-Z]{0,8}", "[a-zA-Z0-9 ]{0,10}", 0u8..3), 0..4),
    ) -> (Manifest, String) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let i = " ".repeat(indent);
        let sp = |c: &str| if c.is_empty() { String::new() } else { format!(" {c}") };
        // Extra keys: never one the rewriter reads (`name`, `image`, `tag`, ...).
        let extras: Vec<(String, String)> = extra
            .iter()
            .filter(|(k, _, _)| !matches!(k.as_str(), "image" | "tag" | "repository" | "registry" | "digest" | "name" | "newTag" | "newName" | "images"))
            .map(|(k, v, s)| (format!("x{k}"), quote(*s, v.trim())))
            .collect();
        let mut before = String::new();
        if bom {
            before.push('\u{feff}');
        }
        before.push_str(&format!("{c_top}{nl}apiVersion: v1{nl}kind: Pod{nl}"));
        let (token, after, path, new_value);
        if helm {
            // Helm values: `image: {repository, tag}`.
            if flow {
                before.push_str(&format!("image: {{repository: {REPOSITORY}, tag: "));
                let extra: String = extras.iter().map(|(k, v)| format!(", {k}: {v}")).collect();
                after = format!("{extra}}}{}{nl}", sp(&c_value));
            } else {
                before.push_str(&format!("image:{nl}{i}repository: {REPOSITORY}{nl}"));
                if !c_between.is_empty() {
                    before.push_str(&format!("{i}{c_between}{nl}"));
                }
                before.push_str(&format!("{i}tag: "));
                let extra: String = extras.iter().map(|(k, v)| format!("{i}{k}: {v}{nl}")).collect();
                after = format!("{}{nl}{extra}", sp(&c_value));
            }
            token = quote(style, &old);
            path = vec!["image".to_string(), "tag".to_string()];
            new_value = new.clone();
        } else {
            // A workload's container: `image: repo:tag`.
            let reference = format!("{REPOSITORY}:{old}");
            if flow {
                before.push_str(&format!("spec:{nl}{i}containers: [{{name: web, image: "));
                let extra: String = extras.iter().map(|(k, v)| format!(", {k}: {v}")).collect();
                after = format!("{extra}}}]{}{nl}", sp(&c_value));
            } else {
                before.push_str(&format!("spec:{nl}{i}containers:{nl}{i}- name: web{nl}"));
                if !c_between.is_empty() {
                    before.push_str(&format!("{i}  {c_between}{nl}"));
                }
                before.push_str(&format!("{i}  image: "));
                let extra: String = extras.iter().map(|(k, v)| format!("{i}  {k}: {v}{nl}")).collect();
                after = format!("{}{nl}{extra}", sp(&c_value));
            }
            token = quote(style, &reference);
            path = vec!["spec".into(), "containers".into(), "0".into(), "image".into()];
            new_value = format!("{REPOSITORY}:{new}");
        }
        (Manifest { before, token, after, path, new_value }, new)
    }
}

fn set(doc: &mut Value, path: &[String], value: &str) {
    let mut at = doc;
    for key in path {
        at = match key.parse::<usize>() {
            Ok(n) => &mut at[n],
            Err(_) => &mut at[key.as_str()],
        };
    }
    *at = Value::String(value.to_string());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn only_the_value_changes(case in manifest()) {
        let (m, new_tag) = case;
        let text = format!("{}{}{}", m.before, m.token, m.after);
        let original = verify::parse_all(&text);
        // A generated old value YAML would not read as a string is not a manifest anyone has.
        prop_assume!(original.is_ok());
        let mut expected = original.unwrap();
        let old_value = {
            let mut at = &expected[0];
            for key in &m.path {
                at = match key.parse::<usize>() { Ok(n) => &at[n], Err(_) => &at[key.as_str()] };
            }
            at.clone()
        };
        prop_assume!(matches!(old_value, Value::String(_)));
        let digest = format!("sha256:{}", "a".repeat(64));
        let target = Target { app: "web", repository: REPOSITORY, tag: &new_tag, digest: &digest, pin_digest: false, helm: None };

        let out = yaml::rewrite(&text, &target).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(out.references, 1, "{}", text);
        prop_assert!(out.left_behind.is_empty(), "{:?}", out.left_behind);
        // Bytes: the same before and after the token.
        prop_assert!(out.text.starts_with(&m.before) && out.text.ends_with(&m.after), "outside the value changed:\n{}\n---\n{}", text, out.text);
        let written = &out.text[m.before.len()..out.text.len() - m.after.len()];
        // Parsed: the original with only the value changed, a string however it is written.
        set(&mut expected[0], &m.path, &m.new_value);
        let parsed = verify::parse_all(&out.text).map_err(TestCaseError::fail)?;
        prop_assert_eq!(parsed, expected, "token {:?} -> {:?}", m.token, written);
        if old_value != Value::String(m.new_value.clone()) {
            prop_assert_eq!(out.changes.len(), 1);
            verify::check(&verify::parse_all(&text).unwrap(), &out.text, &out.changes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}

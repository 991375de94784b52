//! Unit tests of `yaml.rs`: each form of reference, quoting, pins, refusals.

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
    rewrite(text, &T).unwrap()
}

#[test]
fn splices_only_the_value_and_keeps_every_other_byte() {
    let before = "# app\r\napiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n    spec:\r\n      initContainers:\r\n        - name: migrate\r\n          image: \"127.0.0.1:5000/flask-app:old\"   # keep me\r\n      containers:\r\n      - name: web\r\n        image: 127.0.0.1:5000/flask-app:old # pinned by CI\r\n        ports: [{containerPort: 8080}]\r\n      - name: sidecar\r\n        image: '127.0.0.1:5000/other:old'\r\n---\r\nkind: Pod\r\nspec:\r\n  containers:\r\n  - {name: x, image: 127.0.0.1:5000/flask-app:flow}\r\n  - image:   127.0.0.1:5000/flask-app\r\n";
    let expected = before
        .replace("\"127.0.0.1:5000/flask-app:old\"", "\"127.0.0.1:5000/flask-app:abc123\"")
        .replace("image: 127.0.0.1:5000/flask-app:old #", "image: 127.0.0.1:5000/flask-app:abc123 #")
        .replace("flask-app:flow}", "flask-app:abc123}")
        .replace("image:   127.0.0.1:5000/flask-app\r\n", "image:   127.0.0.1:5000/flask-app:abc123\r\n");
    let r = rw(before);
    assert_eq!(r.text, expected);
    assert_eq!(r.references, 4, "the flow mapping too; the other repo is not ours");
    assert_eq!(r.changes.iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 12, 20, 21]);
}

#[test]
fn a_current_tag_is_a_reference_but_no_change() {
    let text = "image: 127.0.0.1:5000/flask-app:abc123\n";
    let r = rw(text);
    assert_eq!((r.references, r.changes.len(), r.text.as_str()), (1, 0, text));
}

#[test]
fn a_pinned_digest_stays_pinned_with_the_new_one() {
    assert_eq!(rw("  image: 127.0.0.1:5000/flask-app:old@sha256:dead\n").text, "  image: 127.0.0.1:5000/flask-app:abc123@sha256:feed\n");
}

#[test]
fn does_not_touch_lookalikes() {
    for line in [
        "imagePullPolicy: Always\n",
        "image: 127.0.0.1:5000/flask-app-worker:old\n",
        "# image: 127.0.0.1:5000/flask-app:old\n",
        "image: |\n",
        "script: |\n  docker run 127.0.0.1:5000/flask-app:old\n",
        "description: \"image: 127.0.0.1:5000/flask-app:old\"\n",
    ] {
        let r = rw(line);
        assert_eq!(r.text, line);
        assert_eq!((r.references, r.left_behind.len()), (0, 0), "{line:?}");
    }
}

/// A scalar that is exactly a reference to the image, under a key no shape covers, is never
/// skipped in silence: it is named, unless a pin keeps it on purpose.
#[test]
fn an_exact_reference_under_another_key_is_left_behind_by_name() {
    let text =
        "spec:\n  env:\n    - name: SELF\n      value: 127.0.0.1:5000/flask-app:old\n  myimage: '127.0.0.1:5000/flask-app@sha256:dead'\n";
    let r = rw(text);
    assert_eq!(r.text, text);
    assert_eq!(r.references, 2);
    assert_eq!(r.left_behind.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![4, 5]);
    assert!(r.left_behind[0].1.starts_with("`value` holds 127.0.0.1:5000/flask-app:old, which is not a field"), "{:?}", r.left_behind);
    let pinned = rw("myimage: 127.0.0.1:5000/flask-app:old # conveyor:pin\n");
    assert_eq!((pinned.left_behind.len(), pinned.pinned.clone()), (0, vec![1]));
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
    assert_eq!(rewrite(text, &t).unwrap().text, "image:\n  repository: 127.0.0.1:5000/flask-app\n  tag: \"1.10\"\n");
}

/// The outage: an all-digit short SHA with a leading zero written plain is an integer to
/// kustomize (YAML 1.2), which then refuses `newTag`. Every misread form is quoted, in the
/// file's own quote style; a tag every loader reads as a string stays plain.
#[test]
fn tags_any_yaml_loader_would_misread_are_quoted_in_the_files_style() {
    let k = "images:\n  - name: 127.0.0.1:5000/flask-app\n    newTag: old\n";
    for tag in ["012345678901", "123456789012", "1e3", "0x1f", "yes", "off", "2026-12-02", "1_000"] {
        let t = Target { tag, ..T };
        assert_eq!(rewrite(k, &t).unwrap().text, k.replace("newTag: old", &format!("newTag: \"{tag}\"")), "{tag}");
    }
    let single = "labels:\n  team: 'web'\nimages:\n  - name: 127.0.0.1:5000/flask-app\n    newTag: old\n";
    let t = Target { tag: "012345678901", ..T };
    assert_eq!(rewrite(single, &t).unwrap().text, single.replace("newTag: old", "newTag: '012345678901'"), "the file quotes with '");
    let t = Target { tag: "0a1b2c3d4e5f", ..T };
    assert_eq!(rewrite(k, &t).unwrap().text, k.replace("newTag: old", "newTag: 0a1b2c3d4e5f"), "a string to every loader");
}

#[test]
fn kustomize_images_entries() {
    let k = "resources:\n  - deployment.yaml\nimages:\n  - name: flask-app\n    newName: 127.0.0.1:5000/flask-app\n    newTag: old\n  - name: 127.0.0.1:5000/flask-app-worker\n    newTag: keep\n  - name: 127.0.0.1:5000/flask-app\n    digest: sha256:dead\n";
    let r = rewrite(k, &T).unwrap();
    assert_eq!(r.text, k.replace("newTag: old", "newTag: abc123").replace("sha256:dead", "sha256:feed"));
    assert_eq!(r.references, 2);
    let elsewhere = "spec:\n  name: 127.0.0.1:5000/flask-app\n  newTag: old\n";
    assert_eq!(rewrite(elsewhere, &T).unwrap().references, 0, "name/newTag count in `images:` entries only");
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
    let text = "a:\n  image: 127.0.0.1:5000/flask-app:1.0 # conveyor:pin incident-42\nb:\n  image: 127.0.0.1:5000/flask-app:${IMAGE_TAG}\n";
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
    let r = rewrite(text, &t).unwrap();
    assert_eq!(r.text, text.replacen("\"1.0\"", "\"abc123\"", 1));
    assert_eq!(r.references, 1);
    let other = text.replace("127.0.0.1:5000/flask-app", "127.0.0.1:5000/other");
    assert_eq!(rewrite(&other, &t).unwrap().text, other, "another image's values are left alone");
}

#[test]
fn pin_digest_adds_the_digest_to_plain_references() {
    let t = Target { pin_digest: true, ..T };
    assert_eq!(rewrite("image: 127.0.0.1:5000/flask-app:old\n", &t).unwrap().text, "image: 127.0.0.1:5000/flask-app:abc123@sha256:feed\n");
}

/// Inputs `benches/fuzz-rewrite` found, each once a wrong rewrite or a second rewrite that
/// disagreed with the first.
#[test]
fn fuzz_findings_stay_fixed() {
    let t = Target { repository: "registry.example.com/team/web", ..T };
    // A quoted value holding `:<tab>` is read through the tab work-around: never rewritten.
    let tab = "image: {repository: registry.example.com/team/web, tag: \"1.:\t0.0\"}\nx:\ty\n";
    let r = rewrite(tab, &t).unwrap();
    assert_eq!((r.text.as_str(), r.changes.len(), r.left_behind.len()), (tab, 0, 1), "{:?}", r.left_behind);
    // `=` and non-ASCII are no tag: not a reference, not "name=reference".
    let odd = "spec:\n  containers:\n    - image: registry.example.com/team/web:1ha=x.0\n";
    assert_eq!(rewrite(odd, &t).unwrap().references, 0);
    // An empty tagged value followed by a marked line: the marker belongs to the next value.
    let empty = "apiVersion: !pps/v0\nkind: old:1 # {\"$imagepolicy\": \"flux-system:flask-app\"}\n";
    let first = rewrite(empty, &t).unwrap();
    assert_eq!(
        first.text,
        "apiVersion: !pps/v0\nkind: registry.example.com/team/web:abc123 # {\"$imagepolicy\": \"flux-system:flask-app\"}\n"
    );
    let second = rewrite(&first.text, &t).unwrap();
    assert_eq!((second.references, second.changes.len(), second.left_behind.len()), (first.references, 0, 0));
    // An empty block scalar has no bytes to rewrite, and the next line's comment is not its own.
    let block = "e: |\nimage: old:1 # {\"$imagepolicy\": \"flux-system:flask-app\"}\n";
    let r = rewrite(block, &t).unwrap();
    assert!(r.changes.iter().all(|(line, old, _)| *line == 2 && old == "old:1"), "{:?}", r.changes);
    // A lone CR ends a line: a comment after it belongs to the next value, not to this one.
    let cr = "a:\n  b/v2\rkind: x # {\"$imagepolicy\": \"flux-system:flask-app:tag\"}\n";
    let cr_line = "a:\n  b: v2\rkind: x # {\"$imagepolicy\": \"flux-system:flask-app:tag\"}\n";
    for text in [cr, cr_line] {
        if let Ok(r) = rewrite(text, &t) {
            assert!(r.changes.iter().all(|(_, old, _)| old == "x"), "{text:?}: {:?}", r.changes);
        }
    }
}

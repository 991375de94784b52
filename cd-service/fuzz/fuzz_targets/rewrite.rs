//! Arbitrary bytes through the manifest rewriter, as `rewrite_scope` uses it: it never panics; a
//! rewrite with no change returns the text as it was; and a rewrite that passes the verification
//! guarding each write (the new file parses and differs from the old one only in the replaced
//! values) is idempotent: rewriting its output changes nothing and finds the same references.
//! A rewrite that fails verification is not written by cd-service (the environment is refused
//! with the reason); on malformed input saphyr and libyaml can disagree, and that is where it
//! happens. Bytes that are not UTF-8 are tried as lossy text.
#![no_main]

use cd_service::rewrite::{verify, yaml, Target};
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first byte picks the new tag, so quoting is exercised too.
    let tag = ["v2.0.1", "012345678901", "1e3", "yes", "891753e98625"][data.first().map_or(0, |b| *b as usize % 5)];
    for helm in [None, Some(("web.deployment.imageRepo", "web.deployment.imageVersion"))] {
        let target = Target { app: "web", repository: "registry.example.com/team/web", tag, digest: DIGEST, pin_digest: false, helm };
        let Ok(out) = yaml::rewrite(&text, &target) else { continue };
        if out.changes.is_empty() {
            assert_eq!(out.text, text, "no change, yet the text differs");
            continue;
        }
        let Ok(old) = verify::parse_all(&text) else { continue };
        if verify::check(&old, &out.text, &out.changes).is_err() {
            continue;
        }
        let again = yaml::rewrite(&out.text, &target).expect("a verified rewrite parses again");
        assert!(again.changes.is_empty(), "not idempotent: {:?}\n--- before\n{text}\n--- after\n{}", again.changes, out.text);
        assert_eq!(again.references, out.references, "other references the second time\n--- before\n{text}\n--- after\n{}", out.text);
    }
});

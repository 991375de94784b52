//! The golden corpus of manifest rewrites (`tests/fixtures/golden/<case>/`): each case's
//! `before/` tree is rewritten for one image and must equal its `after/` tree byte for byte, or,
//! where the case has a `refused` file, must be refused with each reason listed there and leave
//! every file as it was. A rewritten tree rewritten again changes nothing. Optional per case:
//! `tag` (the new tag; default `v2.0.1`) and `helm` (configured Helm key paths).
//!
//! `CONVEYOR_BLESS=1 cargo test -p cd-service --test golden` writes the `after/` trees from what
//! the rewriter produces; read every diff before committing one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use cd_service::rewrite::{rewrite_tree, RewriteError, Target};

const REPOSITORY: &str = "registry.example.com/team/web";

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(dir).unwrap().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn write_tree(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn read_opt(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim_end().to_string())
}

#[test]
fn every_golden_case_is_rewritten_to_its_after_tree_or_refused_whole() {
    let bless = std::env::var_os("CONVEYOR_BLESS").is_some();
    let digest = format!("sha256:{}", "2".repeat(64));
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden()).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut refusals = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let tag = read_opt(case.join("tag")).unwrap_or_else(|| "v2.0.1".to_string());
        let helm = read_opt(case.join("helm"));
        let helm = helm.as_deref().map(|h| h.split_once(' ').expect("helm: <repository path> <tag path>"));
        let target = Target { app: "web", repository: REPOSITORY, tag: &tag, digest: &digest, pin_digest: false, helm };
        let before = tree(&case.join("before"));
        let work = tempfile::tempdir().unwrap();
        write_tree(work.path(), &before);
        let result = rewrite_tree(work.path(), &target);

        if let Some(reasons) = read_opt(case.join("refused")) {
            refusals += 1;
            let err = match result {
                Err(e @ RewriteError::LeftBehind { .. }) => e.to_string(),
                other => panic!("{name}: expected a refusal, got {other:?}"),
            };
            for reason in reasons.lines() {
                assert!(err.contains(reason), "{name}: the refusal names {reason:?}:\n{err}");
            }
            assert_eq!(tree(work.path()), before, "{name}: a refused rewrite writes nothing");
            continue;
        }
        let result = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!result.changes.is_empty(), "{name}: every accepted case changes something");
        let after = tree(work.path());
        if bless {
            let _ = std::fs::remove_dir_all(case.join("after"));
            write_tree(&case.join("after"), &after);
        }
        let want = tree(&case.join("after"));
        for (rel, bytes) in &want {
            assert_eq!(
                String::from_utf8_lossy(&after[rel]),
                String::from_utf8_lossy(bytes),
                "{name}/{rel} differs from tests/fixtures/golden/{name}/after/{rel}"
            );
        }
        assert_eq!(after.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: the same files");

        let again = rewrite_tree(work.path(), &target).unwrap_or_else(|e| panic!("{name}, second run: {e}"));
        assert!(again.changes.is_empty(), "{name}: a second rewrite changes nothing: {:?}", again.changes);
        assert_eq!(again.references, result.references, "{name}: the same references are found again");
    }
    assert!(refusals >= 4, "refusal cases: {refusals}");
}

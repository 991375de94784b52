//! The GitOps side in `k8s-manifests/`, checked the way a cluster would see it, offline:
//! `dev/check-manifests` builds every kustomization with the real kustomize, validates what it
//! renders and every other manifest strictly against the Kubernetes 1.31 schemas, and the Argo CD
//! and Flux objects against validators generated from their API types. The overlays render what
//! each environment should run, and broken manifests are refused with the field or path named.

use std::{path::Path, process::Command};

use conveyor_e2e::kustomize_build;
use conveyor_testkit::{copy_tree, repo_root};
use serde_norway::Value;

fn check(dir: &Path) -> (bool, String) {
    let out = Command::new(repo_root().join("dev/check-manifests")).arg(dir).output().expect("run dev/check-manifests");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_manifest_validates_as_the_cluster_would_see_it() {
    let (ok, text) = check(&repo_root().join("k8s-manifests"));
    println!("{text}");
    assert!(ok, "{text}");
    for object in [
        // What the two overlays render (Argo CD and Flux apply these, not the files).
        "Namespace/flask-app-staging ",
        "Deployment/flask-app-staging/flask-app ",
        "Service/flask-app-staging/flask-app ",
        "Deployment/flask-app-production/flask-app ",
        // The GitOps controllers' objects.
        "AppProject/argocd/flask-app ",
        "Application/argocd/flask-app-staging ",
        "Application/argocd/flask-app-production ",
        "GitRepository/flux-system/manifests ",
        "Kustomization/flux-system/flask-app-staging ",
        "Kustomization/flux-system/flask-app-production ",
        // Conveyor itself in a cluster.
        "Deployment/conveyor/ci-service ",
        "Deployment/conveyor/cd-service ",
        "StatefulSet/conveyor/nats ",
        "ConfigMap/conveyor/conveyor ",
    ] {
        assert!(text.lines().any(|l| l.starts_with("ok ") && l.contains(object)), "{object}was validated:\n{text}");
    }
    assert!(!text.contains("INVALID"), "{text}");
}

fn deployment(docs: &[Value]) -> &Value {
    docs.iter().find(|d| d["kind"] == "Deployment").expect("the overlay renders a Deployment")
}

#[test]
fn each_overlay_renders_its_environment_from_the_shared_base() {
    let root = repo_root().join("k8s-manifests/apps/flask-app/overlays");
    let staging = kustomize_build(&root.join("staging")).unwrap();
    let production = kustomize_build(&root.join("production")).unwrap();

    for (docs, env, replicas) in [(&staging, "staging", 1), (&production, "production", 3)] {
        let d = deployment(docs);
        assert_eq!(d["metadata"]["namespace"].as_str(), Some(format!("flask-app-{env}").as_str()));
        assert_eq!(d["spec"]["replicas"].as_u64(), Some(replicas), "{env}");
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        // The tag comes from the overlay's `images:`, the one place cd-service rewrites.
        assert_eq!(container["image"].as_str(), Some("127.0.0.1:5000/flask-app:initial"), "{env}");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"), "{env}: the base's probes");
        assert!(docs.iter().any(|o| o["kind"] == "Namespace" && o["metadata"]["name"].as_str() == Some(&format!("flask-app-{env}"))));
        assert!(docs.iter().any(|o| o["kind"] == "Service" && o["metadata"]["namespace"].as_str() == Some(&format!("flask-app-{env}"))));
    }
    let resources = |docs: &[Value]| deployment(docs)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"].clone();
    assert_eq!(resources(&staging).as_str(), Some("50m"), "staging keeps the base's requests");
    assert_eq!(resources(&production).as_str(), Some("200m"), "production's patch raises them");
    assert!(deployment(&production)["spec"]["template"]["spec"]["topologySpreadConstraints"].is_sequence());

    // conveyor.yaml sends builds to staging and leaves production to promotions.
    let config: Value = serde_norway::from_str(&std::fs::read_to_string(repo_root().join("k8s-manifests/conveyor.yaml")).unwrap()).unwrap();
    let envs = &config["apps"]["flask-app"]["environments"];
    assert_eq!(envs["staging"]["policy"].as_str(), Some("auto"));
    assert_eq!(envs["production"]["policy"].as_str(), Some("manual"));
    assert_eq!(envs["staging"]["paths"][0].as_str(), Some("apps/flask-app/overlays/staging"));
}

/// One edit to a copied tree: the file, the text replaced, its replacement, and the error line
/// `dev/check-manifests` must print for it.
const BREAKAGES: &[(&str, &str, &str, &str)] = &[
    (
        "argocd/flask-app.yaml",
        "    targetRevision: main\n    path: apps/flask-app/overlays/staging",
        "    targetRevison: main\n    path: apps/flask-app/overlays/staging",
        "/spec/source/targetRevison: unknown field",
    ),
    (
        "argocd/flask-app.yaml",
        "      selfHeal: true\n    retry:",
        "      selfHeal: \"yes\"\n    retry:",
        "/spec/syncPolicy/automated/selfHeal must be boolean",
    ),
    (
        "argocd/flask-app.yaml",
        "    path: apps/flask-app/overlays/production",
        "    path: apps/flask-app/overlays/prod",
        "syncs 'apps/flask-app/overlays/prod', which is not a kustomization directory",
    ),
    (
        "flux/flask-app.yaml",
        "  ref:\n    branch: main\n  interval: 1m",
        "  ref:\n    branch: main",
        "must have required property \"interval\"",
    ),
    (
        "flux/flask-app.yaml",
        "  dependsOn:\n    - name: flask-app-staging\n  sourceRef:\n    kind: GitRepository",
        "  dependsOn:\n    - name: flask-app-staging\n  sourceRef:\n    kind: GitRepo",
        "/spec/sourceRef/kind must be one of",
    ),
    ("apps/flask-app/overlays/staging/kustomization.yaml", "  - ../../base\n", "  - ../../bases\n", "(kustomize build)"),
    (
        "apps/flask-app/overlays/production/resources.yaml",
        "        - maxSkew: 1",
        "        - maxSkew: one",
        "Deployment/flask-app-production/flask-app",
    ),
    ("conveyor/cd-service.yaml", "readinessProbe:", "readinesProbe:", "Deployment/conveyor/cd-service"),
];

#[test]
fn broken_manifests_are_refused_with_the_field_or_path_named() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("k8s-manifests");
    copy_tree(&repo_root().join("k8s-manifests"), &tree);
    for (file, from, to, _) in BREAKAGES {
        let path = tree.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} holds {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    std::fs::write(tree.join("widget.yaml"), "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n").unwrap();

    let (ok, text) = check(&tree);
    println!("{text}");
    assert!(!ok, "a broken tree is refused:\n{text}");
    let invalid: Vec<&str> = text.lines().filter(|l| l.starts_with("INVALID")).collect();
    for (file, _, _, expected) in BREAKAGES {
        assert!(text.contains(expected), "{file}: {expected:?} is reported:\n{text}");
    }
    assert!(text.contains("no schema for example.com/v1/Widget"), "{text}");
    // Eight breakages in seven objects (one Application has two), one unknown kind; a failed
    // kustomize build is one line. Everything else still validates.
    assert_eq!(invalid.len(), 8, "{text}");
    assert!(
        text.contains("Kustomization/flux-system/flask-app-staging") && text.contains("ok      Service/flask-app-production/flask-app"),
        "{text}"
    );
}

/// The outage behind issue 14: a short SHA of digits with a leading zero, written plain, is an
/// integer to kustomize (YAML 1.2), which then refuses the overlay. cd-service's rewrite quotes
/// it, and the real kustomize renders the new image.
#[test]
fn a_tag_kustomize_would_read_as_a_number_is_written_so_that_it_builds() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("k8s-manifests/apps/flask-app"), &dir.path().join("flask-app"));
    let overlay = dir.path().join("flask-app/overlays/staging");
    let file = overlay.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("newTag: initial"), "{text}");

    // Control: written plain, kustomize refuses it.
    std::fs::write(&file, text.replace("newTag: initial", "newTag: 012345678901")).unwrap();
    let refused = kustomize_build(&overlay).expect_err("kustomize refuses a numeric newTag");
    assert!(refused.to_string().contains("newTag") || refused.to_string().contains("number"), "{refused}");

    for tag in ["012345678901", "123456789012", "1e3", "yes"] {
        let target = cd_service::rewrite::Target {
            app: "flask-app",
            repository: "127.0.0.1:5000/flask-app",
            tag,
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            pin_digest: false,
            helm: None,
        };
        let rewritten = cd_service::rewrite::yaml::rewrite(&text, &target).unwrap();
        std::fs::write(&file, &rewritten.text).unwrap();
        let docs = kustomize_build(&overlay).unwrap_or_else(|e| panic!("{tag}: {e}\n{}", rewritten.text));
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
        let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
        assert_eq!(image, format!("127.0.0.1:5000/flask-app:{tag}"), "{}", rewritten.text);
    }
}

/// Every kustomization of cd-service's golden corpus (`cd-service/tests/fixtures/golden/*/after`)
/// is built by the real kustomize after the rewrite: it succeeds, and every container of the
/// image renders the new tag (quoted or not in the file, a string to kustomize).
#[test]
fn every_golden_kustomization_builds_after_the_rewrite_and_renders_the_new_image() {
    let golden = repo_root().join("cd-service/tests/fixtures/golden");
    let mut built = Vec::new();
    for case in std::fs::read_dir(&golden).unwrap().map(|e| e.unwrap().path()) {
        let after = case.join("after");
        if !after.join("kustomization.yaml").exists() {
            continue;
        }
        let tag = std::fs::read_to_string(case.join("tag")).map(|t| t.trim().to_string()).unwrap_or_else(|_| "v2.0.1".into());
        let docs = kustomize_build(&after).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let images: Vec<String> = docs
            .iter()
            .flat_map(|d| {
                let spec = &d["spec"]["template"]["spec"];
                ["initContainers", "containers"]
                    .into_iter()
                    .flat_map(|k| spec[k].as_sequence().cloned().unwrap_or_default())
                    .filter_map(|c| c["image"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .filter(|i| i.starts_with("registry.example.com/team/web:") || i.starts_with("registry.example.com/team/web@"))
            .collect();
        assert!(!images.is_empty(), "{}: no container of the image rendered", case.display());
        for image in &images {
            assert!(image.starts_with(&format!("registry.example.com/team/web:{tag}")), "{}: renders {image}", case.display());
        }
        built.push(case.file_name().unwrap().to_string_lossy().to_string());
    }
    built.sort();
    println!("built: {built:?}");
    assert!(built.len() >= 7, "{built:?}");
}

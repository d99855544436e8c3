//! Every manifest in `examples/` parses into the Rust types, and every invalid
//! fixture in `crds/testdata/invalid/` names the API server message it expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::PathBuf;

use tollgate_crds::manifest::{Manifest, read_manifest_dir, read_manifest_file};
use tollgate_crds::provider::ProviderApi;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_example_parses_and_every_kind_has_one() {
    let objects = read_manifest_dir(&root().join("examples")).unwrap();
    let kinds: std::collections::BTreeSet<&str> = objects.iter().map(|(_, m)| m.kind()).collect();
    for kind in [
        "LLMProvider",
        "EgressPolicy",
        "EgressQuota",
        "ClusterEgressQuota",
        "TrustAnchor",
        "RecorderConfig",
        "Secret",
    ] {
        assert!(kinds.contains(kind), "no example of {kind}");
    }
    let unknown: Vec<_> = objects
        .iter()
        .filter(|(_, m)| matches!(m, Manifest::Other { .. }))
        .collect();
    assert!(
        unknown.is_empty(),
        "examples hold kinds the types do not know: {unknown:?}"
    );
}

#[test]
fn quickstart_is_offline_and_complete() {
    let objects = read_manifest_dir(&root().join("examples/quickstart")).unwrap();
    let providers: Vec<_> = objects
        .iter()
        .filter_map(|(_, m)| {
            if let Manifest::LLMProvider(p) = m {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    assert!(!providers.is_empty());
    assert!(
        providers.iter().all(|p| p.spec.api == ProviderApi::DryRun),
        "the quickstart must never dial out"
    );
    let policy = objects
        .iter()
        .find_map(|(_, m)| {
            if let Manifest::EgressPolicy(p) = m {
                Some(p)
            } else {
                None
            }
        })
        .unwrap();
    for rule in &policy.spec.allow {
        assert!(
            providers
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(&rule.provider_ref)),
            "policy refers to a missing provider {}",
            rule.provider_ref
        );
    }
    assert!(
        objects
            .iter()
            .any(|(_, m)| matches!(m, Manifest::EgressQuota(_)))
    );
}

#[test]
fn invalid_fixtures_parse_as_yaml_and_state_their_expected_message() {
    let dir = root().join("crds/testdata/invalid");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("# expect: ") && first.len() > 12,
            "{} must start with '# expect: <message>'",
            path.display()
        );
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert_eq!(docs.len(), 1, "{}: one object per fixture", path.display());
        assert_eq!(docs[0]["apiVersion"], "tollgate.dev/v1alpha1");
        count += 1;
    }
    assert!(
        count >= 30,
        "expected a fixture per CEL rule and enum, found {count}"
    );
}

#[test]
fn quickstart_provider_file_round_trips() {
    let objects = read_manifest_file(&root().join("examples/quickstart/provider.yaml")).unwrap();
    let Manifest::LLMProvider(p) = &objects[0] else {
        panic!("expected a provider")
    };
    let json = serde_json::to_value(p.as_ref()).unwrap();
    let back: tollgate_crds::LLMProvider = serde_json::from_value(json).unwrap();
    assert_eq!(&back, p.as_ref());
    assert_eq!(p.spec.find_model("mini").unwrap().name, "gpt-4o-mini");
}

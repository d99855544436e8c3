//! Golden tests of compilation: the examples compile to the committed JSON.
//! Set `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::path::PathBuf;

use tollgate_crds::compile::{ClusterObjects, compile_namespace_config};
use tollgate_crds::manifest::{Manifest, read_manifest_dir};
use tollgate_crds::{ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, TrustAnchor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Default)]
struct Objects {
    providers: Vec<LLMProvider>,
    policies: Vec<EgressPolicy>,
    quotas: Vec<EgressQuota>,
    cluster_quotas: Vec<ClusterEgressQuota>,
    anchors: Vec<TrustAnchor>,
}

impl Objects {
    fn load(dir: &str, namespace: &str) -> Self {
        let mut o = Objects::default();
        for (_, m) in read_manifest_dir(&root().join(dir)).unwrap() {
            match m {
                Manifest::LLMProvider(p) => o.providers.push(*p),
                Manifest::EgressPolicy(mut p) => {
                    p.metadata.namespace = Some(namespace.into());
                    o.policies.push(*p);
                }
                Manifest::EgressQuota(mut q) => {
                    q.metadata.namespace = Some(namespace.into());
                    o.quotas.push(*q);
                }
                Manifest::ClusterEgressQuota(q) => o.cluster_quotas.push(*q),
                Manifest::TrustAnchor(a) => o.anchors.push(*a),
                _ => {}
            }
        }
        o
    }
    fn view(&self) -> ClusterObjects<'_> {
        ClusterObjects {
            providers: &self.providers,
            policies: &self.policies,
            quotas: &self.quotas,
            cluster_quotas: &self.cluster_quotas,
            trust_anchors: &self.anchors,
        }
    }
}

fn governed_labels() -> BTreeMap<String, String> {
    [("tollgate.dev/inject".to_string(), "enabled".to_string())].into()
}

fn check_golden(name: &str, actual: &str) {
    let path = root().join("crds/testdata/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
        panic!(
            "{name} differs from the golden file (rerun with UPDATE_GOLDEN=1 if intended):\n{}",
            diff.unified_diff()
        );
    }
}

#[test]
fn quickstart_compiles_to_golden_config() {
    let objects = Objects::load("examples/quickstart", "demo");
    let compiled = compile_namespace_config("demo", &governed_labels(), objects.view());
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    check_golden(
        "quickstart.json",
        &(serde_json::to_string_pretty(&compiled.config).unwrap() + "\n"),
    );
}

#[test]
fn kinds_compile_to_golden_config_with_trust_and_cluster_quota() {
    let objects = Objects::load("examples/kinds", "chat");
    let compiled = compile_namespace_config("chat", &governed_labels(), objects.view());
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let c = &compiled.config;
    assert_eq!(c.providers[0].upstream_trust[0].spki_pins.len(), 1);
    assert_eq!(
        c.quotas.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(),
        ["chat/batch-jobs", "cluster/all-teams"]
    );
    check_golden(
        "kinds.json",
        &(serde_json::to_string_pretty(c).unwrap() + "\n"),
    );
}

#[test]
fn a_limit_with_an_unknown_or_misplaced_time_zone_is_reported_and_left_out() {
    let mut objects = Objects::load("examples/kinds", "chat");
    let limit = &mut objects.quotas[0].spec.limits[0];
    limit.time_zone = Some("Mars/Olympus_Mons".into());
    let compiled = compile_namespace_config("chat", &governed_labels(), objects.view());
    let problem = &compiled.problems[0];
    assert_eq!(
        (problem.reason, problem.object.as_str()),
        ("InvalidLimit", "EgressQuota/chat/batch-jobs")
    );
    assert!(
        problem
            .message
            .contains("\"Mars/Olympus_Mons\" is not a time zone"),
        "{}",
        problem.message
    );
    assert!(
        !compiled
            .config
            .quotas
            .iter()
            .any(|q| q.id == "chat/batch-jobs"),
        "never counted in UTC instead"
    );

    let limit = &mut objects.quotas[0].spec.limits[0];
    limit.time_zone = Some("Asia/Tokyo".into());
    limit.window = None;
    limit.rolling = Some("24h".into());
    let compiled = compile_namespace_config("chat", &governed_labels(), objects.view());
    assert!(
        compiled.problems[0]
            .message
            .contains("timeZone applies to a calendar window"),
        "{:?}",
        compiled.problems
    );
}

#[test]
fn a_model_pricing_a_service_tier_twice_makes_the_provider_unusable() {
    let mut objects = Objects::load("examples/quickstart", "demo");
    let tier = tollgate_wire::pricing::ServiceTierPricing {
        name: "flex".into(),
        ..Default::default()
    };
    objects.providers[0].spec.models[0].pricing.service_tiers = vec![tier.clone(), tier];
    let compiled = compile_namespace_config("demo", &governed_labels(), objects.view());
    assert_eq!(compiled.problems[0].reason, "InvalidPricing");
    assert!(
        compiled.problems[0]
            .message
            .contains("service tier \"flex\" twice"),
        "{}",
        compiled.problems[0].message
    );
    assert!(compiled.config.providers.is_empty());
}

#[test]
fn cluster_quota_applies_only_to_selected_namespaces() {
    let objects = Objects::load("examples/kinds", "chat");
    let compiled = compile_namespace_config("chat", &BTreeMap::new(), objects.view());
    assert_eq!(
        compiled
            .config
            .quotas
            .iter()
            .map(|q| q.id.as_str())
            .collect::<Vec<_>>(),
        ["chat/batch-jobs"]
    );
}

#[test]
fn policies_of_other_namespaces_are_ignored() {
    let objects = Objects::load("examples/quickstart", "demo");
    let compiled = compile_namespace_config("other", &governed_labels(), objects.view());
    assert!(
        compiled.config.policies.is_empty()
            && compiled.config.providers.is_empty()
            && compiled.config.quotas.is_empty()
    );
}

#[test]
fn missing_provider_is_left_out_and_reported() {
    let mut objects = Objects::load("examples/quickstart", "demo");
    objects.providers.clear();
    let compiled = compile_namespace_config("demo", &governed_labels(), objects.view());
    assert_eq!(compiled.problems.len(), 1);
    assert_eq!(compiled.problems[0].reason, "ProviderNotFound");
    assert_eq!(compiled.problems[0].object, "EgressPolicy/demo/default");
    assert!(
        compiled.config.policies[0].routes.is_empty(),
        "fail closed: nothing routes to a missing provider"
    );
}

#[test]
fn missing_trust_anchor_makes_the_provider_unusable() {
    let mut objects = Objects::load("examples/kinds", "chat");
    objects.anchors.clear();
    let compiled = compile_namespace_config("chat", &governed_labels(), objects.view());
    assert!(
        compiled
            .problems
            .iter()
            .any(|p| p.reason == "TrustAnchorNotFound" && p.object == "LLMProvider/openai")
    );
    assert!(compiled.config.providers.is_empty());
}

#[test]
fn policy_hash_is_stable_and_tracks_changes() {
    let objects = Objects::load("examples/quickstart", "demo");
    let a = compile_namespace_config("demo", &governed_labels(), objects.view()).config;
    let b = compile_namespace_config("demo", &governed_labels(), objects.view()).config;
    assert_eq!(a.policy_hash, b.policy_hash);
    assert_eq!(a.policy_hash.len(), 64);
    let mut changed = Objects::load("examples/quickstart", "demo");
    changed.policies[0].spec.guards.max_request_bytes += 1;
    let c = compile_namespace_config("demo", &governed_labels(), changed.view()).config;
    assert_ne!(a.policy_hash, c.policy_hash);
    assert_eq!(tollgate_wire::config::policy_hash(&c), c.policy_hash);
}

#[test]
fn config_round_trips_and_rejects_unknown_fields() {
    let objects = Objects::load("examples/quickstart", "demo");
    let config = compile_namespace_config("demo", &governed_labels(), objects.view()).config;
    let json = serde_json::to_value(&config).unwrap();
    let back: tollgate_wire::config::GatewayConfig = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, config);
    let mut extra = json;
    extra["surprise"] = serde_json::json!(1);
    assert!(serde_json::from_value::<tollgate_wire::config::GatewayConfig>(extra).is_err());
}

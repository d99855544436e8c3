//! Snapshot-style checks of every generated CRD schema: the properties users
//! rely on (`kubectl get` columns, short names, status, CEL rules, docs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use tollgate_crds::generate::all_crds;

fn schema(crd: &CustomResourceDefinition) -> Value {
    let v = &crd.spec.versions[0];
    serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn count_rules(v: &Value) -> usize {
    let here = v
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let children: usize = match v {
        Value::Object(map) => map.values().map(count_rules).sum(),
        Value::Array(items) => items.iter().map(count_rules).sum(),
        _ => 0,
    };
    here + children
}

/// Every property under spec and status has a description (kubectl explain text).
fn undocumented(path: &str, v: &Value, out: &mut Vec<String>) {
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let p = format!("{path}.{name}");
            if child
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(p.clone());
            }
            undocumented(&p, child, out);
        }
    }
    if let Some(items) = v.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
}

#[test]
fn six_kinds_in_one_group_and_version() {
    let crds = all_crds();
    let kinds: Vec<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "LLMProvider",
            "EgressPolicy",
            "EgressQuota",
            "ClusterEgressQuota",
            "TrustAnchor",
            "RecorderConfig"
        ]
    );
    let scopes: Vec<&str> = crds.iter().map(|c| c.spec.scope.as_str()).collect();
    assert_eq!(
        scopes,
        [
            "Cluster",
            "Namespaced",
            "Namespaced",
            "Cluster",
            "Cluster",
            "Cluster"
        ]
    );
    for crd in &crds {
        assert_eq!(crd.spec.group, "tollgate.dev");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert!(crd.spec.versions[0].served && crd.spec.versions[0].storage);
    }
}

#[test]
fn every_kind_has_columns_short_names_category_and_status() {
    for crd in all_crds() {
        let kind = &crd.spec.names.kind;
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        assert!(!short.is_empty(), "{kind} has no short name");
        assert_eq!(
            crd.spec.names.categories.clone().unwrap_or_default(),
            ["tollgate"],
            "{kind}"
        );
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{kind} columns: {columns:?}"
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} lacks the status subresource"
        );
    }
}

#[test]
fn short_names_do_not_collide_with_builtin_kinds() {
    let builtin = [
        "rc", "cm", "ds", "ns", "po", "pv", "pvc", "sa", "svc", "ep", "ing", "netpol", "pdb",
        "sts", "deploy", "rs", "hpa", "cj", "crd", "ev", "limits", "quota", "no", "csr", "pc",
        "psp", "sc",
    ];
    for crd in all_crds() {
        for s in crd.spec.names.short_names.unwrap_or_default() {
            assert!(
                !builtin.contains(&s.as_str()),
                "{s} shadows a built-in short name"
            );
        }
    }
}

#[test]
fn every_kind_has_a_cel_rule_with_a_message() {
    for crd in all_crds() {
        let s = schema(&crd);
        assert!(
            count_rules(&s) >= 1,
            "{} has no CEL rule",
            crd.spec.names.kind
        );
        let text = s.to_string();
        assert!(
            !text.contains("\"message\":\"\""),
            "{} has a rule without a message",
            crd.spec.names.kind
        );
    }
}

#[test]
fn conditions_are_a_list_map_keyed_by_type_with_observed_generation() {
    for crd in all_crds() {
        let s = schema(&crd);
        let status = s.pointer("/properties/status/properties").unwrap();
        let conditions = &status["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(status["observedGeneration"]["type"], "integer");
    }
}

#[test]
fn every_field_is_documented() {
    for crd in all_crds() {
        let s = schema(&crd);
        let mut missing = Vec::new();
        for section in ["spec", "status"] {
            undocumented(section, &s["properties"][section], &mut missing);
        }
        assert!(
            missing.is_empty(),
            "{}: fields without docs: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn closed_enums_are_string_enums() {
    let crds = all_crds();
    let policy = schema(&crds[1]);
    assert_eq!(
        policy
            .pointer("/properties/spec/properties/mode/enum")
            .unwrap(),
        &serde_json::json!(["enforce", "audit", "disabled"])
    );
    assert_eq!(
        policy
            .pointer("/properties/spec/properties/mode/default")
            .unwrap(),
        "enforce"
    );
    let provider = schema(&crds[0]);
    assert_eq!(
        provider
            .pointer("/properties/spec/properties/api/enum")
            .unwrap(),
        &serde_json::json!([
            "openai",
            "anthropic",
            "azureOpenai",
            "gemini",
            "bedrock",
            "vertex",
            "dryRun"
        ])
    );
    let quota = schema(&crds[2]);
    assert_eq!(
        quota
            .pointer("/properties/spec/properties/limits/items/properties/window/enum")
            .unwrap(),
        &serde_json::json!(["minute", "hour", "day", "month"])
    );
}

#[test]
fn recorder_config_singleton_rule_is_on_the_root_object() {
    let crds = all_crds();
    let root = schema(&crds[5]);
    let rules = root["x-kubernetes-validations"].as_array().unwrap();
    assert_eq!(rules[0]["rule"], "self.metadata.name == 'default'");
}

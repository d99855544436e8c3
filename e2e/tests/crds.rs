//! The generated CRDs against a real API server: installation, the
//! examples, CEL and enum rejections, printer columns, the status
//! subresource and `kubectl explain`.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tollgate_e2e::crds::{
    api_version, has_status_subresource, install_crds, load_crds, printer_columns, schema_at,
    validations,
};
use tollgate_e2e::manifests::{
    Document, expected_message, load_documents, parse_documents, yaml_files, yaml_files_recursive,
};
use tollgate_e2e::namespace::ensure_namespace;
use tollgate_e2e::objects::{self, ObjectRef};
use tollgate_e2e::{Kubectl, TestNamespace, client, eventually, repo_root};

async fn cluster_with_crds() -> Result<(Client, Vec<CustomResourceDefinition>)> {
    let client = client().await?;
    let crds = install_crds(&client).await?;
    Ok((client, crds))
}

fn example_documents() -> Result<Vec<Document>> {
    let dir = repo_root().join("examples");
    let mut docs = Vec::new();
    for file in yaml_files_recursive(&dir)? {
        docs.extend(load_documents(&file)?);
    }
    ensure!(
        !docs.is_empty(),
        "no YAML manifests under {}",
        dir.display()
    );
    Ok(docs)
}

/// An example as written to the cluster.
struct Applied {
    doc: Document,
    stored: DynamicObject,
    object: ObjectRef,
}

/// Applies every example, Namespaces first. Namespaced objects without a
/// namespace go to `default_ns`; namespaces the examples name are created
/// if missing and left in place (a deleted namespace never finishes
/// terminating here, which would break the next run).
async fn apply_examples(client: &Client, default_ns: &str) -> Result<Vec<Applied>> {
    let mut docs = example_documents()?;
    docs.sort_by_key(|d| d.kind() != "Namespace");
    let mut applied = Vec::new();
    let mut failures = Vec::new();
    for doc in docs {
        if let Some(ns) = doc
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            ensure_namespace(client, ns).await?;
        }
        match objects::apply(client, &doc.value, default_ns).await {
            Ok((stored, object)) => applied.push(Applied {
                doc,
                stored,
                object,
            }),
            Err(e) => failures.push(format!("{}: {e:#}", doc.describe())),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} example(s) do not apply:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    Ok(applied)
}

fn example_of<'a>(applied: &'a [Applied], crd: &CustomResourceDefinition) -> Result<&'a Applied> {
    applied
        .iter()
        .find(|a| {
            a.object.resource.kind == crd.spec.names.kind
                && a.object.resource.group == crd.spec.group
        })
        .with_context(|| {
            format!(
                "examples/ has no {}; this check needs one of each kind",
                crd.spec.names.kind
            )
        })
}

fn dynamic_api(client: &Client, object: &ObjectRef) -> Api<DynamicObject> {
    match &object.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &object.resource),
        None => Api::all_with(client.clone(), &object.resource),
    }
}

/// Every leaf of `expected` is in `actual` (which may hold defaults too).
fn contains_json(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains_json(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| contains_json(av, ev))
        }
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        _ => actual == expected,
    }
}

fn squash_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn e2e_crds_install_and_become_established() -> Result<()> {
    let (client, crds) = cluster_with_crds().await?;
    let files = load_crds()?;
    assert_eq!(crds.len(), files.len());
    for crd in &crds {
        let conditions = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{}: {wanted} is not True: {conditions:?}",
                crd.name_any()
            );
        }
    }

    // Installing again is a no-op: the same field manager, the same content.
    let again = install_crds(&client).await?;
    for (first, second) in crds.iter().zip(&again) {
        assert_eq!(first.name_any(), second.name_any());
        assert_eq!(
            first.resource_version(),
            second.resource_version(),
            "re-applying {} changed it",
            first.name_any()
        );
    }
    Ok(())
}

#[tokio::test]
async fn e2e_examples_apply() -> Result<()> {
    let (client, _crds) = cluster_with_crds().await?;
    let ns = TestNamespace::create(&client, "examples").await?;
    let applied = apply_examples(&client, ns.name()).await?;
    for a in &applied {
        if let Some(spec) = a.doc.value.get("spec") {
            assert!(
                contains_json(&a.stored.data["spec"], spec),
                "{}: stored spec differs from the manifest:\n{:#}",
                a.doc.describe(),
                a.stored.data["spec"]
            );
        }
    }
    eprintln!("applied {} example document(s)", applied.len());
    ns.delete().await
}

#[tokio::test]
async fn admit_invalid_fixtures_are_rejected_with_their_message() -> Result<()> {
    let (client, crds) = cluster_with_crds().await?;
    let dir = repo_root().join("crds/testdata/invalid");
    let files = yaml_files(&dir)
        .with_context(|| format!("the invalid fixtures live in {}", dir.display()))?;
    ensure!(!files.is_empty(), "no fixtures in {}", dir.display());

    let ns = TestNamespace::create(&client, "invalid").await?;
    let mut failures = Vec::new();
    let mut messages = Vec::new();
    for file in &files {
        let outcome = async {
            let text = std::fs::read_to_string(file)?;
            let expect = expected_message(&text)?;
            let docs = parse_documents(&text)?;
            ensure!(
                docs.len() == 1,
                "holds {} documents; want exactly one",
                docs.len()
            );
            ns.rejects(&docs[0], &expect).await
        }
        .await;
        match outcome {
            Ok(message) => messages.push(message),
            Err(e) => failures.push(format!("{}: {e:#}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid fixture(s) failed:\n  {}",
        failures.len(),
        files.len(),
        failures.join("\n  ")
    );
    eprintln!("{} invalid fixture(s) rejected as expected", files.len());

    // One fixture per CEL rule and per enum: each check the CRDs declare
    // shows up failing in some fixture's actual rejection message.
    let mut declared = 0;
    let mut uncovered = Vec::new();
    for crd in &crds {
        for validation in validations(crd)? {
            declared += 1;
            if !messages.iter().any(|m| validation.reported_by(m)) {
                uncovered.push(validation.to_string());
            }
        }
    }
    assert!(declared > 0, "the CRDs declare no CEL rules or enums");
    assert!(
        uncovered.is_empty(),
        "{} of {declared} CEL rule(s)/enum(s) are tripped by no fixture in {}:\n  {}",
        uncovered.len(),
        dir.display(),
        uncovered.join("\n  ")
    );
    ns.delete().await
}

#[tokio::test]
async fn e2e_printer_columns_show_in_kubectl_get() -> Result<()> {
    let (client, crds) = cluster_with_crds().await?;
    let ns = TestNamespace::create(&client, "printer").await?;
    let applied = apply_examples(&client, ns.name()).await?;
    let kubectl = Kubectl::from_env()?;
    for crd in &crds {
        let columns = printer_columns(crd)?;
        ensure!(
            !columns.is_empty(),
            "{} declares no printer columns",
            crd.name_any()
        );
        let example = example_of(&applied, crd)?;
        let resource = format!("{}.{}", crd.spec.names.plural, crd.spec.group);
        let mut args = vec!["get", resource.as_str(), "-o", "wide"];
        if let Some(ns) = &example.object.namespace {
            args.extend(["-n", ns.as_str()]);
        }
        let out = kubectl.run(&args).await?;
        let header = out.lines().next().unwrap_or_default();
        for column in &columns {
            let shown = column.name.to_uppercase();
            assert!(
                header.contains(&shown),
                "kubectl get {resource}: column {shown:?} missing from header {header:?}"
            );
        }
        assert!(
            out.lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&example.object.name)),
            "kubectl get {resource} does not list {}:\n{out}",
            example.object.name
        );
    }
    ns.delete().await
}

#[tokio::test]
async fn e2e_short_names_and_categories_resolve_in_kubectl() -> Result<()> {
    let (_client, crds) = cluster_with_crds().await?;
    let kubectl = Kubectl::from_env()?;
    for crd in &crds {
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        ensure!(
            !short.is_empty(),
            "{} declares no short names",
            crd.name_any()
        );
        for name in &short {
            let out = kubectl
                .run(&[
                    "api-resources",
                    "--api-group",
                    &crd.spec.group,
                    "-o",
                    "name",
                ])
                .await?;
            assert!(out.contains(&crd.name_any()), "{out}");
            kubectl
                .run(&["get", name.as_str(), "-A", "-o", "name"])
                .await
                .with_context(|| format!("short name {name} of {}", crd.name_any()))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn e2e_status_subresource_updates_only_status() -> Result<()> {
    let (client, crds) = cluster_with_crds().await?;
    let ns = TestNamespace::create(&client, "status").await?;
    let applied = apply_examples(&client, ns.name()).await?;
    let mut checked = 0;
    for crd in &crds {
        ensure!(
            has_status_subresource(crd)?,
            "{} has no status subresource",
            crd.name_any()
        );
        schema_at(crd, &["status", "observedGeneration"])?;
        let example = example_of(&applied, crd)?;
        let api = dynamic_api(&client, &example.object);
        let name = example.object.name.as_str();
        let before = api.get(name).await?;

        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 4242}})),
        )
        .await
        .with_context(|| format!("patching the status of {}", example.object))?;
        let after = api.get(name).await?;
        assert_eq!(
            after.data["status"]["observedGeneration"], 4242,
            "{}",
            example.object
        );
        assert_eq!(
            after.data["spec"], before.data["spec"],
            "{}: spec changed",
            example.object
        );
        assert_eq!(
            after.metadata.generation, before.metadata.generation,
            "{}: a status write bumped the generation",
            example.object
        );

        // Through the main resource, status is ignored.
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 7}})),
        )
        .await?;
        let again = api.get(name).await?;
        assert_eq!(
            again.data["status"]["observedGeneration"], 4242,
            "{}: status changed through the main resource",
            example.object
        );
        checked += 1;
    }
    assert_eq!(checked, crds.len());
    ns.delete().await
}

#[tokio::test]
async fn e2e_kubectl_explain_shows_field_docs() -> Result<()> {
    let (_client, crds) = cluster_with_crds().await?;
    let kubectl = Kubectl::from_env()?;
    for crd in &crds {
        let spec = schema_at(crd, &["spec"])?;
        let fields = spec.properties.clone().unwrap_or_default();
        let Some((field, description)) = fields.iter().find_map(|(name, schema)| {
            schema
                .description
                .as_ref()
                .filter(|d| !d.trim().is_empty())
                .map(|d| (name.clone(), d.clone()))
        }) else {
            bail!("{}: no documented spec field", crd.name_any());
        };
        let target = format!("{}.spec.{field}", crd.spec.names.plural);
        let version = api_version(crd)?;
        let wanted = squash_whitespace(&description);
        // OpenAPI v3 for a new CRD is published asynchronously.
        eventually(Duration::from_secs(60), || {
            let (kubectl, target, version, wanted) = (&kubectl, &target, &version, &wanted);
            async move {
                let out = kubectl
                    .run(&["explain", target, "--api-version", version])
                    .await?;
                ensure!(
                    squash_whitespace(&out).contains(wanted),
                    "kubectl explain {target} lacks {wanted:?}:\n{out}"
                );
                Ok(())
            }
        })
        .await?;
    }
    Ok(())
}

#[test]
fn contains_json_allows_defaults_but_not_differences() {
    let stored = json!({"a": 1, "b": {"c": "x", "d": true}, "e": [1, 2]});
    assert!(contains_json(&stored, &json!({"a": 1.0, "b": {"c": "x"}})));
    assert!(!contains_json(&stored, &json!({"b": {"c": "y"}})));
    assert!(!contains_json(&stored, &json!({"e": [1]})));
    assert!(!contains_json(&stored, &json!({"z": null})));
}

//! Installing the generated CRDs (`charts/tollgate/crds/*.yaml`, written by
//! the crds crate's `crdgen`) and reading what they declare.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionVersion,
    JSONSchemaProps,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

use crate::FIELD_MANAGER;
use crate::cluster::repo_root;
use crate::manifests::{load_documents, yaml_files};
use crate::objects::describe_error;

/// How long a CRD may take to become Established.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Where crdgen writes the CRDs; `TOLLGATE_E2E_CRD_DIR` points the suites
/// at another directory (e.g. a work-in-progress copy).
pub fn crd_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_E2E_CRD_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| repo_root().join("charts/tollgate/crds"), PathBuf::from)
}

/// Every CRD under [`crd_dir`]; an error if there are none.
pub fn load_crds() -> Result<Vec<CustomResourceDefinition>> {
    let dir = crd_dir();
    let mut crds = Vec::new();
    for path in yaml_files(&dir)? {
        for doc in load_documents(&path)? {
            let what = doc.describe();
            let crd: CustomResourceDefinition = serde_json::from_value(doc.value)
                .with_context(|| format!("{what} is not a CustomResourceDefinition"))?;
            crds.push(crd);
        }
    }
    if crds.is_empty() {
        bail!(
            "no CRDs in {}: generate them with `cargo run -p tollgate-crds --bin crdgen`",
            dir.display()
        );
    }
    Ok(crds)
}

/// Applies every CRD (server-side, idempotent) and waits until each is
/// Established. Returns them as stored.
pub async fn install_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let crds = load_crds()?;
    let mut refused = Vec::new();
    for crd in &crds {
        let name = crd.name_any();
        // SSA needs apiVersion and kind in the body.
        let mut body = serde_json::to_value(crd)?;
        body["apiVersion"] = "apiextensions.k8s.io/v1".into();
        body["kind"] = "CustomResourceDefinition".into();
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(&body)).await {
            refused.push(format!("{:#}", describe_error(e, format!("CRD {name}"))));
        }
    }
    if !refused.is_empty() {
        bail!(
            "{} of {} CRD(s) from {} do not install:\n  {}",
            refused.len(),
            crds.len(),
            crd_dir().display(),
            refused.join("\n  ")
        );
    }
    let mut established = Vec::with_capacity(crds.len());
    for crd in &crds {
        let name = crd.name_any();
        let stored = tokio::time::timeout(
            ESTABLISH_TIMEOUT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow!("CRD {name} not Established within {ESTABLISH_TIMEOUT:?}"))?
        .with_context(|| format!("watching CRD {name}"))?
        .ok_or_else(|| anyhow!("CRD {name} disappeared"))?;
        established.push(stored);
    }
    Ok(established)
}

/// The version objects are stored at (the one the suites write).
pub fn storage_version(crd: &CustomResourceDefinition) -> Result<&CustomResourceDefinitionVersion> {
    crd.spec
        .versions
        .iter()
        .find(|v| v.storage && v.served)
        .ok_or_else(|| anyhow!("CRD {} has no served storage version", crd.name_any()))
}

/// `group/version` of the storage version.
pub fn api_version(crd: &CustomResourceDefinition) -> Result<String> {
    Ok(format!("{}/{}", crd.spec.group, storage_version(crd)?.name))
}

/// The printer columns the storage version declares.
pub fn printer_columns(
    crd: &CustomResourceDefinition,
) -> Result<Vec<CustomResourceColumnDefinition>> {
    Ok(storage_version(crd)?
        .additional_printer_columns
        .clone()
        .unwrap_or_default())
}

/// The storage version's schema at `path` (property names, e.g. `["spec"]`).
pub fn schema_at<'a>(
    crd: &'a CustomResourceDefinition,
    path: &[&str],
) -> Result<&'a JSONSchemaProps> {
    let mut schema = storage_version(crd)?
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| anyhow!("CRD {} has no schema", crd.name_any()))?;
    for (i, field) in path.iter().enumerate() {
        schema = schema
            .properties
            .as_ref()
            .and_then(|p| p.get(*field))
            .ok_or_else(|| {
                anyhow!(
                    "CRD {} has no field {}",
                    crd.name_any(),
                    path[..=i].join(".")
                )
            })?;
    }
    Ok(schema)
}

/// Whether the storage version has the status subresource.
pub fn has_status_subresource(crd: &CustomResourceDefinition) -> Result<bool> {
    Ok(storage_version(crd)?
        .subresources
        .as_ref()
        .is_some_and(|s| s.status.is_some()))
}

/// A check the schema declares, which an invalid fixture should trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// A CEL rule (`x-kubernetes-validations`) and the message it fails with.
    Cel {
        kind: String,
        path: String,
        message: String,
    },
    /// An enum field, e.g. `spec.limits[].window`.
    Enum { kind: String, path: String },
}

impl Validation {
    /// Whether an API server error `message` reports this check failing.
    pub fn reported_by(&self, message: &str) -> bool {
        match self {
            Self::Cel { message: m, .. } => squash(message).contains(&squash(m)),
            Self::Enum { path, .. } => {
                erase_indices(message).contains(&format!("{path}: Unsupported value"))
            }
        }
    }
}

impl std::fmt::Display for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cel {
                kind,
                path,
                message,
            } => write!(f, "{kind} CEL rule at {path}: {message:?}"),
            Self::Enum { kind, path } => write!(f, "{kind} enum {path}"),
        }
    }
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `spec.limits[3].window` becomes `spec.limits[].window`. Only index-like
/// brackets (no whitespace inside) are erased: the API server also wraps a
/// list of several errors in `[...]`.
pub fn erase_indices(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        if let Some(close) = rest.find(']') {
            let inside = &rest[..close];
            if !inside.is_empty() && !inside.contains(|c: char| c.is_whitespace() || c == '[') {
                out.push(']');
                rest = &rest[close + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The CEL rules and enums of the storage version's schema, outside
/// `status` (which users never write).
pub fn validations(crd: &CustomResourceDefinition) -> Result<Vec<Validation>> {
    let root = schema_at(crd, &[])?;
    let mut out = Vec::new();
    collect_validations(&crd.spec.names.kind, "", root, &mut out);
    Ok(out)
}

fn collect_validations(
    kind: &str,
    path: &str,
    schema: &JSONSchemaProps,
    out: &mut Vec<Validation>,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    for rule in schema.x_kubernetes_validations.iter().flatten() {
        let message = match (&rule.message, &rule.message_expression) {
            (Some(m), _) => m.clone(),
            (None, None) => format!("failed rule: {}", rule.rule),
            // The message is computed at admission time; nothing to match.
            (None, Some(_)) => continue,
        };
        out.push(Validation::Cel {
            kind: kind.to_owned(),
            path: if path.is_empty() {
                "<root>".to_owned()
            } else {
                path.to_owned()
            },
            message,
        });
    }
    if schema.enum_.as_ref().is_some_and(|e| !e.is_empty()) {
        out.push(Validation::Enum {
            kind: kind.to_owned(),
            path: path.to_owned(),
        });
    }
    for (name, child) in schema.properties.iter().flatten() {
        if path.is_empty() && name == "status" {
            continue;
        }
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        collect_validations(kind, &child_path, child, out);
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => {
            collect_validations(kind, &format!("{path}[]"), item, out);
        }
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            for item in items {
                collect_validations(kind, &format!("{path}[]"), item, out);
            }
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        collect_validations(kind, &format!("{path}[]"), values, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_erased() {
        assert_eq!(
            erase_indices("spec.limits[3].window: Unsupported value: \"week\"; x[ab]"),
            "spec.limits[].window: Unsupported value: \"week\"; x[]"
        );
        assert_eq!(
            erase_indices("is invalid: [spec.a[0].b: Unsupported value, <nil>: x] [] ["),
            "is invalid: [spec.a[].b: Unsupported value, <nil>: x] [] ["
        );
    }

    #[test]
    fn validations_come_from_cel_rules_and_enums_outside_status() {
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.dev"},
            "spec": {
                "group": "example.dev",
                "names": {"kind": "Thing", "plural": "things"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-validations": [{"rule": "self.metadata.name == 'x'"}],
                        "properties": {
                            "spec": {"type": "object", "properties": {
                                "mode": {"type": "string", "enum": ["a", "b"]},
                                "limits": {"type": "array", "items": {
                                    "type": "object",
                                    "x-kubernetes-validations": [{
                                        "rule": "has(self.w)", "message": "a limit  needs\n w"
                                    }],
                                    "properties": {"w": {"type": "string", "enum": ["day"]}}
                                }}
                            }},
                            "status": {"type": "object", "properties": {
                                "phase": {"type": "string", "enum": ["Ready"]}
                            }}
                        }
                    }}
                }]
            }
        }))
        .unwrap();
        let found = validations(&crd).unwrap();
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "Thing CEL rule at <root>: \"failed rule: self.metadata.name == 'x'\"",
                "Thing CEL rule at spec.limits[]: \"a limit  needs\\n w\"",
                "Thing enum spec.limits[].w",
                "Thing enum spec.mode",
            ]
        );
        assert!(found[1].reported_by("spec.limits[0]: Invalid value: \"object\": a limit needs w"));
        assert!(found[2].reported_by("spec.limits[2].w: Unsupported value: \"week\""));
        assert!(!found[3].reported_by("spec.limits[2].w: Unsupported value: \"week\""));
    }
}

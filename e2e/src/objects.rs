//! Writing arbitrary manifests (any kind, typed or JSON) through the dynamic
//! API, with the kind's resource and scope found by discovery.

use anyhow::{Context, Result, anyhow, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersion};
use kube::discovery::{self, Scope};
use kube::{Client, Error};
use serde::Serialize;
use serde_json::Value;

use crate::FIELD_MANAGER;

/// Where a manifest lives once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub resource: ApiResource,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.resource.kind, self.name),
            None => write!(f, "{} {}", self.resource.kind, self.name),
        }
    }
}

/// A manifest resolved against the cluster's discovery: its dynamic API and
/// the body to send, with the namespace filled in for namespaced kinds.
#[derive(Debug)]
pub struct Resolved {
    pub api: Api<DynamicObject>,
    pub object: ObjectRef,
    pub body: Value,
}

/// Converts anything serialisable (a typed object, a `json!` value, a
/// document read from YAML) into a JSON object.
pub fn to_manifest(obj: &impl Serialize) -> Result<Value> {
    let value = serde_json::to_value(obj).context("serialising the manifest")?;
    if !value.is_object() {
        bail!("a manifest must be a mapping, got {value}");
    }
    Ok(value)
}

fn str_field<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Resolves `manifest` by discovery. Namespaced objects without a namespace
/// go to `default_namespace`.
pub async fn resolve(
    client: &Client,
    manifest: &Value,
    default_namespace: &str,
) -> Result<Resolved> {
    let api_version = str_field(manifest, "/apiVersion")
        .ok_or_else(|| anyhow!("manifest has no apiVersion: {manifest}"))?;
    let kind =
        str_field(manifest, "/kind").ok_or_else(|| anyhow!("manifest has no kind: {manifest}"))?;
    let name = str_field(manifest, "/metadata/name")
        .ok_or_else(|| anyhow!("{kind} manifest has no metadata.name"))?
        .to_owned();
    let gvk = api_version
        .parse::<GroupVersion>()
        .map_err(|e| anyhow!("bad apiVersion {api_version:?}: {}", e.0))?
        .with_kind(kind);
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {kind}.{api_version} (is its CRD installed?)"))?;

    let mut body = manifest.clone();
    let (api, namespace) = match caps.scope {
        Scope::Namespaced => {
            let ns = str_field(manifest, "/metadata/namespace")
                .unwrap_or(default_namespace)
                .to_owned();
            if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            (
                Api::namespaced_with(client.clone(), &ns, &resource),
                Some(ns),
            )
        }
        Scope::Cluster => (Api::all_with(client.clone(), &resource), None),
    };
    Ok(Resolved {
        api,
        object: ObjectRef {
            resource,
            namespace,
            name,
        },
        body,
    })
}

/// Server-side applies `manifest`, forcing conflicts (one field manager owns
/// everything the suites write) and with strict field validation, as
/// `kubectl apply` does: an unknown field is an error, not silently pruned.
pub async fn apply(
    client: &Client,
    manifest: &Value,
    default_namespace: &str,
) -> Result<(DynamicObject, ObjectRef)> {
    let resolved = resolve(client, manifest, default_namespace).await?;
    let applied = resolved
        .api
        .patch(
            &resolved.object.name,
            &PatchParams::apply(FIELD_MANAGER)
                .force()
                .validation_strict(),
            &Patch::Apply(&resolved.body),
        )
        .await
        .map_err(|e| describe_error(e, &resolved.object))?;
    Ok((applied, resolved.object))
}

/// Creates `manifest` (POST), as a client-side `kubectl apply` of a new
/// object would. `Err(Error::Api)` carries the API server's refusal.
pub async fn create(
    client: &Client,
    manifest: &Value,
    default_namespace: &str,
) -> Result<(std::result::Result<DynamicObject, Error>, ObjectRef)> {
    let resolved = resolve(client, manifest, default_namespace).await?;
    let body: DynamicObject =
        serde_json::from_value(resolved.body).context("manifest is not a Kubernetes object")?;
    let outcome = resolved.api.create(&PostParams::default(), &body).await;
    Ok((outcome, resolved.object))
}

/// The API server's message for a refused request, or the error itself.
pub fn api_message(err: &Error) -> Option<&str> {
    match err {
        Error::Api(status) => Some(status.message.as_str()),
        _ => None,
    }
}

/// An error for a failed write of `what`: the API server's message alone
/// when it refused (kube's own rendering repeats it with a Debug dump).
pub fn describe_error(err: Error, what: impl std::fmt::Display) -> anyhow::Error {
    match api_message(&err) {
        Some(msg) => anyhow!("the API server refused {what}: {msg}"),
        None => anyhow::Error::new(err).context(format!("writing {what}")),
    }
}

/// The condition of `type_` in an object's `status.conditions` (JSON), or
/// `null` when it has none.
pub fn condition(object: &Value, type_: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifests_must_be_mappings() {
        assert!(to_manifest(&json!({"kind": "Pod"})).is_ok());
        assert!(to_manifest(&json!(["not", "a", "mapping"])).is_err());
    }
}

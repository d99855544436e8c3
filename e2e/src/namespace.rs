//! A temporary namespace per test, and the `accepts`/`rejects` admission
//! assertions that write into it.
//!
//! No kube-controller-manager runs, so nothing creates the `default`
//! ServiceAccount (the ServiceAccount admission plugin rejects pods without
//! it): [`TestNamespace::create`] does. A deleted namespace stays Terminating
//! forever for the same reason; names are unique so that never collides.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::{Client, Error};
use serde::Serialize;

use crate::objects::{self, ObjectRef, api_message, to_manifest};

/// Label on every namespace the suites create.
pub const E2E_LABEL: &str = "e2e.tollgate.dev/test";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across tests, processes and runs: `{prefix}-{suffix}`,
/// at most 63 characters.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Low bits of the clock, the pid and a counter: distinct within a run,
    // and between runs against a long-lived cluster.
    let suffix = format!(
        "{:x}{:x}{}",
        (nanos / 1000) % 0xff_ffff,
        std::process::id() % 0xffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let max_prefix = 62usize.saturating_sub(suffix.len());
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(max_prefix)
        .collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        format!("e2e-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// Creates `name` with its `default` ServiceAccount unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(E2E_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    ignore_conflict(namespaces.create(&PostParams::default(), &ns).await)
        .with_context(|| format!("creating namespace {name}"))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    ignore_conflict(accounts.create(&PostParams::default(), &sa).await)
        .with_context(|| format!("creating ServiceAccount {name}/default"))?;
    Ok(())
}

fn ignore_conflict<T>(result: std::result::Result<T, Error>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A namespace that lives for one test. Cluster-scoped objects written
/// through [`TestNamespace::accepts`] are deleted with it.
///
/// Call [`TestNamespace::delete`] at the end of the test; if the test fails
/// first, `Drop` deletes everything on a helper thread.
pub struct TestNamespace {
    client: Client,
    name: String,
    cluster_scoped: Mutex<Vec<ObjectRef>>,
    deleted: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates a namespace named `{prefix}-{unique suffix}` and its `default`
    /// ServiceAccount.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        ensure_namespace(client, &name).await?;
        Ok(Self {
            client: client.clone(),
            name,
            cluster_scoped: Mutex::new(Vec::new()),
            deleted: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asserts the API server admits `obj` (server-side apply). Namespaced
    /// objects without a namespace land in this one. Returns the stored object.
    pub async fn accepts(&self, obj: &impl Serialize) -> Result<DynamicObject> {
        let manifest = to_manifest(obj)?;
        let (stored, object) = objects::apply(&self.client, &manifest, &self.name)
            .await
            .context("expected the API server to accept the object")?;
        if object.namespace.is_none() {
            let mut tracked = self
                .cluster_scoped
                .lock()
                .map_err(|_| anyhow!("cleanup list poisoned"))?;
            if !tracked.contains(&object) {
                tracked.push(object);
            }
        }
        Ok(stored)
    }

    /// Asserts the API server refuses to create `obj` with a message that
    /// contains `expected`. Returns the full message.
    pub async fn rejects(&self, obj: &impl Serialize, expected: &str) -> Result<String> {
        let manifest = to_manifest(obj)?;
        let (outcome, object) = objects::create(&self.client, &manifest, &self.name).await?;
        match outcome {
            Ok(_) => {
                if object.namespace.is_none() {
                    self.cluster_scoped
                        .lock()
                        .map_err(|_| anyhow!("cleanup list poisoned"))?
                        .push(object.clone());
                }
                bail!("expected {object} to be rejected with {expected:?}, but it was admitted")
            }
            Err(err) => match api_message(&err) {
                Some(msg) if msg.contains(expected) => Ok(msg.to_owned()),
                Some(msg) => bail!(
                    "{object} was rejected, but the message does not contain {expected:?}:\n  {msg}"
                ),
                None => Err(anyhow::Error::new(err).context(format!("creating {object}"))),
            },
        }
    }

    /// Deletes the namespace and the cluster-scoped objects written through it.
    pub async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        let tracked = std::mem::take(
            &mut *self
                .cluster_scoped
                .lock()
                .map_err(|_| anyhow!("cleanup list poisoned"))?,
        );
        cleanup(&self.client, &self.name, tracked).await
    }
}

async fn cleanup(client: &Client, namespace: &str, cluster_scoped: Vec<ObjectRef>) -> Result<()> {
    let mut failures = Vec::new();
    for object in cluster_scoped.iter().rev() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &object.resource);
        if let Err(e) = ignore_not_found(api.delete(&object.name, &DeleteParams::default()).await) {
            failures.push(format!("{object}: {e:#}"));
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = ignore_not_found(namespaces.delete(namespace, &DeleteParams::default()).await) {
        failures.push(format!("namespace {namespace}: {e:#}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("cleanup failed: {}", failures.join("; "))
    }
}

fn ignore_not_found<T>(result: std::result::Result<T, Error>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let name = self.name.clone();
        let tracked = self
            .cluster_scoped
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        // The test's runtime may be the one blocked in this drop, so clean up
        // with a fresh runtime and client on another thread.
        let handle = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = crate::cluster::client().await?;
                cleanup(&client, &name, tracked).await
            })
        });
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("tollgate-e2e: cleaning up namespace {}: {e:#}", self.name),
            Err(_) => eprintln!("tollgate-e2e: cleanup of namespace {} panicked", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_name("crds");
        let b = unique_name("crds");
        assert_ne!(a, b);
        assert!(a.starts_with("crds-"), "{a}");
        let long = unique_name(&"Very_Long.Prefix".repeat(10));
        assert!(long.len() <= 63, "{long}");
        for name in [&a, &long, &unique_name("--")] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
    }
}

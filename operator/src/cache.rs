//! The operator's one cache: one reflector per kind, shared by everything the
//! process runs. The controllers (on the leader), the control endpoint and the
//! webhooks (on every replica) read the same stores, so each kind is watched
//! once per process:
//!
//! | store | watched | read by |
//! |---|---|---|
//! | LLMProviders, EgressPolicies, EgressQuotas, ClusterEgressQuotas, TrustAnchors | cluster-wide | controllers, control endpoint (compilation); policies also by the webhooks |
//! | RecorderConfigs | cluster-wide | controllers |
//! | Namespaces | cluster-wide | everyone (governed namespaces, labels) |
//! | Secrets | the operator namespace only | control endpoint (values, for gateways); controllers see key names only ([`ClusterCache::secret_keys`]) |
//!
//! A generation counter bumps on every change: long-polls and the controllers
//! wait on it. [`Readiness`] is the one readiness signal: every store has
//! listed once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector as reflect};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tollgate_crds::compile::{ClusterObjects, Compiled, compile_namespace_config};
use tollgate_crds::{
    ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, RecorderConfig, TrustAnchor,
};

use crate::failures::Failures;

/// Whether every store has listed once. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<[Arc<AtomicBool>]>);

impl Readiness {
    /// Ready from the start (stores filled by hand in tests).
    pub fn ready() -> Self {
        Self(Arc::new([Arc::new(AtomicBool::new(true))]))
    }

    pub fn is_ready(&self) -> bool {
        self.0.iter().all(|f| f.load(Ordering::Acquire))
    }

    /// Waits until ready, or `timeout` passes; says which.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// The stores, cheap to clone.
#[derive(Clone)]
pub struct ClusterCache {
    pub providers: Store<LLMProvider>,
    pub policies: Store<EgressPolicy>,
    pub quotas: Store<EgressQuota>,
    pub cluster_quotas: Store<ClusterEgressQuota>,
    pub trust_anchors: Store<TrustAnchor>,
    pub recorder_configs: Store<RecorderConfig>,
    pub namespaces: Store<Namespace>,
    secrets: Store<Secret>,
    generation: Arc<watch::Sender<u64>>,
    readiness: Readiness,
}

impl Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("generation", &*self.generation.borrow())
            .field("ready", &self.readiness.is_ready())
            .finish_non_exhaustive()
    }
}

/// The watches this process runs: one per store.
pub const WATCHES: usize = 8;

fn start<K>(
    api: Api<K>,
    generation: Arc<watch::Sender<u64>>,
    listed: &mut Vec<Arc<AtomicBool>>,
    failures: Failures,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = reflect(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let flag = Arc::new(AtomicBool::new(false));
    listed.push(flag.clone());
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        generation.send_modify(|g| *g = g.wrapping_add(1));
                    }
                    Ok(Event::Apply(_) | Event::Delete(_)) => {
                        generation.send_modify(|g| *g = g.wrapping_add(1));
                    }
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Err(e) => {
                        failures.count("watch");
                        tracing::warn!(kind, error = %e, "watch failed; retrying");
                    }
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}

fn owned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}

impl ClusterCache {
    /// Starts the reflectors; they run until the runtime stops. Secrets are
    /// watched in `operator_namespace` only.
    pub fn start(client: &Client, operator_namespace: &str, failures: &Failures) -> Self {
        let generation = Arc::new(watch::channel(0u64).0);
        let g = || generation.clone();
        let f = || failures.clone();
        let l = &mut Vec::new();
        let cache = Self {
            providers: start(Api::all(client.clone()), g(), l, f()),
            policies: start(Api::all(client.clone()), g(), l, f()),
            quotas: start(Api::all(client.clone()), g(), l, f()),
            cluster_quotas: start(Api::all(client.clone()), g(), l, f()),
            trust_anchors: start(Api::all(client.clone()), g(), l, f()),
            recorder_configs: start(Api::all(client.clone()), g(), l, f()),
            namespaces: start(Api::all(client.clone()), g(), l, f()),
            secrets: start(
                Api::namespaced(client.clone(), operator_namespace),
                g(),
                l,
                f(),
            ),
            generation,
            readiness: Readiness(std::mem::take(l).into()),
        };
        debug_assert_eq!(cache.readiness.0.len(), WATCHES);
        cache
    }

    /// A cache over empty stores but `secrets`, ready (tests).
    #[cfg(test)]
    pub fn for_tests(secrets: Store<Secret>) -> Self {
        Self {
            providers: reflector::store().0,
            policies: reflector::store().0,
            quotas: reflector::store().0,
            cluster_quotas: reflector::store().0,
            trust_anchors: reflector::store().0,
            recorder_configs: reflector::store().0,
            namespaces: reflector::store().0,
            secrets,
            generation: Arc::new(watch::channel(0u64).0),
            readiness: Readiness::ready(),
        }
    }

    /// The one readiness signal.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Whether every store has listed once.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// The names of the keys of each Secret of the operator namespace: all the
    /// controllers may know of them.
    pub fn secret_keys(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.secrets
            .state()
            .iter()
            .map(|s| {
                let mut keys: BTreeSet<String> =
                    s.data.iter().flat_map(|d| d.keys().cloned()).collect();
                keys.extend(s.string_data.iter().flat_map(|d| d.keys().cloned()));
                (s.name_any(), keys)
            })
            .collect()
    }

    /// Changes whenever any cached object does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Compiles `namespace`'s config; `namespace_labels` pick cluster quotas.
    pub fn compile(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Compiled {
        let providers = owned(&self.providers);
        let policies = owned(&self.policies);
        let quotas = owned(&self.quotas);
        let cluster_quotas = owned(&self.cluster_quotas);
        let trust_anchors = owned(&self.trust_anchors);
        compile_namespace_config(
            namespace,
            namespace_labels,
            ClusterObjects {
                providers: &providers,
                policies: &policies,
                quotas: &quotas,
                cluster_quotas: &cluster_quotas,
                trust_anchors: &trust_anchors,
            },
        )
    }

    /// Secrets of the operator namespace.
    pub fn secrets(&self) -> Vec<Arc<Secret>> {
        self.secrets.state()
    }

    /// Namespaces labelled `tollgate.dev/inject=enabled`.
    pub fn governed_namespaces(&self) -> Vec<String> {
        self.namespaces
            .state()
            .iter()
            .filter(|ns| {
                ns.metadata.deletion_timestamp.is_none()
                    && ns
                        .metadata
                        .labels
                        .as_ref()
                        .is_some_and(crate::control::auth::is_governed)
            })
            .filter_map(|ns| ns.metadata.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controllers_see_secret_key_names_not_values() {
        let (secrets, mut writer) = reflector::store::<Secret>();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "openai-keys", "namespace": "tollgate-system"},
            "data": {"key-a": "c2stYWFh"},
            "stringData": {"key-b": "sk-bbb"}
        }))
        .unwrap();
        writer.apply_watcher_event(&Event::Apply(secret));
        let cache = ClusterCache::for_tests(secrets);
        let keys = cache.secret_keys();
        assert_eq!(
            keys["openai-keys"],
            BTreeSet::from(["key-a".to_string(), "key-b".to_string()])
        );
        assert!(!format!("{keys:?}").contains("sk-bbb"));
    }
}

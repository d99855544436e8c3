//! Reflector caches of what gateway configs are compiled from: the Tollgate
//! kinds, Namespaces, and the Secrets of the operator namespace only (so the
//! operator reads Secrets nowhere else). A generation counter bumps on every
//! change, which is what long-polls wait on.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector as reflect};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tollgate_crds::compile::{ClusterObjects, Compiled, compile_namespace_config};
use tollgate_crds::{ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, TrustAnchor};

/// The caches, cheap to clone.
#[derive(Clone)]
pub struct ClusterCache {
    providers: Store<LLMProvider>,
    policies: Store<EgressPolicy>,
    quotas: Store<EgressQuota>,
    cluster_quotas: Store<ClusterEgressQuota>,
    trust_anchors: Store<TrustAnchor>,
    namespaces: Store<Namespace>,
    secrets: Store<Secret>,
    generation: Arc<watch::Sender<u64>>,
    /// One flag per cache, set once it has listed.
    listed: Vec<Arc<AtomicBool>>,
}

impl Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

fn start<K>(
    api: Api<K>,
    generation: Arc<watch::Sender<u64>>,
    listed: &mut Vec<Arc<AtomicBool>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = reflect(writer, watcher(api));
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
                    Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}

fn watcher<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

fn owned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}

impl ClusterCache {
    /// Starts the reflectors; they run until the runtime stops.
    pub fn start(client: &Client, operator_namespace: &str) -> Self {
        let generation = Arc::new(watch::channel(0u64).0);
        let g = || generation.clone();
        let l = &mut Vec::new();
        Self {
            providers: start(Api::all(client.clone()), g(), l),
            policies: start(Api::all(client.clone()), g(), l),
            quotas: start(Api::all(client.clone()), g(), l),
            cluster_quotas: start(Api::all(client.clone()), g(), l),
            trust_anchors: start(Api::all(client.clone()), g(), l),
            namespaces: start(Api::all(client.clone()), g(), l),
            secrets: start(Api::namespaced(client.clone(), operator_namespace), g(), l),
            generation,
            listed: std::mem::take(l),
        }
    }

    /// Whether every cache has listed once.
    pub fn is_ready(&self) -> bool {
        self.listed.iter().all(|f| f.load(Ordering::Acquire))
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
                        .is_some_and(super::auth::is_governed)
            })
            .filter_map(|ns| ns.metadata.name.clone())
            .collect()
    }
}

//! The I/O shell of the controllers: watches fill in-memory stores; any
//! change (or the resync tick) triggers a pass that snapshots a [`World`],
//! computes every object's status with the pure functions, and writes only
//! the statuses that differ, with server-side apply. Events go out when a
//! condition changes status or reason. The quota usage refresh runs beside it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tollgate_crds::policy::EgressPolicyStatus;
use tollgate_crds::provider::LLMProviderStatus;
use tollgate_crds::quota::QuotaStatus;
use tollgate_crds::recorder_config::RecorderConfigStatus;
use tollgate_crds::trust::TrustAnchorStatus;
use tollgate_crds::{
    ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, RecorderConfig, TrustAnchor,
};

use super::conditions::{self, Desired};
use super::usage::{self, RecorderSource, UsageObservation};
use super::world::{SecretKeyIndex, World};
use super::{
    ControllerSettings, FIELD_MANAGER, policy, provider, prune, quota, recorder_config, trust,
};

/// A full pass runs at least this often, for what no watch reports: time
/// passing (key expiry) and missed events.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Changes arriving together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(200);

struct Stores {
    providers: Store<LLMProvider>,
    policies: Store<EgressPolicy>,
    quotas: Store<EgressQuota>,
    cluster_quotas: Store<ClusterEgressQuota>,
    trust_anchors: Store<TrustAnchor>,
    recorder_configs: Store<RecorderConfig>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    secrets: Arc<Mutex<SecretKeyIndex>>,
}

struct Context {
    client: kube::Client,
    settings: ControllerSettings,
    recorder: Recorder,
    stores: Stores,
    usage: Mutex<BTreeMap<String, UsageObservation>>,
    changed: Arc<Notify>,
}

fn cloned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().iter().map(|k| K::clone(k)).collect()
}

impl Context {
    fn snapshot(&self) -> World {
        let s = &self.stores;
        World {
            now: Timestamp::now(),
            operator_namespace: self.settings.operator_namespace.clone(),
            providers: cloned(&s.providers),
            policies: cloned(&s.policies),
            quotas: cloned(&s.quotas),
            cluster_quotas: cloned(&s.cluster_quotas),
            trust_anchors: cloned(&s.trust_anchors),
            recorder_configs: cloned(&s.recorder_configs),
            secrets: s
                .secrets
                .lock()
                .map(|index| index.snapshot())
                .unwrap_or_default(),
            namespaces: s
                .namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            usage: self.usage.lock().map(|u| u.clone()).unwrap_or_default(),
        }
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let s = &self.stores;
        let ready = async {
            s.providers.wait_until_ready().await?;
            s.policies.wait_until_ready().await?;
            s.quotas.wait_until_ready().await?;
            s.cluster_quotas.wait_until_ready().await?;
            s.trust_anchors.wait_until_ready().await?;
            s.recorder_configs.wait_until_ready().await?;
            s.namespaces.wait_until_ready().await?;
            Ok::<_, reflector::store::WriterDropped>(())
        };
        ready
            .await
            .map_err(|e| anyhow::anyhow!("a watch stopped before its first list: {e}"))?;
        while !s.secrets.lock().map(|i| i.is_ready()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Starts a reflector for `api`, signalling `changed` on every event.
fn watch_into<K>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    api: Api<K>,
    changed: Arc<Notify>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
                }
                futures::future::ready(())
            })
            .await;
        Err(anyhow::anyhow!("the {kind} watch ended"))
    });
    reader
}

use kube::runtime::reflector::reflector;

/// Runs the status controllers and the quota usage refresh until one fails.
/// Dropping the future stops everything (the tasks live in a [`JoinSet`]).
pub async fn run(client: kube::Client, settings: ControllerSettings) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let changed = Arc::new(Notify::new());

    let namespaces = {
        let (reader, writer) = reflector::store();
        let stream = reflector(
            writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        );
        let changed = changed.clone();
        tasks.spawn(async move {
            stream
                .for_each(|event| {
                    match event {
                        Ok(_) => changed.notify_one(),
                        Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
                    }
                    futures::future::ready(())
                })
                .await;
            Err(anyhow::anyhow!("the Namespace watch ended"))
        });
        reader
    };

    // Secrets: only their key names are kept (see SecretKeyIndex).
    let secrets = Arc::new(Mutex::new(SecretKeyIndex::default()));
    {
        let index = secrets.clone();
        let changed = changed.clone();
        let api: Api<Secret> = Api::namespaced(client.clone(), &settings.operator_namespace);
        tasks.spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        if let Ok(mut index) = index.lock() {
                            index.apply(event);
                        }
                        changed.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "secret watch failed; retrying"),
                }
            }
            Err(anyhow::anyhow!("the Secret watch ended"))
        });
    }

    let stores = Stores {
        providers: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        policies: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        quotas: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        cluster_quotas: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        trust_anchors: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        recorder_configs: watch_into(&mut tasks, Api::all(client.clone()), changed.clone()),
        namespaces,
        secrets,
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
            },
        ),
        client,
        settings,
        stores,
        usage: Mutex::new(BTreeMap::new()),
        changed,
    });

    // Waited for here, once: two tasks awaiting one store's readiness at
    // the same time can leave one of them unwoken.
    tokio::select! {
        ready = ctx.wait_until_ready() => ready?,
        Some(ended) = tasks.join_next() => {
            return Err(anyhow::anyhow!("a watch ended before the caches filled: {ended:?}"));
        }
    }
    tracing::info!("controllers: caches filled, reconciling");
    tasks.spawn(status_loop(ctx.clone()));
    tasks.spawn(usage_loop(ctx));

    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("a controller task failed: {e}")),
    }
}

async fn status_loop(ctx: Arc<Context>) -> anyhow::Result<()> {
    loop {
        pass(&ctx).await;
        tokio::select! {
            () = ctx.changed.notified() => {}
            () = tokio::time::sleep(RESYNC_PERIOD) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

async fn usage_loop(ctx: Arc<Context>) -> anyhow::Result<()> {
    let mut source = match &ctx.settings.recorder_url {
        None => Err(usage::NO_RECORDER.to_string()),
        Some(url) => RecorderSource::new(
            &ctx.client,
            url,
            env_path("TOLLGATE_RECORDER_TOKEN_FILE"),
            env_path("TOLLGATE_RECORDER_CA_FILE"),
        )
        .map_err(|e| format!("cannot query the recorder at {url}: {e}")),
    };
    if let Err(why) = &source {
        tracing::warn!(reason = %why, "quota usage stays unknown");
    }
    loop {
        let world = ctx.snapshot();
        let quotas = quota::quotas_to_refresh(&world);
        let now = u64::try_from(world.now.as_second()).unwrap_or(0);
        let observed = usage::refresh(
            source.as_mut().map_err(|why| why.as_str()),
            &quotas,
            &world.usage,
            now,
        )
        .await;
        if let Ok(mut usage) = ctx.usage.lock() {
            *usage = observed;
        }
        ctx.changed.notify_one();
        tokio::time::sleep(ctx.settings.quota_refresh).await;
    }
}

fn env_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// One pass over every object.
async fn pass(ctx: &Context) {
    let world = ctx.snapshot();
    let now = world.now;

    for p in &world.providers {
        let desired = provider::conditions_for(p, &world);
        let status = |conditions| LLMProviderStatus {
            conditions,
            observed_generation: p.meta().generation,
        };
        let current = p.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::all(ctx.client.clone()),
            p,
            &current.conditions,
            provider::CONDITION_TYPES,
            &desired,
            now,
            |c| {
                let next = status(c);
                (
                    next.observed_generation == current.observed_generation,
                    to_value(&next),
                )
            },
        )
        .await;
    }

    for p in &world.policies {
        let outcome = policy::status_for(p, &world);
        let current = p.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default()),
            p,
            &current.conditions,
            policy::CONDITION_TYPES,
            &outcome.conditions,
            now,
            |c| {
                // Only the fields this controller owns; the audit sweep owns the rest.
                let next = EgressPolicyStatus {
                    conditions: c,
                    observed_generation: p.meta().generation,
                    policy_hash: Some(outcome.policy_hash.clone()),
                    non_compliant_pods: None,
                    last_audit_time: None,
                };
                let same = next.observed_generation == current.observed_generation
                    && next.policy_hash == current.policy_hash;
                (same, to_value(&next))
            },
        )
        .await;
    }

    for q in &world.quotas {
        let outcome = quota::egress_quota_status(q, &world);
        let current = q.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::namespaced(ctx.client.clone(), &q.namespace().unwrap_or_default()),
            q,
            &current.conditions,
            quota::CONDITION_TYPES,
            &outcome.conditions,
            now,
            |c| quota_status(c, q.meta().generation, &outcome, &current),
        )
        .await;
    }

    for q in &world.cluster_quotas {
        let outcome = quota::cluster_quota_status(q, &world);
        let current = q.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::all(ctx.client.clone()),
            q,
            &current.conditions,
            quota::CONDITION_TYPES,
            &outcome.conditions,
            now,
            |c| quota_status(c, q.meta().generation, &outcome, &current),
        )
        .await;
    }

    for a in &world.trust_anchors {
        let outcome = trust::status_for(a, now);
        let current = a.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::all(ctx.client.clone()),
            a,
            &current.conditions,
            trust::CONDITION_TYPES,
            &outcome.conditions,
            now,
            |c| {
                let next = TrustAnchorStatus {
                    conditions: c,
                    observed_generation: a.meta().generation,
                    active_keys: Some(outcome.active_keys),
                };
                let same = next.observed_generation == current.observed_generation
                    && next.active_keys == current.active_keys;
                (same, to_value(&next))
            },
        )
        .await;
    }

    for r in &world.recorder_configs {
        let desired = recorder_config::conditions_for(r, &world);
        let current = r.status.clone().unwrap_or_default();
        write(
            ctx,
            Api::all(ctx.client.clone()),
            r,
            &current.conditions,
            recorder_config::CONDITION_TYPES,
            &desired,
            now,
            |c| {
                let next = RecorderConfigStatus {
                    conditions: c,
                    observed_generation: r.meta().generation,
                };
                (
                    next.observed_generation == current.observed_generation,
                    to_value(&next),
                )
            },
        )
        .await;
    }

    prune_configmaps(ctx, &world).await;
}

fn quota_status(
    conditions: Vec<Condition>,
    generation: Option<i64>,
    outcome: &quota::QuotaOutcome,
    current: &QuotaStatus,
) -> (bool, Value) {
    let next = QuotaStatus {
        conditions,
        observed_generation: generation,
        limits: outcome.limits.clone(),
        summary: outcome.summary.clone(),
    };
    let same = next.observed_generation == current.observed_generation
        && next.limits == current.limits
        && next.summary == current.summary;
    (same, to_value(&next))
}

fn to_value(status: &impl Serialize) -> Value {
    serde_json::to_value(status).unwrap_or(Value::Null)
}

/// Merges the desired conditions with the object's, builds the status with
/// `build` (which also says whether its other fields are unchanged), writes
/// it if anything changed, and publishes Events for changed conditions.
#[allow(clippy::too_many_arguments)]
async fn write<K>(
    ctx: &Context,
    api: Api<K>,
    obj: &K,
    current_conditions: &[Condition],
    owned_types: &[&str],
    desired: &[Desired],
    now: Timestamp,
    build: impl FnOnce(Vec<Condition>) -> (bool, Value),
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let previous = conditions::owned(current_conditions, owned_types);
    let merged = conditions::merge(&previous, desired, obj.meta().generation, now);
    let unchanged_conditions = conditions::same_conditions(&previous, &merged);
    let (unchanged_rest, status) = build(merged);
    if unchanged_conditions && unchanged_rest {
        return;
    }
    let what = match obj.namespace() {
        Some(ns) => format!("{} {ns}/{}", K::kind(&()), obj.name_any()),
        None => format!("{} {}", K::kind(&()), obj.name_any()),
    };
    let mut metadata = json!({ "name": obj.name_any() });
    if let Some(ns) = obj.namespace() {
        metadata["namespace"] = Value::String(ns);
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        // The next pass retries (a watch event or the resync tick).
        tracing::warn!(object = %what, error = %e, "writing status failed");
        return;
    }
    tracing::debug!(object = %what, "status written");
    let reference = obj.object_ref(&());
    for change in conditions::changes(&previous, desired) {
        let event = Event {
            type_: if change.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: change.reason.clone(),
            note: Some(truncate(
                &format!("{} is {}: {}", change.type_, change.status, change.message),
                1000,
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(object = %what, error = %e, "publishing an Event failed");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

async fn prune_configmaps(ctx: &Context, world: &World) {
    let api: Api<ConfigMap> = Api::all(ctx.client.clone());
    let listed = match api
        .list_metadata(&ListParams::default().labels(prune::MANAGED_BY_SELECTOR))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "listing owned ConfigMaps failed");
            return;
        }
    };
    let labelled: Vec<(String, String)> = listed
        .items
        .iter()
        .filter_map(|cm| Some((cm.namespace()?, cm.name_any())))
        .collect();
    for (ns, name) in prune::configmaps_to_prune(&labelled, world) {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, name = %name, "pruned a ConfigMap of a namespace no longer governed")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(namespace = %ns, name = %name, error = %e, "pruning failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abcdef", 3), "abc");
    }
}

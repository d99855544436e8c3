//! The I/O shell of the controllers: any change in the shared cache (or the
//! resync tick) triggers a pass that snapshots a [`World`], computes every
//! object's status with the pure functions, and writes only the statuses that
//! differ, with server-side apply, through one generic writer. Events go out
//! when a condition changes status or reason. The quota usage and key health
//! refresh and the
//! owned objects (the `tollgate-control-ca` ConfigMaps, applied and pruned)
//! run beside it, on the leader only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tollgate_crds::policy::EgressPolicyStatus;
use tollgate_crds::provider::LLMProviderStatus;
use tollgate_crds::quota::QuotaStatus;
use tollgate_crds::recorder_config::RecorderConfigStatus;
use tollgate_crds::trust::TrustAnchorStatus;

use super::conditions::{self, Desired};
use super::status::StatusKind;
use super::usage::{self, RecorderSource, UsageObservation};
use super::world::{KeyHealthObservation, World};
use super::{
    ControllerSettings, FIELD_MANAGER, policy, provider, prune, quota, recorder_config, trust,
};
use crate::cache::ClusterCache;
use crate::failures::Failures;
use crate::registration;

/// A full pass runs at least this often, for what no watch reports: time
/// passing (key expiry) and missed events.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Changes arriving together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long the controllers wait for the shared cache before each check.
const READY_POLL: Duration = Duration::from_secs(1);

/// What the leader publishes besides statuses: the CA bundle gateways trust,
/// as a `tollgate-control-ca` ConfigMap in every governed namespace.
#[derive(Debug, Clone)]
pub struct ControlCaPublication {
    /// The control endpoint's CA bundle, as the certificate source has it.
    pub bundle: watch::Receiver<Option<String>>,
    /// The recorder's CA (PEM), published with it.
    pub recorder_ca_pem: Option<String>,
}

struct Context {
    client: kube::Client,
    settings: ControllerSettings,
    recorder: Recorder,
    cache: ClusterCache,
    failures: Failures,
    usage: Mutex<BTreeMap<String, UsageObservation>>,
    key_health: Mutex<KeyHealthObservation>,
    /// Fresh usage arrived: run a pass.
    usage_changed: Notify,
}

fn cloned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().iter().map(|k| K::clone(k)).collect()
}

impl Context {
    fn snapshot(&self) -> World {
        let c = &self.cache;
        World {
            now: Timestamp::now(),
            operator_namespace: self.settings.operator_namespace.clone(),
            providers: cloned(&c.providers),
            policies: cloned(&c.policies),
            quotas: cloned(&c.quotas),
            cluster_quotas: cloned(&c.cluster_quotas),
            trust_anchors: cloned(&c.trust_anchors),
            recorder_configs: cloned(&c.recorder_configs),
            secrets: c.secret_keys(),
            namespaces: c
                .namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            usage: self.usage.lock().map(|u| u.clone()).unwrap_or_default(),
            key_health: self
                .key_health
                .lock()
                .map(|k| k.clone())
                .unwrap_or_default(),
        }
    }
}

/// Runs the status controllers, the quota usage refresh and the owned-object
/// publisher over the shared `cache` until one fails. Dropping the future
/// (leadership lost) stops everything (the tasks live in a [`JoinSet`]).
pub async fn run(
    client: kube::Client,
    settings: ControllerSettings,
    cache: ClusterCache,
    failures: Failures,
    control_ca: ControlCaPublication,
) -> anyhow::Result<()> {
    let readiness = cache.readiness();
    while !readiness.wait(READY_POLL).await {
        tracing::info!("controllers: waiting for the caches to list");
    }
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
        cache,
        failures,
        usage: Mutex::new(BTreeMap::new()),
        key_health: Mutex::new(KeyHealthObservation::default()),
        usage_changed: Notify::new(),
    });
    tracing::info!("controllers: caches filled, reconciling");
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    tasks.spawn(status_loop(ctx.clone()));
    tasks.spawn(usage_loop(ctx.clone()));
    {
        let (client, namespace) = (ctx.client.clone(), ctx.settings.operator_namespace.clone());
        let policy = ctx.settings.receipt_ca_rotation;
        // A tick well inside the publish lead, at most 30 s, at least 1 s.
        let tick = Duration::from_millis((policy.publish_lead_ms / 4).clamp(1_000, 30_000));
        tasks.spawn(async move {
            crate::receipt_ca::keep_rotated(client, namespace, policy, tick).await;
            Err(anyhow::anyhow!("the receipt CA rotation loop ended"))
        });
    }
    tasks.spawn(async move {
        registration::keep_control_ca_published(
            ctx.client.clone(),
            ctx.cache.clone(),
            control_ca.bundle,
            control_ca.recorder_ca_pem,
            ctx.failures.clone(),
        )
        .await;
        Err(anyhow::anyhow!("the control CA publisher ended"))
    });
    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("a controller task failed: {e}")),
    }
}

async fn status_loop(ctx: Arc<Context>) -> anyhow::Result<()> {
    let mut changes = ctx.cache.subscribe();
    loop {
        changes.borrow_and_update();
        pass(&ctx).await;
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(anyhow::anyhow!("the shared cache stopped"));
                }
            }
            () = ctx.usage_changed.notified() => {}
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
        if source.is_ok() && observed.values().any(|o| o.error.is_some()) {
            ctx.failures.count("usage_refresh");
        }
        if let Ok(mut usage) = ctx.usage.lock() {
            *usage = observed;
        }
        let key_health = match source.as_mut() {
            Ok(source) => source.key_health().await,
            Err(why) => Err(why.clone()),
        };
        if let Ok(mut observed) = ctx.key_health.lock() {
            match key_health {
                Ok(answer) => {
                    *observed = KeyHealthObservation {
                        answer: Some(answer),
                        error: None,
                    }
                }
                Err(why) => {
                    if source.is_ok() {
                        ctx.failures.count("key_health_refresh");
                    }
                    tracing::debug!(reason = %why, "key health not read");
                    observed.error = Some(why);
                }
            }
        }
        ctx.usage_changed.notify_one();
        tokio::time::sleep(ctx.settings.quota_refresh).await;
    }
}

fn env_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// One pass over every object: each kind's pure status, written if changed.
async fn pass(ctx: &Context) {
    let world = ctx.snapshot();
    for p in &world.providers {
        let next = LLMProviderStatus {
            conditions: vec![],
            observed_generation: p.meta().generation,
            keys: provider::key_statuses(p, &world.key_health),
        };
        write(
            ctx,
            p,
            &provider::conditions_for(p, &world),
            next,
            world.now,
        )
        .await;
    }
    for p in &world.policies {
        let outcome = policy::status_for(p, &world);
        // Only the fields the controllers own; the audit sweep owns the rest.
        let next = EgressPolicyStatus {
            conditions: vec![],
            observed_generation: p.meta().generation,
            policy_hash: Some(outcome.policy_hash.clone()),
            non_compliant_pods: None,
            last_audit_time: None,
        };
        write(ctx, p, &outcome.conditions, next, world.now).await;
    }
    for q in &world.quotas {
        let outcome = quota::egress_quota_status(q, &world);
        let next = quota_status(q.meta().generation, &outcome);
        write(ctx, q, &outcome.conditions, next, world.now).await;
    }
    for q in &world.cluster_quotas {
        let outcome = quota::cluster_quota_status(q, &world);
        let next = quota_status(q.meta().generation, &outcome);
        write(ctx, q, &outcome.conditions, next, world.now).await;
    }
    for a in &world.trust_anchors {
        let outcome = trust::status_for(a, world.now);
        let next = TrustAnchorStatus {
            conditions: vec![],
            observed_generation: a.meta().generation,
            active_keys: Some(outcome.active_keys),
        };
        write(ctx, a, &outcome.conditions, next, world.now).await;
    }
    for r in &world.recorder_configs {
        let next = RecorderConfigStatus {
            conditions: vec![],
            observed_generation: r.meta().generation,
        };
        write(
            ctx,
            r,
            &recorder_config::conditions_for(r, &world),
            next,
            world.now,
        )
        .await;
    }
    prune_configmaps(ctx, &world).await;
}

fn quota_status(generation: Option<i64>, outcome: &quota::QuotaOutcome) -> QuotaStatus {
    QuotaStatus {
        conditions: vec![],
        observed_generation: generation,
        limits: outcome.limits.clone(),
        summary: outcome.summary.clone(),
    }
}

/// The one status writer: merges the desired conditions with the object's,
/// writes `next` (with them) if anything the controllers own changed, and
/// publishes Events for changed conditions.
async fn write<K: StatusKind>(
    ctx: &Context,
    obj: &K,
    desired: &[Desired],
    mut next: K::Status,
    now: Timestamp,
) {
    let current = obj.current();
    let previous = conditions::owned(K::conditions(&current), K::CONDITION_TYPES);
    let merged = conditions::merge(&previous, desired, obj.meta().generation, now);
    let unchanged =
        conditions::same_conditions(&previous, &merged) && K::same_owned_fields(&next, &current);
    if unchanged {
        return;
    }
    K::set_conditions(&mut next, merged);
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
        "status": serde_json::to_value(&next).unwrap_or(Value::Null),
    });
    if let Err(e) = obj
        .api(ctx.client.clone())
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        // The next pass retries (a watch event or the resync tick).
        ctx.failures.count("status_write");
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
            ctx.failures.count("event_publish");
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
            ctx.failures.count("configmap_prune");
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
            Err(e) => {
                ctx.failures.count("configmap_prune");
                tracing::warn!(namespace = %ns, name = %name, error = %e, "pruning failed")
            }
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

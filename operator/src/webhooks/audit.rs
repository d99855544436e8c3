//! The continuous audit: every sweep re-checks the pods of governed
//! namespaces against the rule table, for pods admitted before the label was
//! set or while the webhook was down. Findings go to a Warning Event on the
//! pod (once per pod and finding), the gauge
//! `tollgate_admission_noncompliant_pods{namespace}`, and each EgressPolicy's
//! `status.nonCompliantPods`, `status.lastAuditTime` and `Audited`
//! condition (server-side apply, field manager `tollgate-operator-audit`).
//!
//! [`audit_namespace`] is the pure core; [`run`] the shell.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tollgate_admission::rules::{Subject, check_pod};
use tollgate_admission::{InjectionSettings, NamespaceView};
use tollgate_crds::EgressPolicy;

use super::AdmissionMetrics;
use super::cache::AdmissionCache;

/// Field manager of the status fields the sweep owns.
pub const FIELD_MANAGER: &str = "tollgate-operator-audit";
/// The condition the sweep owns on EgressPolicy status.
pub const CONDITION_AUDITED: &str = "Audited";
/// Environment variable overriding the sweep interval, in seconds.
pub const ENV_AUDIT_INTERVAL: &str = "TOLLGATE_AUDIT_INTERVAL_SECONDS";
/// Default time between sweeps.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Pods named in a condition message, at most.
const MAX_NAMED_PODS: usize = 5;

/// One non-compliant pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub pod: String,
    pub uid: String,
    /// Rule ids, in rule-table order, deduplicated.
    pub rules: Vec<&'static str>,
    /// The full message, as a denial would read.
    pub message: String,
}

/// The result of auditing one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceAudit {
    pub findings: Vec<Finding>,
    /// Non-compliant pods per EgressPolicy selecting them (every policy of
    /// the namespace is present, with 0 when clean).
    pub per_policy: BTreeMap<String, Vec<String>>,
}

/// Audits the pods of one namespace. Finished and terminating pods are skipped.
pub fn audit_namespace(
    ns: &NamespaceView,
    pods: &[Pod],
    settings: &InjectionSettings,
) -> NamespaceAudit {
    let mut audit = NamespaceAudit {
        findings: Vec::new(),
        per_policy: ns
            .policies
            .iter()
            .map(|p| (p.name.clone(), Vec::new()))
            .collect(),
    };
    let empty = PodSpec::default();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let spec = pod.spec.as_ref().unwrap_or(&empty);
        let violations = match check_pod(Subject::Pod, &pod.metadata, spec, ns, settings) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "audit: pod could not be checked");
                continue;
            }
        };
        if violations.is_empty() {
            continue;
        }
        let mut rules: Vec<&'static str> = violations.iter().map(|v| v.rule).collect();
        rules.dedup();
        let name = pod.name_any();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        for p in ns.selecting(&labels) {
            if let Some(pods) = audit.per_policy.get_mut(&p.name) {
                pods.push(name.clone());
            }
        }
        audit.findings.push(Finding {
            pod: name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            rules,
            message: tollgate_admission::review::denial_message(&violations),
        });
    }
    audit
}

/// The status patch for one policy.
pub fn status_patch(
    policy_name: &str,
    non_compliant: &[String],
    now: &str,
    previous: Option<&EgressPolicy>,
) -> serde_json::Value {
    let (status, reason, message) = if non_compliant.is_empty() {
        (
            "True",
            "AllPodsCompliant",
            "every pod this policy selects complies with the admission rules".to_string(),
        )
    } else {
        let mut named: Vec<&str> = non_compliant
            .iter()
            .take(MAX_NAMED_PODS)
            .map(String::as_str)
            .collect();
        if non_compliant.len() > MAX_NAMED_PODS {
            named.push("...");
        }
        (
            "False",
            "NonCompliantPods",
            format!(
                "{} pod(s) break admission rules (see their Events): {}",
                non_compliant.len(),
                named.join(", ")
            ),
        )
    };
    // Keep the transition time while the status holds.
    let since = previous
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_AUDITED))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.0.to_string())
        .unwrap_or_else(|| now.to_string());
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "EgressPolicy",
        "metadata": {"name": policy_name},
        "status": {
            "nonCompliantPods": non_compliant.len(),
            "lastAuditTime": now,
            "conditions": [{
                "type": CONDITION_AUDITED,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            }],
        },
    })
}

/// The sweep interval: [`ENV_AUDIT_INTERVAL`] or [`DEFAULT_INTERVAL`].
pub fn interval_from_env() -> Duration {
    std::env::var(ENV_AUDIT_INTERVAL)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_INTERVAL, Duration::from_secs)
}

/// Sweeps forever, while this replica holds the leader Lease (`leading`):
/// one replica publishes the Events and writes the policies' audit status.
pub async fn run(
    client: Client,
    cache: AdmissionCache,
    settings: InjectionSettings,
    metrics: AdmissionMetrics,
    interval: Duration,
    leading: tokio::sync::watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
        },
    );
    // (pod uid, rules) already reported, so each finding is one Event.
    let mut reported: BTreeSet<(String, Vec<&'static str>)> = BTreeSet::new();
    let mut previously_governed: BTreeSet<String> = BTreeSet::new();
    // The first sweep runs as soon as the caches have listed, so pods left
    // over from before the operator (or the label) are reported promptly.
    loop {
        if !*leading.borrow() {
            // A standby reports nothing; the leader's gauges are the ones.
            for gone in std::mem::take(&mut previously_governed) {
                metrics
                    .noncompliant_pods
                    .remove(&super::NamespaceLabel { namespace: gone });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if !cache.is_ready() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let governed: BTreeSet<String> = cache
            .governed_namespaces()
            .into_iter()
            .filter(|n| *n != settings.operator_namespace)
            .collect();
        for gone in previously_governed.difference(&governed) {
            metrics.noncompliant_pods.remove(&super::NamespaceLabel {
                namespace: gone.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for namespace in &governed {
            let pods = match Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await
            {
                Ok(list) => list.items,
                Err(e) => {
                    tracing::warn!(namespace, error = %e, "audit: listing pods failed");
                    continue;
                }
            };
            let view = NamespaceView::from_view(&cache, namespace);
            let audit = audit_namespace(&view, &pods, &settings);
            metrics
                .noncompliant_pods
                .get_or_create(&super::NamespaceLabel {
                    namespace: namespace.clone(),
                })
                .set(i64::try_from(audit.findings.len()).unwrap_or(i64::MAX));
            for finding in &audit.findings {
                let key = (finding.uid.clone(), finding.rules.clone());
                seen.insert(key.clone());
                if reported.contains(&key) {
                    continue;
                }
                let Some(pod) = pods
                    .iter()
                    .find(|p| p.metadata.uid.as_deref() == Some(&finding.uid))
                else {
                    continue;
                };
                tracing::warn!(namespace, pod = %finding.pod, rules = ?finding.rules, "audit: non-compliant pod");
                let event = Event {
                    type_: EventType::Warning,
                    reason: "TollgateNonCompliant".into(),
                    note: Some(truncate(&finding.message, 1000)),
                    action: "Audit".into(),
                    secondary: None,
                };
                match recorder.publish(&event, &pod.object_ref(&())).await {
                    Ok(()) => {
                        reported.insert(key);
                    }
                    Err(e) => {
                        tracing::warn!(namespace, pod = %finding.pod, error = %e, "audit: publishing an Event failed")
                    }
                }
            }
            let now = Timestamp::now().to_string();
            let policies = cache.policy_objects(namespace);
            let api: Api<EgressPolicy> = Api::namespaced(client.clone(), namespace);
            for (name, non_compliant) in &audit.per_policy {
                let previous = policies
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name));
                let body = status_patch(name, non_compliant, &now, previous.map(|p| p.as_ref()));
                if let Err(e) = api
                    .patch_status(
                        name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&body),
                    )
                    .await
                {
                    tracing::warn!(namespace, policy = %name, error = %e, "audit: writing EgressPolicy status failed");
                }
            }
        }
        // Forget pods that were fixed or deleted, so a recurrence is reported.
        reported.retain(|k| seen.contains(k));
        previously_governed = governed;
        tokio::time::sleep(interval).await;
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use tollgate_admission::PolicySummary;
    use tollgate_crds::policy::PolicyMode;
    use tollgate_wire::config::Selector;

    fn settings() -> InjectionSettings {
        InjectionSettings {
            gateway_image: "tollgate/gateway:test".into(),
            operator_namespace: "tollgate-system".into(),
            control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
            recorder_url: None,
            cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
        }
    }

    fn view() -> NamespaceView {
        NamespaceView {
            name: "team-a".into(),
            governed: true,
            policies: vec![PolicySummary {
                name: "default".into(),
                mode: PolicyMode::Enforce,
                selector: Some(Selector::default()),
                allow_opt_out: false,
                egress: vec![],
            }],
        }
    }

    fn pod(name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        }))
        .unwrap()
    }

    #[test]
    fn finds_uninjected_pods_and_counts_them_per_policy() {
        let plain = pod("old");
        let view = view();
        let injected = tollgate_admission::inject(&pod("new"), &view, &settings())
            .unwrap()
            .pod;
        let mut done = pod("done");
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        let audit = audit_namespace(&view, &[plain, injected, done], &settings());
        assert_eq!(audit.findings.len(), 1);
        assert_eq!(audit.findings[0].pod, "old");
        assert_eq!(audit.findings[0].rules, vec!["gateway-missing"]);
        assert_eq!(audit.per_policy["default"], vec!["old".to_string()]);
    }

    #[test]
    fn status_patch_keeps_transition_time_while_the_status_holds() {
        let now = "2026-01-02T00:00:00Z";
        let patch = status_patch("default", &["a".into()], now, None);
        assert_eq!(patch["status"]["nonCompliantPods"], json!(1));
        assert_eq!(patch["status"]["conditions"][0]["status"], json!("False"));
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            json!(now)
        );
        let clean = status_patch("default", &[], now, None);
        assert_eq!(
            clean["status"]["conditions"][0]["reason"],
            json!("AllPodsCompliant")
        );
        assert!(truncate("héllo", 2).ends_with("..."));
    }
}

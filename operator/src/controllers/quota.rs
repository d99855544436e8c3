//! `EgressQuota` and `ClusterEgressQuota` status: the quota is well formed,
//! the providers its limits name exist, and per limit the usage last read
//! from the recorder (`UsageKnown` says whether that read worked; it does not
//! gate `Ready`, since enforcement happens in the recorder either way).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use tollgate_crds::compile::{limit_window, parse_rolling};
use tollgate_crds::quota::{
    DEFAULT_WARNING_PERCENT, LimitStatus, QuotaLimit, QuotaStatus, QuotaSubjects,
};
use tollgate_crds::{ClusterEgressQuota, EgressQuota};
use tollgate_wire::config::Selector;

use super::conditions::{Desired, Status, with_ready};
use super::usage::{QuotaScope, QuotaToRefresh, summary};
use super::world::{World, quota_key};

pub const VALID: &str = "Valid";
pub const PROVIDERS_RESOLVED: &str = "ProvidersResolved";
pub const USAGE_KNOWN: &str = "UsageKnown";
/// `True` while a limit has used its quota's warning level of a cap.
pub const NEAR_LIMIT: &str = "NearLimit";
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[
    tollgate_crds::conditions::READY,
    VALID,
    PROVIDERS_RESOLVED,
    USAGE_KNOWN,
    NEAR_LIMIT,
];

/// What this controller writes into a quota's status.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaOutcome {
    pub conditions: Vec<Desired>,
    pub limits: Vec<LimitStatus>,
    pub summary: Option<String>,
}

/// Converts a Kubernetes label selector into the form compilation uses.
pub fn selector(s: &LabelSelector) -> Result<Selector, String> {
    tollgate_crds::compile::convert_selector(s)
}

/// The namespaces of `world` a cluster quota selects (none if its selector is invalid).
pub fn selected_namespaces(quota: &ClusterEgressQuota, world: &World) -> Vec<String> {
    let Ok(sel) = selector(&quota.spec.namespace_selector) else {
        return Vec::new();
    };
    world
        .namespaces
        .iter()
        .filter(|(_, labels)| sel.matches(labels))
        .map(|(name, _)| name.clone())
        .collect()
}

pub fn egress_quota_status(quota: &EgressQuota, world: &World) -> QuotaOutcome {
    let ns = quota.namespace().unwrap_or_default();
    let key = quota_key("EgressQuota", Some(&ns), &quota.name_any());
    common(
        &key,
        QuotaSpecParts {
            subjects: &quota.spec.subjects,
            namespace_selector: None,
            limits: &quota.spec.limits,
            warning_percent: quota.spec.warning_percent,
        },
        quota.status.as_ref(),
        world,
        "the quota is valid and its providers exist".into(),
    )
}

pub fn cluster_quota_status(quota: &ClusterEgressQuota, world: &World) -> QuotaOutcome {
    let key = quota_key("ClusterEgressQuota", None, &quota.name_any());
    let selected = selected_namespaces(quota, world).len();
    common(
        &key,
        QuotaSpecParts {
            subjects: &quota.spec.subjects,
            namespace_selector: Some(&quota.spec.namespace_selector),
            limits: &quota.spec.limits,
            warning_percent: quota.spec.warning_percent,
        },
        quota.status.as_ref(),
        world,
        format!("the quota is valid and its providers exist; it selects {selected} namespace(s)"),
    )
}

/// What the two quota kinds' specs share.
struct QuotaSpecParts<'a> {
    subjects: &'a QuotaSubjects,
    namespace_selector: Option<&'a LabelSelector>,
    limits: &'a [QuotaLimit],
    warning_percent: Option<u8>,
}

fn common(
    key: &str,
    spec: QuotaSpecParts<'_>,
    current: Option<&QuotaStatus>,
    world: &World,
    ready_message: String,
) -> QuotaOutcome {
    let QuotaSpecParts {
        subjects,
        namespace_selector,
        limits,
        warning_percent,
    } = spec;
    let mut problems = Vec::new();
    if let Some(Err(e)) = namespace_selector.map(selector) {
        problems.push(format!("namespaceSelector: {e}"));
    }
    if let Some(Err(e)) = subjects.pod_selector.as_ref().map(selector) {
        problems.push(format!("subjects.podSelector: {e}"));
    }
    problems.extend(limits.iter().filter_map(|l| limit_window(l).err()));
    let valid = if problems.is_empty() {
        Desired::gate(VALID, true, "Valid", format!("{} limit(s)", limits.len()))
    } else {
        Desired::gate(VALID, false, "InvalidQuota", problems.join("; "))
    };

    let mut missing: Vec<&str> = limits
        .iter()
        .flat_map(|l| l.providers.iter())
        .filter(|p| world.provider(p).is_none())
        .map(String::as_str)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let providers = if missing.is_empty() {
        Desired::gate(
            PROVIDERS_RESOLVED,
            true,
            "Resolved",
            "every provider named by a limit exists",
        )
    } else {
        Desired::gate(
            PROVIDERS_RESOLVED,
            false,
            "ProviderNotFound",
            format!(
                "LLMProvider {} named by a limit does not exist; that limit counts nothing from it",
                missing.join(", ")
            ),
        )
    };

    let observation = world.usage.get(key);
    let usage_known = match observation {
        None => Desired::info(
            USAGE_KNOWN,
            Status::Unknown,
            "Pending",
            "usage has not been read from the recorder yet",
        ),
        Some(o) => match &o.error {
            None => Desired::info(
                USAGE_KNOWN,
                Status::True,
                "UsageReported",
                "usage as last read from the recorder",
            ),
            Some(e) => Desired::info(
                USAGE_KNOWN,
                Status::False,
                "RecorderUnavailable",
                format!("{e}; showing the last values read"),
            ),
        },
    };

    // The newest values read, else what the status already shows: a recorder
    // outage keeps the last values. Limits no longer in the spec are dropped.
    let values: Vec<LimitStatus> = observation
        .and_then(|o| o.limits.clone())
        .or_else(|| current.map(|c| c.limits.clone()))
        .unwrap_or_default();
    let by_name: BTreeMap<&str, &LimitStatus> =
        values.iter().map(|v| (v.name.as_str(), v)).collect();
    let limit_statuses: Vec<LimitStatus> = limits
        .iter()
        .filter_map(|l| by_name.get(l.name.as_str()).map(|v| (*v).clone()))
        .collect();
    let was_near = current.is_some_and(|c| {
        c.conditions
            .iter()
            .any(|k| k.type_ == NEAR_LIMIT && k.status == Status::True.as_str())
    });
    let near_limit = near_limit(
        limits,
        &limit_statuses,
        warning_percent.unwrap_or(DEFAULT_WARNING_PERCENT),
        was_near,
    );
    QuotaOutcome {
        conditions: with_ready(
            vec![valid, providers, usage_known, near_limit],
            &ready_message,
        ),
        summary: summary(limits, &limit_statuses),
        limits: limit_statuses,
    }
}

/// Once `NearLimit` is `True`, it clears only this many points below the
/// warning level, so use hovering at the level does not flap it.
pub const NEAR_LIMIT_HYSTERESIS: u8 = 5;

/// Whether `NearLimit` watches a limit: budgets of a day or longer. Shorter
/// windows are rate limits, which fill and empty every few minutes by design.
fn watched(limit: &QuotaLimit) -> bool {
    use tollgate_crds::quota::CalendarWindow;
    match (&limit.window, &limit.rolling) {
        (Some(w), _) => matches!(w, CalendarWindow::Day | CalendarWindow::Month),
        (None, Some(r)) => parse_rolling(r).is_some_and(|secs| secs >= 86_400),
        (None, None) => false,
    }
}

/// `NearLimit`: `True` while a budget (a limit of a day or longer) has used
/// `warning_percent` of a cap (reason `AboveWarningLevel`), or all of a
/// calendar window's cap (`Exhausted`: nothing more until the reset; a
/// rolling window frees room as old use drops out, so it stays
/// `AboveWarningLevel`). `was_near`: the condition is `True` now, so it
/// clears only [`NEAR_LIMIT_HYSTERESIS`] points below the level.
pub fn near_limit(
    limits: &[QuotaLimit],
    statuses: &[LimitStatus],
    warning_percent: u8,
    was_near: bool,
) -> Desired {
    if statuses.is_empty() {
        return Desired {
            status: Status::Unknown,
            ..Desired::alert(
                NEAR_LIMIT,
                false,
                "UsageUnknown",
                "no usage has been read for this quota yet",
            )
        };
    }
    let budgets = statuses.iter().filter(|s| {
        limits
            .iter()
            .find(|l| l.name == s.name)
            .is_some_and(watched)
    });
    let Some((status, percent)) = budgets
        .filter_map(|s| Some((s, s.used_percent?)))
        .max_by_key(|(_, percent)| *percent)
    else {
        return Desired::alert(
            NEAR_LIMIT,
            false,
            "NoBudgetWindow",
            "NearLimit watches limits of a day or longer (window day or month, rolling 24h or more); this quota has none",
        );
    };
    let name = &status.name;
    if percent >= 100 && status.reset_at.is_some() {
        let resets = status.reset_at.as_deref().unwrap_or_default();
        return Desired::alert(
            NEAR_LIMIT,
            true,
            "Exhausted",
            format!(
                "limit {name:?} has used {percent}% of a cap: the requests it counts are refused until the window resets at {resets} (recorded as over budget under enforcement: shadow)"
            ),
        );
    }
    let forecast = status
        .exhausts_at
        .as_deref()
        .map(|at| format!("; at the rate so far it runs out at {at}"))
        .unwrap_or_default();
    let level = if was_near {
        warning_percent.saturating_sub(NEAR_LIMIT_HYSTERESIS)
    } else {
        warning_percent
    };
    if percent >= u32::from(level) {
        Desired::alert(
            NEAR_LIMIT,
            true,
            "AboveWarningLevel",
            format!(
                "limit {name:?} has used {percent}% of a cap (warning at {warning_percent}%){forecast}"
            ),
        )
    } else {
        Desired::alert(
            NEAR_LIMIT,
            false,
            "BelowWarningLevel",
            format!(
                "the most used budget, {name:?}, has used {percent}% of a cap (warning at {warning_percent}%){forecast}"
            ),
        )
    }
}

/// The quotas of `world` as the usage refresh needs them.
pub fn quotas_to_refresh(world: &World) -> Vec<QuotaToRefresh> {
    let mut out = Vec::new();
    for q in &world.quotas {
        let ns = q.namespace().unwrap_or_default();
        out.push(QuotaToRefresh {
            key: quota_key("EgressQuota", Some(&ns), &q.name_any()),
            query_namespace: Some(ns.clone()),
            scope: QuotaScope {
                namespaces: [ns].into_iter().collect(),
                service_accounts: q.spec.subjects.service_accounts.clone(),
            },
            limits: q.spec.limits.clone(),
        });
    }
    for q in &world.cluster_quotas {
        out.push(QuotaToRefresh {
            key: quota_key("ClusterEgressQuota", None, &q.name_any()),
            query_namespace: None,
            scope: QuotaScope {
                namespaces: selected_namespaces(q, world).into_iter().collect(),
                service_accounts: q.spec.subjects.service_accounts.clone(),
            },
            limits: q.spec.limits.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::provider::tests::good_world;
    use crate::controllers::usage::UsageObservation;
    use tollgate_crds::quota::QuotaAmounts;

    const BATCH: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: EgressQuota
metadata: {name: batch-jobs, namespace: team-a, generation: 1}
spec:
  subjects: {serviceAccounts: [batch-runner]}
  limits:
  - {name: monthly-cost, window: month, costMicroUSD: 50000000}
  - {name: hourly-gpt4o, window: hour, tokens: 2000000, models: ["gpt-4o*"], providers: [openai]}
"#;

    const ALL_TEAMS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ClusterEgressQuota
metadata: {name: all-teams}
spec:
  namespaceSelector: {matchLabels: {tollgate.dev/inject: enabled}}
  limits:
  - {name: rolling-requests, rolling: 1h30m, requests: 100000}
"#;

    fn quota() -> EgressQuota {
        serde_saphyr::from_str(BATCH).unwrap()
    }

    fn used(name: &str, cost: u64) -> LimitStatus {
        LimitStatus {
            name: name.into(),
            used: QuotaAmounts {
                cost_micro_usd: Some(cost),
                ..QuotaAmounts::default()
            },
            remaining: QuotaAmounts::default(),
            reset_at: None,
            used_percent: None,
            exhausts_at: None,
        }
    }

    fn at(name: &str, percent: u32, exhausts_at: Option<&str>) -> LimitStatus {
        LimitStatus {
            used_percent: Some(percent),
            exhausts_at: exhausts_at.map(str::to_string),
            reset_at: Some("2026-12-31T00:00:00Z".into()),
            ..used(name, u64::from(percent))
        }
    }

    fn limits_named(windows: &[(&str, &str)]) -> Vec<QuotaLimit> {
        windows
            .iter()
            .map(|(name, window)| {
                serde_saphyr::from_str(&format!("{{name: {name}, {window}, requests: 10}}"))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn near_limit_follows_the_most_used_budget() {
        let limits = limits_named(&[("a", "window: day"), ("b", "window: month")]);
        let below = near_limit(&limits, &[at("a", 10, None), at("b", 79, None)], 80, false);
        assert_eq!(
            (below.status, below.reason.as_str()),
            (Status::False, "BelowWarningLevel")
        );
        assert!(
            below.message.contains("\"b\", has used 79%"),
            "{}",
            below.message
        );
        let above = near_limit(
            &limits,
            &[at("a", 10, None), at("b", 80, Some("2026-12-20T10:00:00Z"))],
            80,
            false,
        );
        assert_eq!(
            (above.status, above.reason.as_str()),
            (Status::True, "AboveWarningLevel")
        );
        assert!(
            above.message.contains("runs out at 2026-12-20T10:00:00Z"),
            "{}",
            above.message
        );
        assert!(above.alerts_when_true && !above.gates_ready);
        let out = near_limit(&limits, &[at("a", 130, None)], 80, false);
        assert_eq!(
            (out.status, out.reason.as_str()),
            (Status::True, "Exhausted")
        );
        assert!(
            out.message
                .contains("until the window resets at 2026-12-31T00:00:00Z"),
            "{}",
            out.message
        );
        let unknown = near_limit(&limits, &[], 80, false);
        assert_eq!(
            (unknown.status, unknown.reason.as_str()),
            (Status::Unknown, "UsageUnknown")
        );
    }

    #[test]
    fn near_limit_does_not_flap() {
        let limits = limits_named(&[("d", "window: day")]);
        // Once near, it holds down to 5 points under the level.
        let holding = near_limit(&limits, &[at("d", 76, None)], 80, true);
        assert_eq!(holding.status, Status::True);
        let cleared = near_limit(&limits, &[at("d", 74, None)], 80, true);
        assert_eq!(cleared.status, Status::False);
        assert_eq!(
            near_limit(&limits, &[at("d", 76, None)], 80, false).status,
            Status::False
        );
        // A rolling budget at its cap frees room as use drops out: never Exhausted.
        let rolling = limits_named(&[("r", "rolling: 24h")]);
        let full = LimitStatus {
            reset_at: None,
            ..at("r", 100, None)
        };
        assert_eq!(
            near_limit(&rolling, &[full], 80, true).reason,
            "AboveWarningLevel"
        );
        // Minute and hour windows are rate limits, not budgets.
        let rates = limits_named(&[("m", "window: minute"), ("h", "rolling: 90m")]);
        let rate = near_limit(&rates, &[at("m", 100, None), at("h", 95, None)], 80, false);
        assert_eq!(
            (rate.status, rate.reason.as_str()),
            (Status::False, "NoBudgetWindow")
        );
    }

    #[test]
    fn the_quota_names_its_own_warning_level_and_an_alert_keeps_it_ready() {
        let mut q = quota();
        q.spec.warning_percent = Some(50);
        let mut world = good_world();
        world.usage.insert(
            "EgressQuota/team-a/batch-jobs".into(),
            UsageObservation {
                limits: Some(vec![at("monthly-cost", 60, None)]),
                error: None,
            },
        );
        let out = egress_quota_status(&q, &world);
        let near = out
            .conditions
            .iter()
            .find(|c| c.type_ == NEAR_LIMIT)
            .unwrap();
        assert_eq!(
            (near.status, near.reason.as_str()),
            (Status::True, "AboveWarningLevel")
        );
        let ready = out
            .conditions
            .iter()
            .find(|c| c.type_ == tollgate_crds::conditions::READY)
            .unwrap();
        assert_eq!(ready.status, Status::True, "{:?}", out.conditions);
        // At the default level (80 %), 60 % is no warning.
        q.spec.warning_percent = None;
        let out = egress_quota_status(&q, &world);
        let near = out
            .conditions
            .iter()
            .find(|c| c.type_ == NEAR_LIMIT)
            .unwrap();
        assert_eq!(near.status, Status::False);
    }

    #[test]
    fn a_quota_without_usage_yet_is_ready_with_usage_pending() {
        let out = egress_quota_status(&quota(), &good_world());
        assert_eq!(
            out.conditions[0].status,
            Status::True,
            "{:?}",
            out.conditions
        );
        let usage = out
            .conditions
            .iter()
            .find(|c| c.type_ == USAGE_KNOWN)
            .unwrap();
        assert_eq!(usage.status, Status::Unknown);
        assert!(out.limits.is_empty());
    }

    #[test]
    fn an_unreachable_recorder_keeps_the_last_values_and_stays_ready() {
        let mut world = good_world();
        world.usage.insert(
            "EgressQuota/team-a/batch-jobs".into(),
            UsageObservation {
                limits: Some(vec![used("monthly-cost", 7), used("removed-limit", 1)]),
                error: Some("recorder down".into()),
            },
        );
        let out = egress_quota_status(&quota(), &world);
        assert_eq!(out.conditions[0].status, Status::True);
        let usage = out
            .conditions
            .iter()
            .find(|c| c.type_ == USAGE_KNOWN)
            .unwrap();
        assert_eq!(
            (usage.status, usage.reason.as_str()),
            (Status::False, "RecorderUnavailable")
        );
        assert_eq!(
            out.limits,
            vec![used("monthly-cost", 7)],
            "limits not in the spec are dropped"
        );
        assert_eq!(
            out.summary.as_deref(),
            Some("costMicroUSD 7/50000000 (month)")
        );
    }

    #[test]
    fn values_already_in_the_status_survive_a_restart_without_a_recorder() {
        let mut q = quota();
        q.status = Some(QuotaStatus {
            limits: vec![used("monthly-cost", 9)],
            ..QuotaStatus::default()
        });
        let out = egress_quota_status(&q, &good_world());
        assert_eq!(out.limits, vec![used("monthly-cost", 9)]);
    }

    #[test]
    fn a_limit_naming_a_missing_provider_is_reported() {
        let mut world = good_world();
        world.providers.clear();
        let out = egress_quota_status(&quota(), &world);
        assert_eq!(out.conditions[0].status, Status::False);
        assert_eq!(out.conditions[0].reason, "ProviderNotFound");
    }

    #[test]
    fn a_cluster_quota_selects_namespaces_by_label_and_checks_its_limits() {
        let mut world = good_world();
        world.namespaces.insert(
            "team-a".into(),
            [("tollgate.dev/inject".to_string(), "enabled".to_string())].into(),
        );
        world.namespaces.insert("other".into(), BTreeMap::new());
        let q: ClusterEgressQuota = serde_saphyr::from_str(ALL_TEAMS).unwrap();
        assert_eq!(selected_namespaces(&q, &world), ["team-a"]);
        let out = cluster_quota_status(&q, &world);
        assert_eq!(out.conditions[0].status, Status::True);
        assert!(out.conditions[0].message.contains("1 namespace"));

        let mut bad = q.clone();
        bad.spec.limits[0].rolling = Some("1x".into());
        let out = cluster_quota_status(&bad, &world);
        assert_eq!(out.conditions[0].reason, "InvalidQuota");

        let mut zoned = q.clone();
        zoned.spec.limits[0].time_zone = Some("Europe/Lisbon".into());
        let out = cluster_quota_status(&zoned, &world);
        assert!(
            out.conditions[0]
                .message
                .contains("timeZone applies to a calendar window"),
            "a rolling window has no zone: {}",
            out.conditions[0].message
        );
        zoned.spec.limits[0].rolling = None;
        zoned.spec.limits[0].window = Some(tollgate_crds::quota::CalendarWindow::Day);
        zoned.spec.limits[0].time_zone = Some("Europe/Atlantis".into());
        let out = cluster_quota_status(&zoned, &world);
        assert_eq!(out.conditions[0].reason, "InvalidQuota");
        assert!(
            out.conditions[0]
                .message
                .contains("timeZone \"Europe/Atlantis\" is not a time zone"),
            "{}",
            out.conditions[0].message
        );
        zoned.spec.limits[0].time_zone = Some("Europe/Lisbon".into());
        let out = cluster_quota_status(&zoned, &world);
        assert_eq!(out.conditions[0].status, Status::True);

        let refresh = quotas_to_refresh(&World {
            cluster_quotas: vec![q],
            ..world
        });
        assert_eq!(refresh.len(), 1);
        assert_eq!(refresh[0].query_namespace, None);
        assert!(refresh[0].scope.namespaces.contains("team-a"));
    }
}

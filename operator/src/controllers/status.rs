//! What the status writer needs to know of each kind, so that one generic
//! writer ([`super::reconcile`]) serves all six: where its API is, which
//! condition types the controllers own, and which other status fields they
//! own (the audit sweep owns the rest of an EgressPolicy's status).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_crds::policy::EgressPolicyStatus;
use tollgate_crds::provider::LLMProviderStatus;
use tollgate_crds::quota::QuotaStatus;
use tollgate_crds::recorder_config::RecorderConfigStatus;
use tollgate_crds::trust::TrustAnchorStatus;
use tollgate_crds::{
    ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, RecorderConfig, TrustAnchor,
};

use super::{policy, provider, quota, recorder_config, trust};

/// A kind whose status the controllers write.
pub trait StatusKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync
{
    type Status: Serialize + Clone + Default + Send + Sync;
    /// The condition types the controllers own on this kind.
    const CONDITION_TYPES: &'static [&'static str];

    /// The API the object's status is written through.
    fn api(&self, client: kube::Client) -> Api<Self>;
    fn current(&self) -> Self::Status;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn set_conditions(status: &mut Self::Status, conditions: Vec<Condition>);
    /// Whether the fields besides conditions that the controllers own are
    /// the same in `next` as in `current` (nothing to write for them).
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool;
}

fn namespaced<K>(obj: &K, client: kube::Client) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client, &obj.namespace().unwrap_or_default())
}

/// The accessors every kind's status has the same way.
macro_rules! status_accessors {
    ($status:ty) => {
        fn current(&self) -> Self::Status {
            self.status.clone().unwrap_or_default()
        }
        fn conditions(status: &$status) -> &[Condition] {
            &status.conditions
        }
        fn set_conditions(status: &mut $status, conditions: Vec<Condition>) {
            status.conditions = conditions;
        }
    };
}

impl StatusKind for LLMProvider {
    type Status = LLMProviderStatus;
    const CONDITION_TYPES: &'static [&'static str] = provider::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
    status_accessors!(LLMProviderStatus);
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        next.observed_generation == current.observed_generation && next.keys == current.keys
    }
}

impl StatusKind for EgressPolicy {
    type Status = EgressPolicyStatus;
    const CONDITION_TYPES: &'static [&'static str] = policy::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        namespaced(self, client)
    }
    status_accessors!(EgressPolicyStatus);
    /// `nonCompliantPods` and `lastAuditTime` are the audit sweep's.
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        next.observed_generation == current.observed_generation
            && next.policy_hash == current.policy_hash
    }
}

impl StatusKind for EgressQuota {
    type Status = QuotaStatus;
    const CONDITION_TYPES: &'static [&'static str] = quota::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        namespaced(self, client)
    }
    status_accessors!(QuotaStatus);
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        same_quota_fields(next, current)
    }
}

impl StatusKind for ClusterEgressQuota {
    type Status = QuotaStatus;
    const CONDITION_TYPES: &'static [&'static str] = quota::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
    status_accessors!(QuotaStatus);
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        same_quota_fields(next, current)
    }
}

fn same_quota_fields(next: &QuotaStatus, current: &QuotaStatus) -> bool {
    next.observed_generation == current.observed_generation
        && next.limits == current.limits
        && next.summary == current.summary
}

impl StatusKind for TrustAnchor {
    type Status = TrustAnchorStatus;
    const CONDITION_TYPES: &'static [&'static str] = trust::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
    status_accessors!(TrustAnchorStatus);
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        next.observed_generation == current.observed_generation
            && next.active_keys == current.active_keys
    }
}

impl StatusKind for RecorderConfig {
    type Status = RecorderConfigStatus;
    const CONDITION_TYPES: &'static [&'static str] = recorder_config::CONDITION_TYPES;
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
    status_accessors!(RecorderConfigStatus);
    fn same_owned_fields(next: &Self::Status, current: &Self::Status) -> bool {
        next.observed_generation == current.observed_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_sweeps_fields_never_count_as_a_change() {
        let current = EgressPolicyStatus {
            observed_generation: Some(3),
            policy_hash: Some("h".into()),
            non_compliant_pods: Some(2),
            last_audit_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let next = EgressPolicyStatus {
            observed_generation: Some(3),
            policy_hash: Some("h".into()),
            ..Default::default()
        };
        assert!(EgressPolicy::same_owned_fields(&next, &current));
        let rehashed = EgressPolicyStatus {
            policy_hash: Some("other".into()),
            ..next.clone()
        };
        assert!(!EgressPolicy::same_owned_fields(&rehashed, &current));
        let newer = EgressPolicyStatus {
            observed_generation: Some(4),
            ..next
        };
        assert!(!EgressPolicy::same_owned_fields(&newer, &current));
    }

    #[test]
    fn quota_status_changes_with_its_limits_or_summary() {
        let current = QuotaStatus {
            observed_generation: Some(1),
            summary: Some("3/10 requests".into()),
            ..Default::default()
        };
        let same = QuotaStatus {
            conditions: vec![],
            ..current.clone()
        };
        assert!(EgressQuota::same_owned_fields(&same, &current));
        let moved = QuotaStatus {
            summary: Some("4/10 requests".into()),
            ..current.clone()
        };
        assert!(!ClusterEgressQuota::same_owned_fields(&moved, &current));
    }
}

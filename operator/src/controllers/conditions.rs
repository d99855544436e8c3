//! Status conditions: what a controller wants them to say ([`Desired`]), how
//! that merges with what the object carries (keeping `lastTransitionTime`
//! while a condition's status holds), the derived `Ready`, and which changes
//! deserve an Event. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tollgate_crds::conditions::READY;

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// What a controller wants one condition to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    /// CamelCase.
    pub reason: String,
    pub message: String,
    /// Whether `Ready` requires this condition to be `True`. Informational
    /// conditions (such as `UsageKnown`) are reported but do not gate it.
    pub gates_ready: bool,
    /// Whether `True` is bad news (an alert such as `NearLimit`): turning
    /// `True` is then a Warning Event.
    pub alerts_when_true: bool,
}

impl Desired {
    /// A condition that gates `Ready`.
    pub fn gate(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: if ok { Status::True } else { Status::False },
            reason: reason.into(),
            message: message.into(),
            gates_ready: true,
            alerts_when_true: false,
        }
    }

    /// A condition that informs but does not gate `Ready`.
    pub fn info(
        type_: &'static str,
        status: Status,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
            gates_ready: false,
            alerts_when_true: false,
        }
    }

    /// An alert: informational, and `True` while something needs attention.
    pub fn alert(
        type_: &'static str,
        active: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            alerts_when_true: true,
            ..Self::info(
                type_,
                if active { Status::True } else { Status::False },
                reason,
                message,
            )
        }
    }
}

/// Appends `Ready`: `True` with reason `Ready` when every gating condition is
/// `True`, else `False` with the reason and message of the first one that is not.
pub fn with_ready(mut conditions: Vec<Desired>, ready_message: &str) -> Vec<Desired> {
    let failing = conditions
        .iter()
        .find(|c| c.gates_ready && c.status != Status::True)
        .cloned();
    let ready = match failing {
        None => Desired::gate(READY, true, "Ready", ready_message),
        Some(f) => Desired::gate(
            READY,
            false,
            &f.reason,
            format!("{}: {}", f.type_, f.message),
        ),
    };
    conditions.insert(0, ready);
    conditions
}

/// Builds the conditions to write: each desired condition, stamped with
/// `generation`, keeping the previous `lastTransitionTime` when its status did
/// not change and using `now` when it did (or when it is new).
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let since = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == d.status.as_str())
                .map_or(Time(now), |p| p.last_transition_time.clone());
            Condition {
                type_: d.type_.to_string(),
                status: d.status.as_str().to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// A condition whose status or reason changed: worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// Whether this change is bad news (a gating condition, or `Ready`, turned
    /// not-`True`): a Warning Event rather than a Normal one.
    pub warning: bool,
}

/// The conditions of `desired` whose status or reason differs from `previous`
/// (a new condition counts as changed). Messages alone do not count, so that
/// counters in messages do not flood Events.
pub fn changes(previous: &[Condition], desired: &[Desired]) -> Vec<Change> {
    desired
        .iter()
        .filter(|d| {
            previous
                .iter()
                .find(|p| p.type_ == d.type_)
                .is_none_or(|p| p.status != d.status.as_str() || p.reason != d.reason)
        })
        .map(|d| Change {
            type_: d.type_.to_string(),
            status: d.status.as_str().to_string(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            warning: (d.gates_ready && d.status != Status::True)
                || (d.alerts_when_true && d.status == Status::True),
        })
        .collect()
}

/// Whether two condition lists say the same, ignoring order.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
                    && x.last_transition_time.0.as_second() == y.last_transition_time.0.as_second()
            })
        })
}

/// The conditions of `all` whose type is one of `types`: the ones this
/// controller owns (the audit sweep owns `Audited`, for instance).
pub fn owned(all: &[Condition], types: &[&str]) -> Vec<Condition> {
    all.iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str, since: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "old".into(),
            last_transition_time: Time(at(since)),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_reset_when_it_flips() {
        let previous = vec![
            condition("Ready", "True", "Ready", 100),
            condition("CredentialsResolved", "True", "Resolved", 100),
        ];
        let desired = vec![
            Desired::gate("Ready", true, "Ready", "fine"),
            Desired::gate("CredentialsResolved", false, "SecretNotFound", "gone"),
            Desired::gate("TrustResolved", true, "NotRequired", ""),
        ];
        let merged = merge(&previous, &desired, Some(2), at(500));
        assert_eq!(merged[0].last_transition_time, Time(at(100)));
        assert_eq!(merged[0].message, "fine");
        assert_eq!(merged[0].observed_generation, Some(2));
        assert_eq!(merged[1].last_transition_time, Time(at(500)));
        assert_eq!(merged[1].status, "False");
        assert_eq!(merged[2].last_transition_time, Time(at(500)));
    }

    #[test]
    fn a_reason_change_alone_keeps_the_transition_time() {
        let previous = vec![condition("Ready", "False", "SecretNotFound", 100)];
        let desired = vec![Desired::gate("Ready", false, "SecretKeyMissing", "k")];
        let merged = merge(&previous, &desired, Some(1), at(500));
        assert_eq!(merged[0].last_transition_time, Time(at(100)));
        assert_eq!(merged[0].reason, "SecretKeyMissing");
    }

    #[test]
    fn ready_takes_the_first_failing_gate_and_ignores_informational_ones() {
        let all_good = with_ready(
            vec![
                Desired::gate("A", true, "Fine", ""),
                Desired::info("UsageKnown", Status::False, "RecorderUnavailable", "down"),
            ],
            "all good",
        );
        assert_eq!(all_good[0].type_, "Ready");
        assert_eq!(all_good[0].status, Status::True);
        assert_eq!(all_good[0].reason, "Ready");

        let broken = with_ready(
            vec![
                Desired::gate("A", true, "Fine", ""),
                Desired::gate("B", false, "SecretKeyMissing", "key-b is missing"),
                Desired::gate("C", false, "Other", ""),
            ],
            "all good",
        );
        assert_eq!(broken[0].status, Status::False);
        assert_eq!(broken[0].reason, "SecretKeyMissing");
        assert_eq!(broken[0].message, "B: key-b is missing");
    }

    #[test]
    fn changes_are_status_or_reason_changes_not_message_changes() {
        let previous = vec![
            condition("Ready", "True", "Ready", 1),
            condition("UsageKnown", "True", "UsageReported", 1),
        ];
        let desired = vec![
            Desired::gate("Ready", true, "Ready", "a new message"),
            Desired::info("UsageKnown", Status::False, "RecorderUnavailable", "x"),
            Desired::gate("Compiled", false, "InvalidSelector", "bad"),
        ];
        let changed = changes(&previous, &desired);
        let types: Vec<_> = changed.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["UsageKnown", "Compiled"]);
        assert!(
            !changed[0].warning,
            "informational conditions are no warnings"
        );
        assert!(changed[1].warning);
        assert!(changes(&previous, &desired[..1]).is_empty());
    }

    #[test]
    fn an_alert_turning_true_is_a_warning_and_turning_false_is_not() {
        let previous = vec![condition("NearLimit", "False", "BelowWarningLevel", 1)];
        let raised = [Desired::alert(
            "NearLimit",
            true,
            "AboveWarningLevel",
            "85%",
        )];
        let changed = changes(&previous, &raised);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].warning);
        let previous = vec![condition("NearLimit", "True", "AboveWarningLevel", 1)];
        let cleared = [Desired::alert(
            "NearLimit",
            false,
            "BelowWarningLevel",
            "10%",
        )];
        let changed = changes(&previous, &cleared);
        assert_eq!(changed.len(), 1);
        assert!(!changed[0].warning);
        // Still near the limit with a new percentage: no new Event.
        assert!(
            changes(
                &previous,
                &[Desired::alert(
                    "NearLimit",
                    true,
                    "AboveWarningLevel",
                    "90%"
                )]
            )
            .is_empty()
        );
    }

    #[test]
    fn same_conditions_ignores_order_but_not_content() {
        let a = vec![
            condition("Ready", "True", "Ready", 1),
            condition("X", "True", "Y", 1),
        ];
        let mut b = a.clone();
        b.reverse();
        assert!(same_conditions(&a, &b));
        b[0].message = "new".into();
        assert!(!same_conditions(&a, &b));
        assert!(!same_conditions(&a, &a[..1]));
    }

    #[test]
    fn owned_keeps_only_listed_types() {
        let all = vec![
            condition("Ready", "True", "Ready", 1),
            condition("Audited", "True", "Swept", 1),
        ];
        let mine = owned(&all, &["Ready", "Compiled"]);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].type_, "Ready");
    }
}

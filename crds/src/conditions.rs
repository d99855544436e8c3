//! Status conditions shared by every kind: a list-map keyed by `type`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The condition every kind carries: `True` once the operator has accepted the
/// object and everything it refers to exists.
pub const READY: &str = "Ready";

/// Looks up a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the `Ready` condition is present and `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    find(conditions, READY).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Test".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    #[test]
    fn ready_requires_true_ready_condition() {
        assert!(!is_ready(&[]));
        assert!(!is_ready(&[condition("Ready", "False")]));
        assert!(!is_ready(&[condition("Degraded", "True")]));
        assert!(is_ready(&[
            condition("Degraded", "True"),
            condition("Ready", "True")
        ]));
    }
}

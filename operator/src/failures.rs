//! One counter of the operator's failed background operations, by operation,
//! in `/metrics` as `tollgate_operator_failures_total`. Each failure is also
//! logged where it happens; the counter is what an alert watches. Labels are a
//! fixed set of operation names, never object names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels: the operation that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub operation: &'static str,
}

/// Every operation the counter knows, so each series exists from the start.
pub const OPERATIONS: &[&str] = &[
    "watch",
    "status_write",
    "event_publish",
    "configmap_apply",
    "configmap_prune",
    "usage_refresh",
    "key_health_refresh",
];

/// The counter, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Failures(Family<FailureLabels, Counter>);

impl Failures {
    /// Registers the counter (with every operation at zero).
    pub fn register(&self, registry: &mut Registry) {
        for operation in OPERATIONS {
            let _ = self.0.get_or_create(&FailureLabels { operation });
        }
        registry.register(
            "tollgate_operator_failures",
            "Failed background operations (watches, status writes, Events, owned objects), by operation",
            self.0.clone(),
        );
    }

    /// Counts one failure of `operation` (one of [`OPERATIONS`]).
    pub fn count(&self, operation: &'static str) {
        debug_assert!(OPERATIONS.contains(&operation), "{operation}");
        self.0.get_or_create(&FailureLabels { operation }).inc();
    }

    /// How many failures of `operation` were counted.
    pub fn get(&self, operation: &'static str) -> u64 {
        self.0.get_or_create(&FailureLabels { operation }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_exposed_from_the_start_and_counts() {
        let failures = Failures::default();
        let mut registry = Registry::default();
        failures.register(&mut registry);
        failures.count("status_write");
        failures.count("status_write");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"tollgate_operator_failures_total{operation="status_write"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_operator_failures_total{operation="watch"} 0"#),
            "{text}"
        );
        assert_eq!(failures.get("status_write"), 2);
    }
}

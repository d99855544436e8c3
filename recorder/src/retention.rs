//! Retention: which sealed segments the recorder may delete.
//!
//! A sealed segment older than `RecorderConfig.spec.retention.sealedSegmentDays`
//! is deleted only once every configured checkpoint sink holds a checkpoint
//! covering it. Until then the only signed statement of those envelopes would be
//! the recorder's own, and deleting the newest segments would go unnoticed. With
//! no sink configured nothing is ever deleted (and the recorder says so).
//!
//! Deleting a segment removes its envelopes but keeps its row: genesis, seal,
//! checkpoint and the log's frontier after it, so range exports can still start
//! after it. The newest envelope of each stream still open is kept too, as the
//! recorder chains that stream's next envelope to it.

use crate::settings::SinkSettings;

/// The largest log size every configured sink holds a checkpoint for; `None`
/// when no sink is configured. A sink that never took a checkpoint holds 0.
pub fn covered_size(sinks: &[SinkSettings], delivered: &[(String, u64)]) -> Option<u64> {
    sinks
        .iter()
        .map(|sink| {
            delivered
                .iter()
                .find(|(name, _)| *name == sink.name)
                .map_or(0, |(_, size)| *size)
        })
        .min()
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments whose envelopes were deleted in this pass.
    pub pruned: Vec<u64>,
    /// Segments past retention kept because no sink holds a checkpoint covering
    /// them yet.
    pub awaiting_sink: u64,
    /// Why nothing past retention can be deleted, if so.
    pub blocked: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SinkTarget;

    fn sink(name: &str) -> SinkSettings {
        SinkSettings {
            name: name.into(),
            target: SinkTarget::File(format!("/tmp/{name}").into()),
        }
    }

    #[test]
    fn the_least_covered_sink_bounds_retention() {
        assert_eq!(covered_size(&[], &[("a".into(), 9)]), None);
        let sinks = [sink("a"), sink("b")];
        assert_eq!(covered_size(&sinks, &[]), Some(0));
        assert_eq!(covered_size(&sinks, &[("a".into(), 9)]), Some(0));
        assert_eq!(
            covered_size(&sinks, &[("a".into(), 9), ("b".into(), 4)]),
            Some(4)
        );
        // A sink no longer configured does not count.
        assert_eq!(
            covered_size(&sinks[..1], &[("a".into(), 9), ("old".into(), 1)]),
            Some(9)
        );
    }
}

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
/// when no sink is configured. A sink that never took a checkpoint holds 0, and
/// so does one pointed at a new target ([`SinkSettings::progress_key`]).
pub fn covered_size(sinks: &[SinkSettings], delivered: &[(String, u64)]) -> Option<u64> {
    sinks
        .iter()
        .map(|sink| {
            let key = sink.progress_key();
            delivered
                .iter()
                .find(|(held_by, _)| *held_by == key)
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

    fn held(sink: &SinkSettings, size: u64) -> (String, u64) {
        (sink.progress_key(), size)
    }

    #[test]
    fn the_least_covered_sink_bounds_retention() {
        let (a, b) = (sink("a"), sink("b"));
        assert_eq!(covered_size(&[], &[held(&a, 9)]), None);
        let sinks = [a.clone(), b.clone()];
        assert_eq!(covered_size(&sinks, &[]), Some(0));
        assert_eq!(covered_size(&sinks, &[held(&a, 9)]), Some(0));
        assert_eq!(covered_size(&sinks, &[held(&a, 9), held(&b, 4)]), Some(4));
        // A sink no longer configured does not count.
        let old = sink("old");
        assert_eq!(
            covered_size(&sinks[..1], &[held(&a, 9), held(&old, 1)]),
            Some(9)
        );
        // A sink pointed at a new target holds nothing there yet.
        let moved = SinkSettings {
            name: "a".into(),
            target: SinkTarget::Http("http://127.0.0.1:9/checkpoints".into()),
        };
        assert_eq!(covered_size(&[moved], &[held(&a, 9)]), Some(0));
    }
}

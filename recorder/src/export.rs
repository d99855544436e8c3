//! Bundle export: which segments a request covers, the export bounds, and the pure
//! assembly of stored segments, checkpoints and certificates into an evidence
//! bundle with the evidence `BundleBuilder`.
//!
//! An evidence bundle is always a complete prefix of the log, from segment 0 (the
//! verifier recomputes every root from the start). So a time range `[since,
//! until)` exports segments `0..=S`, where S is the last segment holding a receipt
//! that started before `until`, and `--segments A..B` exports `0..=B`; `since` and
//! `A` only narrow what the caller is told about. An export that reaches into the
//! open segment seals it first, so the newest receipts are included.

use serde::{Deserialize, Serialize};
use tollgate_evidence::{
    Bundle, BundleBuilder, Envelope, Genesis, Identifier, Seal, Segment, SignedCheckpoint,
    SignedKeyCertificate, SigningKey, Timestamp,
};

use crate::error::RecorderError;
use crate::settings::{MAX_EXPORT_ENVELOPES, MAX_EXPORT_SEGMENTS};
use crate::store::SealedSegmentRow;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportRange {
    /// Everything stored so far (sealing the open segment).
    Everything,
    /// Receipts that started before this instant (unix ms), with `since` for the record.
    Time {
        /// Start of the range of interest.
        since_ms: Option<u64>,
        /// End of the range (exclusive).
        until_ms: u64,
    },
    /// Segments `first..=last` (the bundle still starts at segment 0).
    Segments {
        /// First segment of interest.
        first: u64,
        /// Last segment.
        last: u64,
    },
}

/// Parses `A..B` (inclusive).
pub fn parse_segment_range(s: &str) -> Result<(u64, u64), RecorderError> {
    let bad = || RecorderError::BadRequest(format!("segments {s:?}: expected A..B, e.g. 0..12"));
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Refuses exports over the verifier's default bounds.
pub fn check_bounds(rows: &[SealedSegmentRow]) -> Result<(), RecorderError> {
    if rows.len() as u64 > MAX_EXPORT_SEGMENTS {
        return Err(RecorderError::TooLarge {
            what: "segments in one export",
            limit: MAX_EXPORT_SEGMENTS,
        });
    }
    let envelopes: u64 = rows.iter().map(|r| r.envelope_count).sum();
    if envelopes > MAX_EXPORT_ENVELOPES {
        return Err(RecorderError::TooLarge {
            what: "envelopes in one export",
            limit: MAX_EXPORT_ENVELOPES,
        });
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, RecorderError> {
    serde_json::from_str(json).map_err(|e| RecorderError::Internal(format!("stored {what}: {e}")))
}

/// Assembles a bundle from stored segments (each with its envelopes' JSON, in log
/// order) and certificate JSON. Pure.
pub fn assemble(
    origin: Identifier,
    created_at: Timestamp,
    segments: Vec<(SealedSegmentRow, Vec<String>)>,
    certificates: &[String],
    recorder_key: &SigningKey,
) -> Result<Bundle, RecorderError> {
    let mut builder = BundleBuilder::new(origin, created_at);
    for json in certificates {
        builder.add_certificate(parse::<SignedKeyCertificate>("certificate", json)?);
    }
    for (row, envelopes) in segments {
        let segment = Segment {
            genesis: parse::<Genesis>("genesis", &row.genesis_json)?,
            envelopes: envelopes
                .iter()
                .map(|e| parse::<Envelope>("envelope", e))
                .collect::<Result<_, _>>()?,
            seal: parse::<Seal>("seal", &row.seal_json)?,
        };
        let checkpoint = parse::<SignedCheckpoint>("checkpoint", &row.checkpoint_json)?;
        builder.add_segment(segment, checkpoint)?;
    }
    Ok(builder.build(recorder_key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ranges_parse() {
        assert_eq!(parse_segment_range("0..12").unwrap(), (0, 12));
        assert_eq!(parse_segment_range("3..3").unwrap(), (3, 3));
        assert!(parse_segment_range("4..3").is_err());
        assert!(parse_segment_range("4").is_err());
    }
}

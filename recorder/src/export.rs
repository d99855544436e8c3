//! Bundle export: which segments a request covers, the export bounds, and the pure
//! assembly of stored segments, checkpoints and certificates into an evidence
//! bundle with the evidence `BundleBuilder`.
//!
//! An export from segment 0 is a whole-log bundle; one that starts later is a
//! range bundle, based on the checkpoint of the segment before its first (with
//! the log's frontier there and a consistency proof to its last checkpoint):
//!
//! - everything: the segments retention kept (a range once it pruned any);
//! - `since`/`until`: from the first segment sealed at or after `since` (a
//!   receipt is stored after it started, so none started after `since` is in an
//!   earlier segment) to the last segment holding a receipt that started before
//!   `until`;
//! - `segments=A..B`: exactly those;
//! - `after=SIZE:HASH`: from the segment after the caller's checkpoint (the
//!   recorder checks it is this log's), to `until` or the end.
//!
//! An export that reaches into the open segment seals it first, so the newest
//! receipts are included.

use serde::{Deserialize, Serialize};
use tollgate_evidence::{
    Bundle, BundleBuilder, Envelope, Genesis, Identifier, RangeBase, Seal, Segment, Sha256Hex,
    SignedCheckpoint, SignedKeyCertificate, SigningKey, Timestamp,
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
    /// Segments `first..=last`.
    Segments {
        /// First segment.
        first: u64,
        /// Last segment.
        last: u64,
    },
    /// The segments after the checkpoint the caller holds.
    After {
        /// The held checkpoint's log size.
        size: u64,
        /// The hash of the held checkpoint's body.
        checkpoint_hash: Sha256Hex,
        /// End of the range (exclusive), if any.
        until_ms: Option<u64>,
    },
}

/// Parses `SIZE:HASH`, a checkpoint's log size and body hash.
pub fn parse_after(s: &str) -> Result<(u64, Sha256Hex), RecorderError> {
    let bad = || {
        RecorderError::BadRequest(format!(
            "after {s:?}: expected SIZE:HASH, a checkpoint's size and the hex SHA-256 of its body"
        ))
    };
    let (size, hash) = s.split_once(':').ok_or_else(bad)?;
    let size = size.trim().parse().map_err(|_| bad())?;
    let hash = Sha256Hex::parse(hash.trim()).map_err(|_| bad())?;
    Ok((size, hash))
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

/// Parses stored JSON; a failure means the store is corrupt.
pub fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, RecorderError> {
    serde_json::from_str(json).map_err(|e| RecorderError::Internal(format!("stored {what}: {e}")))
}

/// Assembles a bundle from stored segments (each with its envelopes' JSON, in log
/// order) and certificate JSON, after `base` if the first segment is not 0. Pure.
pub fn assemble(
    origin: Identifier,
    created_at: Timestamp,
    base: Option<RangeBase>,
    segments: Vec<(SealedSegmentRow, Vec<String>)>,
    certificates: &[String],
    recorder_key: &SigningKey,
) -> Result<Bundle, RecorderError> {
    let mut builder = match base {
        None => BundleBuilder::new(origin, created_at),
        Some(base) => BundleBuilder::after(origin, created_at, base)?,
    };
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

    #[test]
    fn a_held_checkpoint_is_named_by_size_and_hash() {
        let hash = "ab".repeat(32);
        let (size, parsed) = parse_after(&format!("42:{hash}")).unwrap();
        assert_eq!((size, parsed.to_hex()), (42, hash.clone()));
        for bad in ["42", &format!("x:{hash}"), "42:abcd", &format!("-1:{hash}")] {
            let err = parse_after(bad).unwrap_err().to_string();
            assert!(err.contains("SIZE:HASH"), "{bad}: {err}");
        }
    }
}

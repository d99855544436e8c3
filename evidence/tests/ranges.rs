//! Range bundles: the segments after a base checkpoint, with the base's
//! frontier and a consistency proof from it. They verify on their own, are
//! checked against checkpoints the auditor holds, and every way of detaching
//! them from their base is caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, Spec, assert_detected, build, flipped, range_of};
use tollgate_evidence::{ErrorCode, Phase, Verdict, VerifyOptions, verify_bundle};

fn range(from: usize) -> Fixture {
    let mut fixture = Fixture::valid();
    fixture.bundle = range_of(&fixture.bundle, from, &fixture.keys.recorder);
    fixture
}

#[test]
fn every_range_of_several_logs_verifies_and_commits_to_the_same_roots() {
    for spec in [
        Spec::default(),
        Spec {
            streams: 2,
            receipts_per_stream: 9,
            segment_size: 3,
            seed: 4,
        },
        Spec {
            streams: 5,
            receipts_per_stream: 4,
            segment_size: 1,
            seed: 7,
        },
    ] {
        let full = build(spec);
        assert_eq!(full.verify().verdict, Verdict::Pass);
        for from in 1..full.bundle.segments.len() {
            let bundle = range_of(&full.bundle, from, &full.keys.recorder);
            let report = full.verify_bytes(&bundle.to_json().unwrap());
            assert_eq!(
                report.verdict,
                Verdict::Pass,
                "{spec:?} from {from}: {report:?}"
            );
            let summary = report.summary.unwrap();
            let base = summary.base_checkpoint.unwrap();
            assert_eq!(
                base.size,
                full.bundle.checkpoints[from - 1].checkpoint.size.get()
            );
            assert_eq!(base.index, None);
            assert_eq!(
                summary.last_checkpoint,
                full.verify().summary.unwrap().last_checkpoint.map(|mut c| {
                    c.index = Some(c.index.unwrap() - from as u64);
                    c
                })
            );
            assert_eq!(bundle.manifest.ranges.leaf_index.first.get(), base.size);
            assert_eq!(
                bundle.manifest.ranges.segment_index.first.get(),
                from as u64
            );
        }
    }
}

#[test]
fn a_range_names_its_base_and_the_streams_that_began_before_it() {
    let fixture = range(1);
    let summary = fixture.verify().summary.unwrap();
    // Three streams interleave from the first segment on.
    assert_eq!(summary.streams_continued, 3);
    assert_eq!(summary.open_streams, 0);
    let full = Fixture::valid().verify().summary.unwrap();
    assert_eq!(full.streams_continued, 0);
    assert_eq!(full.base_checkpoint, None);
}

#[test]
fn held_checkpoints_at_or_after_the_base_are_checked_and_older_ones_refused() {
    let full = Fixture::valid();
    let fixture = range(2);
    let with_known = |known: usize| {
        let options = VerifyOptions {
            known_checkpoints: vec![full.bundle.checkpoints[known].clone()],
            ..fixture.options()
        };
        verify_bundle(&fixture.bytes(), &options)
    };
    // The base itself (what a nightly job kept from last night) and a later one.
    assert_eq!(with_known(1).verdict, Verdict::Pass);
    assert_eq!(with_known(2).verdict, Verdict::Pass);
    // Older than the base: the bundle cannot show the log still extends it.
    assert_detected(
        &with_known(0),
        Phase::CheckpointChain,
        ErrorCode::KnownCheckpointBeforeBundle,
    );
    // A held checkpoint of another history at the base's size.
    let mut forged = full.bundle.checkpoints[1].clone();
    forged.checkpoint.root = flipped(&forged.checkpoint.root);
    let options = VerifyOptions {
        known_checkpoints: vec![forged],
        ..fixture.options()
    };
    let report = verify_bundle(&fixture.bytes(), &options);
    assert_eq!(report.verdict, Verdict::Fail);
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::KnownCheckpointConflict)
    );
}

#[test]
fn a_frontier_that_does_not_hash_to_the_base_root_is_caught() {
    let mut fixture = range(1);
    let base = fixture.bundle.base.as_mut().unwrap();
    base.frontier[0] = flipped(&base.frontier[0]);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::BaseInvalid,
    );

    let mut fixture = range(1);
    fixture.bundle.base.as_mut().unwrap().frontier.pop();
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::BaseInvalid,
    );
}

#[test]
fn a_broken_consistency_proof_from_the_base_is_caught() {
    let mut fixture = range(1);
    let base = fixture.bundle.base.as_mut().unwrap();
    base.consistency[0] = flipped(&base.consistency[0]);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::ConsistencyProofInvalid,
    );
}

#[test]
fn a_base_checkpoint_the_recorder_did_not_sign_is_caught() {
    let mut fixture = range(1);
    let base = fixture.bundle.base.as_mut().unwrap();
    base.checkpoint.checkpoint.issued_at = common::at(common::T0 + 60_000);
    fixture.bundle.manifest.base_checkpoint_hash = Some(base.checkpoint.checkpoint.hash().unwrap());
    fixture.resign_manifest();
    let report = fixture.verify();
    assert_eq!(report.verdict, Verdict::Fail);
    // The first checkpoint links to the real base, and the signature is gone.
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::CheckpointLinkBroken)
    );
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::CheckpointSignatureInvalid && f.location.base_checkpoint)
    );
}

#[test]
fn dropping_the_first_segment_of_a_range_is_caught() {
    // Base checkpoint 0, but segments from 2: segment 1 cut out of the middle.
    let mut fixture = range(1);
    fixture.bundle.segments.remove(0);
    fixture.bundle.checkpoints.remove(0);
    fixture.bundle.proofs.inclusion.clear();
    fixture.bundle.proofs.consistency.clear();
    let manifest = tollgate_evidence::Manifest::summarize(
        &fixture.bundle.manifest.origin,
        fixture.bundle.manifest.created_at,
        fixture.bundle.base.as_ref(),
        &fixture.bundle.certificates,
        &fixture.bundle.segments,
        &fixture.bundle.checkpoints,
        &fixture.bundle.proofs,
    )
    .unwrap();
    fixture.bundle.manifest = manifest;
    fixture.resign_manifest();
    assert_detected(
        &fixture.verify(),
        Phase::Manifest,
        ErrorCode::LeafIndexMismatch,
    );
}

#[test]
fn a_range_with_its_base_stripped_is_not_a_log_from_segment_zero() {
    let mut fixture = range(1);
    fixture.bundle.base = None;
    fixture.bundle.manifest.base_checkpoint_hash = None;
    fixture.bundle.manifest.ranges.leaf_index.first = tollgate_evidence::SafeU64::ZERO;
    fixture.resign_manifest();
    let report = fixture.verify();
    assert_eq!(report.verdict, Verdict::Fail);
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::SegmentIndexMismatch)
    );
}

#[test]
fn a_manifest_that_hides_the_base_is_caught() {
    let mut fixture = range(1);
    fixture.bundle.manifest.base_checkpoint_hash = None;
    fixture.resign_manifest();
    assert_detected(
        &fixture.verify(),
        Phase::Manifest,
        ErrorCode::ManifestMismatch,
    );
}

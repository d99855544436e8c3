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

#[test]
fn every_continued_stream_carries_its_envelope_before_the_range() {
    let fixture = range(2);
    let base = fixture.bundle.base.as_ref().unwrap();
    assert_eq!(base.continuations.len(), 3);
    // Every stream's last envelope before segment 2 is in segment 1.
    assert_eq!(base.headers.len(), 1);
    assert_eq!(base.headers[0].seal.segment_index.get(), 1);
}

#[test]
fn a_continued_stream_without_its_continuation_is_caught() {
    let mut fixture = range(1);
    fixture.bundle.base.as_mut().unwrap().continuations.pop();
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::ContinuationMissing,
    );
}

#[test]
fn a_continuation_that_is_not_the_envelope_just_before_the_range_is_caught() {
    // The stream's envelope two before the range, with a valid proof: a gap.
    let full = Fixture::valid();
    let mut fixture = range(2);
    let base = fixture.bundle.base.as_mut().unwrap();
    let wanted = base.continuations[0].clone();
    let earlier = full.bundle.segments[1]
        .envelopes
        .iter()
        .position(|e| {
            e.stream_id == wanted.envelope.stream_id && e.seq.get() + 1 == wanted.envelope.seq.get()
        })
        .expect("the stream's previous envelope in segment 1");
    let hashes: Vec<_> = full.bundle.segments[1]
        .envelopes
        .iter()
        .map(|e| e.hash)
        .collect();
    base.continuations[0] = tollgate_evidence::Continuation::prove(
        full.bundle.segments[1].envelopes[earlier].clone(),
        1,
        earlier as u64,
        &hashes,
    )
    .unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::ContinuationMissing,
    );

    // An envelope edited after the fact no longer hashes to what it claims.
    let mut fixture = range(2);
    let continuation = &mut fixture.bundle.base.as_mut().unwrap().continuations[0];
    continuation.envelope.seq = tollgate_evidence::SafeU64::from(1u32);
    assert_eq!(fixture.verify().verdict, Verdict::Fail);
}

#[test]
fn a_continuation_not_proven_in_its_segment_is_caught() {
    let mut fixture = range(1);
    let continuation = &mut fixture.bundle.base.as_mut().unwrap().continuations[0];
    continuation.path[0] = flipped(&continuation.path[0]);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::ContinuationProofInvalid,
    );

    let mut fixture = range(1);
    fixture.bundle.base.as_mut().unwrap().headers.clear();
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::ContinuationProofInvalid,
    );
}

#[test]
fn headers_that_do_not_chain_to_the_base_seal_are_caught() {
    // A made-up segment root under which a forged continuation would verify.
    let mut fixture = range(2);
    let header = &mut fixture.bundle.base.as_mut().unwrap().headers[0];
    header.seal.root = flipped(&header.seal.root);
    let report = fixture.verify();
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::BaseHeadersInvalid),
        "{report:#?}"
    );
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn a_stream_whose_first_records_never_reached_the_log_cannot_start_a_range_past_them() {
    use tollgate_evidence::chain::StreamChainWriter;
    use tollgate_evidence::{BundleBuilder, Identifier, SignedReceipt};
    let spec = Spec {
        streams: 2,
        ..Spec::default()
    };
    let keys = common::Keys::new(spec.seed, 2);
    let mut a = StreamChainWriter::new(Identifier::new("stream-a").unwrap());
    let mut b = StreamChainWriter::new(Identifier::new("stream-b").unwrap());
    let mut log = Vec::new();
    for round in 0..7 {
        let body = common::receipt_body(&spec, 0, round);
        log.push(
            a.append(SignedReceipt::sign(body, &keys.gateways[0]).unwrap())
                .unwrap(),
        );
    }
    // Stream b's first two envelopes are dropped before they reach the log.
    for round in 0..4 {
        let body = common::receipt_body(&spec, 1, round);
        let envelope = b
            .append(SignedReceipt::sign(body, &keys.gateways[1]).unwrap())
            .unwrap();
        if round >= 2 {
            log.push(envelope);
        }
    }
    let (segments, checkpoints) = common::record(&log, 7, &keys.recorder);
    let mut builder = BundleBuilder::new(
        Identifier::new(common::ORIGIN).unwrap(),
        common::at(common::T0 + 2 * common::HOUR),
    );
    for g in 0..2 {
        builder.add_certificate(common::certificate(
            &keys,
            g,
            common::T0 - common::HOUR,
            common::T0 + common::DAY,
        ));
    }
    for (segment, checkpoint) in segments.into_iter().zip(checkpoints) {
        builder.add_segment(segment, checkpoint).unwrap();
    }
    let full = builder.build(&keys.recorder).unwrap();
    let options = VerifyOptions {
        trust: Some(common::trust_roots(&keys)),
        ..VerifyOptions::default()
    };
    let codes = |bundle: &tollgate_evidence::Bundle| -> Vec<ErrorCode> {
        verify_bundle(&bundle.to_json().unwrap(), &options)
            .findings()
            .map(|f| f.code)
            .collect()
    };
    assert!(codes(&full).contains(&ErrorCode::SeqGap));
    // From segment 1 on, stream b starts at seq 3 and nothing before the range
    // is its seq 2.
    let range = range_of(&full, 1, &keys.recorder);
    assert!(range.base.as_ref().unwrap().continuations.is_empty());
    assert!(
        codes(&range).contains(&ErrorCode::ContinuationMissing),
        "{:?}",
        codes(&range)
    );
}

#[test]
fn a_held_checkpoint_of_the_bases_size_must_be_the_base_itself() {
    // Same size and root, another seal: an insider's rewritten base, under
    // which made-up headers would chain.
    let full = Fixture::valid();
    let fixture = range(2);
    let mut other = full.bundle.checkpoints[1].clone();
    other.checkpoint.seal_hash = flipped(&other.checkpoint.seal_hash);
    other = tollgate_evidence::SignedCheckpoint::sign(other.checkpoint, &fixture.keys.recorder)
        .unwrap();
    let options = VerifyOptions {
        known_checkpoints: vec![other],
        ..fixture.options()
    };
    let report = verify_bundle(&fixture.bytes(), &options);
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::KnownCheckpointConflict
                && f.location.known_checkpoint == Some(0)),
        "{report:#?}"
    );
}

#[test]
fn continuations_are_one_per_stream_and_each_is_what_it_claims() {
    let mut fixture = range(1);
    let base = fixture.bundle.base.as_mut().unwrap();
    let copy = base.continuations[0].clone();
    base.continuations.insert(0, copy);
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::ContinuationMissing,
    );

    // Made-up content under a real continuation's hash and path.
    let mut fixture = range(1);
    let base = fixture.bundle.base.as_mut().unwrap();
    let mut forged = base.continuations[0].clone();
    forged.envelope.prev_hash = tollgate_evidence::PrevHash::Genesis;
    base.continuations[0] = forged;
    let report = fixture.verify();
    assert!(
        report
            .findings()
            .any(|f| f.code == ErrorCode::ContinuationProofInvalid),
        "{report:#?}"
    );
}

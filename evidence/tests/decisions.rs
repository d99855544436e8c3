//! Forward decisions in bundles: a receipt names the decision it went
//! upstream under; a decision no receipt names is reported as "forwarded,
//! outcome unknown" (tolerated in open streams, where the request may still be
//! in flight); a receipt naming a decision the bundle lacks fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{HOUR, ORIGIN, T0, at, certificate, decision, receipt_body, record, trust_roots};
use tollgate_evidence::chain::{CloseReason, StreamChainWriter};
use tollgate_evidence::{
    BundleBuilder, ErrorCode, Identifier, Verdict, VerificationReport, VerifyOptions, verify_bundle,
};

/// One stream: decision 1 then its receipt, then decision 2 (whose receipt
/// never came), then a close record if `closed`. `link` is what the receipt
/// names; with `same_request` false, decision 1 is for another request.
fn verify(closed: bool, link: u64) -> VerificationReport {
    verify_with(closed, link, true)
}

fn verify_with(closed: bool, link: u64, same_request: bool) -> VerificationReport {
    let (bundle, options) = bundle_with(closed, link, same_request, 10);
    verify_bundle(&bundle.to_json().unwrap(), &options)
}

fn bundle_with(
    closed: bool,
    link: u64,
    same_request: bool,
    segment_size: usize,
) -> (tollgate_evidence::Bundle, VerifyOptions) {
    let spec = common::Spec {
        streams: 1,
        ..common::Spec::default()
    };
    let keys = common::Keys::new(spec.seed, 1);
    let key = &keys.gateways[0];
    let mut writer = StreamChainWriter::new(Identifier::new("stream-decisions").unwrap());
    let mut log = Vec::new();
    let mut receipt = receipt_body(&spec, 0, 0);
    let mut first = decision(1, common::receipt_time(&spec, 0, 0));
    if same_request {
        first.request_id = receipt.request_id.clone();
        first.request_sha256 = receipt.request_sha256;
    }
    log.push(writer.sign_and_append_decision(first, key).unwrap());
    receipt.decision_id = Some(decision(link, 0).id);
    log.push(writer.sign_and_append(receipt, key).unwrap());
    log.push(
        writer
            .sign_and_append_decision(decision(2, common::receipt_time(&spec, 0, 1)), key)
            .unwrap(),
    );
    if closed {
        log.push(
            writer
                .close(CloseReason::Shutdown, at(T0 + HOUR), key)
                .unwrap(),
        );
    }
    let (segments, checkpoints) = record(&log, segment_size, &keys.recorder);
    let mut builder = BundleBuilder::new(Identifier::new(ORIGIN).unwrap(), at(T0 + 2 * HOUR));
    builder.add_certificate(certificate(&keys, 0, T0 - HOUR, T0 + common::DAY));
    for (segment, checkpoint) in segments.into_iter().zip(checkpoints) {
        builder.add_segment(segment, checkpoint).unwrap();
    }
    let bundle = builder.build(&keys.recorder).unwrap();
    let options = VerifyOptions {
        trust: Some(trust_roots(&keys)),
        ..VerifyOptions::default()
    };
    (bundle, options)
}

fn codes(report: &VerificationReport) -> Vec<ErrorCode> {
    report.findings().map(|f| f.code).collect()
}

#[test]
fn a_decision_without_its_receipt_is_forwarded_outcome_unknown() {
    let report = verify(true, 1);
    assert_eq!(codes(&report), [ErrorCode::ForwardedOutcomeUnknown]);
    assert_eq!(report.verdict, Verdict::Warn);
    assert!(
        !report.passed_but_open_streams(),
        "in a closed stream an unknown outcome is not in flight"
    );
    let summary = report.summary.as_ref().unwrap();
    assert_eq!(
        (
            summary.decisions,
            summary.receipts,
            summary.close_records,
            summary.forwarded_outcome_unknown
        ),
        (2, 1, 1, 1)
    );
    let finding = report.findings().next().unwrap();
    assert!(
        finding.detail.contains("forwarded, outcome unknown") && finding.detail.contains("req-2"),
        "{}",
        finding.detail
    );
}

#[test]
fn in_an_open_stream_the_unknown_outcome_is_a_request_in_flight() {
    let report = verify(false, 1);
    let mut found = codes(&report);
    found.sort();
    assert_eq!(
        found,
        [ErrorCode::StreamOpen, ErrorCode::ForwardedOutcomeUnknown]
    );
    assert!(report.passed_but_open_streams(), "{report:#?}");
}

#[test]
fn a_receipt_naming_an_absent_decision_or_another_requests_fails() {
    for report in [verify(true, 9), verify_with(true, 1, false)] {
        let found = codes(&report);
        assert!(found.contains(&ErrorCode::DecisionMissing), "{found:?}");
        assert_eq!(report.verdict, Verdict::Fail);
    }
    let report = verify_with(true, 1, false);
    let finding = report
        .findings()
        .find(|f| f.code == ErrorCode::DecisionMissing)
        .unwrap();
    assert!(
        finding.detail.contains("another request"),
        "{}",
        finding.detail
    );
}

#[test]
fn in_a_range_a_receipt_may_name_a_decision_from_before_its_base() {
    // One envelope per segment: decision 1, its receipt, decision 2, close.
    let (full, options) = bundle_with(true, 1, true, 1);
    let keys = common::Keys::new(common::Spec::default().seed, 1);
    let range = common::range_of(&full, 1, &keys.recorder);
    let report = verify_bundle(&range.to_json().unwrap(), &options);
    assert_eq!(
        codes(&report),
        [ErrorCode::ForwardedOutcomeUnknown],
        "{report:#?}"
    );
    let summary = report.summary.unwrap();
    assert_eq!(
        (summary.decisions_before_range, summary.streams_continued),
        (1, 1)
    );
    // The same receipt in a bundle from segment 0 finds its decision.
    let report = verify_bundle(&full.to_json().unwrap(), &options);
    assert_eq!(report.summary.unwrap().decisions_before_range, 0);
}

#[test]
fn in_a_range_two_receipts_cannot_name_the_same_decision_from_before_it() {
    let spec = common::Spec {
        streams: 1,
        ..common::Spec::default()
    };
    let keys = common::Keys::new(spec.seed, 1);
    let key = &keys.gateways[0];
    let mut writer = StreamChainWriter::new(Identifier::new("stream-twice").unwrap());
    let first = decision(1, common::receipt_time(&spec, 0, 0));
    let mut log = vec![writer.sign_and_append_decision(first.clone(), key).unwrap()];
    for round in 0..2 {
        let mut receipt = receipt_body(&spec, 0, round);
        receipt.decision_id = Some(first.id.clone());
        log.push(writer.sign_and_append(receipt, key).unwrap());
    }
    let (segments, checkpoints) = record(&log, 1, &keys.recorder);
    let mut builder = BundleBuilder::new(Identifier::new(ORIGIN).unwrap(), at(T0 + 2 * HOUR));
    builder.add_certificate(certificate(&keys, 0, T0 - HOUR, T0 + common::DAY));
    for (segment, checkpoint) in segments.into_iter().zip(checkpoints) {
        builder.add_segment(segment, checkpoint).unwrap();
    }
    let full = builder.build(&keys.recorder).unwrap();
    let range = common::range_of(&full, 1, &keys.recorder);
    let options = VerifyOptions {
        trust: Some(trust_roots(&keys)),
        ..VerifyOptions::default()
    };
    let report = verify_bundle(&range.to_json().unwrap(), &options);
    let finding = report
        .findings()
        .find(|f| f.code == ErrorCode::DecisionMissing)
        .expect("the second receipt naming it");
    assert!(
        finding.detail.contains("second receipt"),
        "{}",
        finding.detail
    );
    assert_eq!(report.summary.unwrap().decisions_before_range, 1);
}

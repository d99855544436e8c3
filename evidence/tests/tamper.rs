//! The tamper suite: every attack on a valid bundle is caught, in the right phase,
//! with the right code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{DAY, Fixture, HOUR, T0, assert_detected, at, certificate, flipped};
use tollgate_evidence::chain::{CloseReason, EnvelopeRecord, StreamChainWriter};
use tollgate_evidence::fields::{DnsLabel, Identifier, PodUid, SafeU64};
use tollgate_evidence::hash::PrevHash;
use tollgate_evidence::keys::{KeyId, PublicKey, sign_canonical};
use tollgate_evidence::receipt::SignedReceipt;
use tollgate_evidence::trust::{KeyRole, KeyState};
use tollgate_evidence::{ErrorCode, Phase, Verdict, VerifyLimits, VerifyOptions, verify_bundle};

/// Replaces the first occurrence of `from` in the JSON text.
fn edit_json(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(from), "{from} not in bundle");
    text.replacen(from, to, 1).into_bytes()
}

/// Flips one hex digit of the string value that follows the first `"key":"`.
fn flip_hex_after(bytes: &[u8], key: &str) -> Vec<u8> {
    let needle = format!("\"{key}\":\"");
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let start = text.find(&needle).unwrap() + needle.len();
    let mut out = bytes.to_vec();
    out[start] = if out[start] == b'0' { b'1' } else { b'0' };
    out
}

// ---- the valid bundle ----------------------------------------------------------

#[test]
fn valid_bundle_passes_with_trust_anchor() {
    let fixture = Fixture::valid();
    let report = fixture.verify();
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{:#?}",
        report.findings().collect::<Vec<_>>()
    );
    assert!(report.phases.iter().all(|p| p.verdict == Verdict::Pass));
    assert_eq!(report.phases.len(), 7);
    let summary = report.summary.unwrap();
    assert_eq!(
        (
            summary.segments,
            summary.envelopes,
            summary.receipts,
            summary.streams
        ),
        (3, 21, 18, 3)
    );
    assert_eq!(summary.open_streams, 0);
    // Every receipt either lists its quota check or is counted as unchecked.
    let quota = summary.guard_checks["quota"];
    assert!(quota.passed > 0 && quota.denied > 0, "{quota:?}");
    assert!(summary.receipts_without_checks > 0);
    assert_eq!(
        quota.passed + quota.denied + quota.audit_only + summary.receipts_without_checks,
        summary.receipts
    );
}

#[test]
fn valid_bundle_warns_without_trust_anchor() {
    let fixture = Fixture::valid();
    let report = verify_bundle(&fixture.bytes(), &VerifyOptions::default());
    assert_eq!(report.verdict, Verdict::Warn);
    assert!(!report.passed());
    let signatures = report.phase(Phase::Signatures).unwrap();
    assert_eq!(signatures.verdict, Verdict::Warn);
    assert_eq!(signatures.findings.len(), 1);
    assert_eq!(signatures.findings[0].code, ErrorCode::NoTrustRoot);
    assert!(
        report
            .phases
            .iter()
            .filter(|p| p.phase != Phase::Signatures)
            .all(|p| p.verdict == Verdict::Pass)
    );
}

#[test]
fn retired_ca_key_still_verifies_certificates_issued_before_retirement() {
    let mut fixture = Fixture::valid();
    let ca = &mut fixture.trust.keys[0];
    ca.state = KeyState::Retired;
    ca.not_after = Some(at(T0));
    assert_eq!(fixture.verify().verdict, Verdict::Pass);
    // Retired before the certificates were issued: they are no longer vouched for.
    fixture.trust.keys[0].not_after = Some(at(T0 - 2 * HOUR));
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::KeyOutsideWindow,
    );
}

#[test]
fn pretty_printed_bundle_still_passes() {
    let fixture = Fixture::valid();
    let report = fixture.verify_bytes(&fixture.bundle.to_json_pretty().unwrap());
    assert_eq!(report.verdict, Verdict::Pass);
}

// ---- phase 1: manifest structure -------------------------------------------------

#[test]
fn oversized_input_fails_before_parsing() {
    let fixture = Fixture::valid();
    let bytes = fixture.bytes();
    let options = VerifyOptions {
        limits: VerifyLimits {
            max_bundle_bytes: bytes.len() as u64 - 1,
            ..VerifyLimits::default()
        },
        ..fixture.options()
    };
    let report = verify_bundle(&bytes, &options);
    assert_detected(&report, Phase::Manifest, ErrorCode::InputTooLarge);
    assert!(report.summary.is_none());
    // Garbage is not even looked at once it is over the limit.
    let garbage = vec![0xff; 64];
    let small = VerifyOptions {
        limits: VerifyLimits {
            max_bundle_bytes: 63,
            ..VerifyLimits::default()
        },
        ..options
    };
    let report = verify_bundle(&garbage, &small);
    assert_eq!(
        report.phase(Phase::Manifest).unwrap().findings[0].code,
        ErrorCode::InputTooLarge
    );
    assert!(
        report
            .phases
            .iter()
            .skip(1)
            .all(|p| p.verdict == Verdict::Skipped)
    );
}

#[test]
fn too_many_envelopes_per_segment_is_a_limit_failure() {
    let fixture = Fixture::valid();
    let options = VerifyOptions {
        limits: VerifyLimits {
            max_envelopes_per_segment: 6,
            ..VerifyLimits::default()
        },
        ..fixture.options()
    };
    assert_detected(
        &verify_bundle(&fixture.bytes(), &options),
        Phase::Manifest,
        ErrorCode::LimitExceeded,
    );
}

#[test]
fn duplicate_json_keys_are_rejected() {
    let fixture = Fixture::valid();
    let bytes = edit_json(
        &fixture.bytes(),
        "\"cost_micro_usd\":",
        "\"cost_micro_usd\":0,\"cost_micro_usd\":",
    );
    assert_detected(
        &fixture.verify_bytes(&bytes),
        Phase::Manifest,
        ErrorCode::DuplicateKey,
    );
}

#[test]
fn float_valued_numbers_are_rejected() {
    let fixture = Fixture::valid();
    let text = String::from_utf8(fixture.bytes()).unwrap();
    let start = text.find("\"input_tokens\":").unwrap() + "\"input_tokens\":".len();
    let digits = text[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let mut edited = text.clone();
    edited.insert_str(start + digits, ".0");
    assert_detected(
        &fixture.verify_bytes(edited.as_bytes()),
        Phase::Manifest,
        ErrorCode::NonIntegerNumber,
    );
}

#[test]
fn integers_beyond_2_pow_53_are_rejected() {
    let fixture = Fixture::valid();
    let text = String::from_utf8(fixture.bytes()).unwrap();
    let start = text.find("\"response_length\":").unwrap() + "\"response_length\":".len();
    let digits = text[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let edited = format!(
        "{}9007199254740992{}",
        &text[..start],
        &text[start + digits..]
    );
    assert_detected(
        &fixture.verify_bytes(edited.as_bytes()),
        Phase::Manifest,
        ErrorCode::IntegerOutOfRange,
    );
}

#[test]
fn unknown_field_is_a_schema_violation() {
    let fixture = Fixture::valid();
    let bytes = edit_json(
        &fixture.bytes(),
        "\"cost_micro_usd\":",
        "\"prompt\":\"hello\",\"cost_micro_usd\":",
    );
    assert_detected(
        &fixture.verify_bytes(&bytes),
        Phase::Manifest,
        ErrorCode::SchemaViolation,
    );
}

#[test]
fn live_receipt_without_tls_hash_is_a_schema_violation() {
    let mut fixture = Fixture::valid();
    let receipt = fixture.receipt_mut(1, 1);
    assert_eq!(receipt.body.lane, tollgate_evidence::Lane::Live);
    let tls = receipt
        .body
        .upstream
        .as_ref()
        .unwrap()
        .tls_cert_sha256
        .unwrap()
        .to_hex();
    let bytes = edit_json(&fixture.bytes(), &format!("\"{tls}\""), "null");
    assert_detected(
        &fixture.verify_bytes(&bytes),
        Phase::Manifest,
        ErrorCode::SchemaViolation,
    );
}

#[test]
fn changed_manifest_counts() {
    let mut fixture = Fixture::valid();
    let counts = &mut fixture.bundle.manifest.counts;
    counts.receipts = counts.receipts.checked_increment().unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::Manifest,
        ErrorCode::ManifestMismatch,
    );
}

#[test]
fn swapped_segments() {
    let mut fixture = Fixture::valid();
    fixture.bundle.segments.swap(0, 1);
    assert_detected(
        &fixture.verify(),
        Phase::Manifest,
        ErrorCode::SegmentIndexMismatch,
    );
}

#[test]
fn unsorted_certificates() {
    let mut fixture = Fixture::valid();
    fixture.bundle.certificates.swap(0, 1);
    assert_detected(
        &fixture.verify(),
        Phase::Manifest,
        ErrorCode::CertificatesNotSorted,
    );
}

// ---- phase 2: content hashes -----------------------------------------------------

#[test]
fn flipped_receipt_body_byte() {
    let fixture = Fixture::valid();
    let bytes = flip_hex_after(&fixture.bytes(), "response_sha256");
    assert_detected(
        &fixture.verify_bytes(&bytes),
        Phase::ContentHashes,
        ErrorCode::EnvelopeHashMismatch,
    );
}

#[test]
fn flipped_chain_hash_byte() {
    let mut fixture = Fixture::valid();
    let envelope = fixture.envelope_mut(0, 2);
    envelope.hash = flipped(&envelope.hash);
    assert_detected(
        &fixture.verify(),
        Phase::ContentHashes,
        ErrorCode::EnvelopeHashMismatch,
    );
}

#[test]
fn altered_usage_numbers_without_rehash() {
    let mut fixture = Fixture::valid();
    let usage = fixture.receipt_mut(2, 2).body.usage.as_mut().unwrap();
    usage.output_tokens = SafeU64::new(usage.output_tokens.get() / 2).unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::ContentHashes,
        ErrorCode::EnvelopeHashMismatch,
    );
}

#[test]
fn certificate_key_id_not_matching_its_key() {
    let mut fixture = Fixture::valid();
    let cert = &mut fixture.bundle.certificates[0].certificate;
    cert.public_key = PublicKey::of_signing_key(&fixture.keys.attacker);
    assert_detected(
        &fixture.verify(),
        Phase::ContentHashes,
        ErrorCode::CertificateKeyIdMismatch,
    );
}

// ---- phase 3: stream chains ------------------------------------------------------

#[test]
fn flipped_chain_link_with_rehash() {
    let mut fixture = Fixture::valid();
    let envelope = fixture.envelope_mut(0, 3);
    let PrevHash::Hash(prev) = envelope.prev_hash else {
        panic!("seq 3 links to seq 2")
    };
    envelope.prev_hash = PrevHash::Hash(flipped(&prev));
    envelope.hash = envelope.compute_hash().unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::PrevHashMismatch,
    );
}

#[test]
fn reordered_receipts() {
    let mut fixture = Fixture::valid();
    let a = fixture.find(1, 3);
    let b = fixture.find(1, 4);
    let segment = &mut fixture.bundle.segments[a.0];
    assert_eq!(
        a.0, b.0,
        "the fixture keeps seq 3 and 4 of stream 1 in one segment"
    );
    segment.envelopes.swap(a.1, b.1);
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::SeqOutOfOrder,
    );
}

#[test]
fn receipt_dropped_from_middle() {
    let mut fixture = Fixture::valid();
    let (s, i) = fixture.find(0, 3);
    fixture.bundle.segments[s].envelopes.remove(i);
    fixture.refresh_unsigned();
    assert_detected(&fixture.verify(), Phase::StreamChains, ErrorCode::SeqGap);
}

#[test]
fn duplicated_receipt() {
    let mut fixture = Fixture::valid();
    let (s, i) = fixture.find(2, 4);
    let copy = fixture.bundle.segments[s].envelopes[i].clone();
    fixture.bundle.segments[s].envelopes.insert(i + 1, copy);
    fixture.refresh_unsigned();
    let report = fixture.verify();
    assert_detected(&report, Phase::StreamChains, ErrorCode::SeqDuplicate);
    assert!(report.has(ErrorCode::ReceiptIdDuplicate));
}

#[test]
fn record_after_close() {
    // A receipt chained after the stream's close record, by the real gateway key.
    let mut fixture = Fixture::valid();
    let close = fixture.envelope_mut(0, 7).clone();
    let body = common::receipt_body(&fixture.spec, 0, 6);
    let receipt = SignedReceipt::sign(body, &fixture.keys.gateways[0]).unwrap();
    let late = tollgate_evidence::Envelope::seal(
        close.stream_id.clone(),
        SafeU64::new(8).unwrap(),
        PrevHash::Hash(close.hash),
        EnvelopeRecord::Receipt(receipt),
    )
    .unwrap();
    fixture
        .bundle
        .segments
        .last_mut()
        .unwrap()
        .envelopes
        .push(late);
    fixture.refresh_unsigned();
    assert_detected(
        &fixture.verify(),
        Phase::StreamChains,
        ErrorCode::RecordAfterClose,
    );
}

#[test]
fn tail_truncated_after_checkpoint() {
    // A recorder insider deletes the newest segment and its checkpoint and re-signs
    // the manifest. The bundle is a consistent prefix; only the streams left without
    // close records show it.
    let mut fixture = Fixture::valid();
    let removed_checkpoint = fixture.bundle.checkpoints.last().unwrap().clone();
    fixture.bundle.segments.pop();
    fixture.bundle.checkpoints.pop();
    fixture
        .bundle
        .proofs
        .inclusion
        .retain(|p| p.checkpoint_index.get() < 2);
    fixture
        .bundle
        .proofs
        .consistency
        .retain(|p| p.to_checkpoint.get() < 2);
    fixture.refresh_unsigned();
    fixture.resign_manifest();
    let report = fixture.verify();
    assert_eq!(report.verdict, Verdict::Warn, "never a pass");
    let chains = report.phase(Phase::StreamChains).unwrap();
    assert_eq!(chains.verdict, Verdict::Warn);
    assert!(
        chains
            .findings
            .iter()
            .all(|f| f.code == ErrorCode::StreamOpen)
    );
    assert_eq!(report.summary.unwrap().open_streams, 3);

    // With the checkpoint an external sink kept, the cut is a failure.
    let options = VerifyOptions {
        known_checkpoints: vec![removed_checkpoint],
        ..fixture.options()
    };
    let report = verify_bundle(&fixture.bytes(), &options);
    assert_detected(&report, Phase::CheckpointChain, ErrorCode::BundleTruncated);
}

// ---- phase 4: Merkle roots -------------------------------------------------------

#[test]
fn tail_truncated_before_checkpoint() {
    let mut fixture = Fixture::valid();
    let last = fixture.bundle.segments.last_mut().unwrap();
    last.envelopes.truncate(last.envelopes.len() - 2);
    fixture.refresh_unsigned();
    let report = fixture.verify();
    assert_detected(&report, Phase::MerkleRoots, ErrorCode::SealRootMismatch);
    assert!(report.has(ErrorCode::SealCountMismatch));
    assert!(report.has(ErrorCode::CheckpointRootMismatch));
}

#[test]
fn flipped_seal_root_byte() {
    let mut fixture = Fixture::valid();
    let seal = &mut fixture.bundle.segments[1].seal;
    seal.root = flipped(&seal.root);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::SealRootMismatch,
    );
}

#[test]
fn changed_checkpoint_root() {
    let mut fixture = Fixture::valid();
    let checkpoint = &mut fixture.bundle.checkpoints[1].checkpoint;
    checkpoint.root = flipped(&checkpoint.root);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::CheckpointRootMismatch,
    );
}

#[test]
fn injected_envelope() {
    let mut fixture = Fixture::valid();
    let attacker = fixture.keys.attacker.clone();
    let mut writer = StreamChainWriter::new(Identifier::new("stream-injected").unwrap());
    let mut body = common::receipt_body(&fixture.spec, 0, 0);
    body.id = tollgate_evidence::ReceiptId::new("01955c00-ffff-7fff-8fff-000000000001").unwrap();
    let receipt = writer
        .append(SignedReceipt::sign(body, &attacker).unwrap())
        .unwrap();
    let close = writer
        .close(CloseReason::Shutdown, at(T0 + HOUR), &attacker)
        .unwrap();
    let segment = &mut fixture.bundle.segments[1];
    segment.envelopes.insert(2, receipt);
    segment.envelopes.insert(3, close);
    fixture.refresh_unsigned();
    let report = fixture.verify();
    assert_detected(&report, Phase::MerkleRoots, ErrorCode::SealRootMismatch);
    assert!(report.has(ErrorCode::SigningKeyUncertified));
}

#[test]
fn tampered_inclusion_proof() {
    let mut fixture = Fixture::valid();
    let path = &mut fixture.bundle.proofs.inclusion[2].path;
    path[0] = flipped(&path[0]);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::InclusionProofInvalid,
    );
}

#[test]
fn tampered_consistency_proof() {
    let mut fixture = Fixture::valid();
    let path = &mut fixture.bundle.proofs.consistency[0].path;
    let last = path.len() - 1;
    path[last] = flipped(&path[last]);
    assert_detected(
        &fixture.verify(),
        Phase::MerkleRoots,
        ErrorCode::ConsistencyProofInvalid,
    );
}

// ---- phase 5: checkpoint chain ---------------------------------------------------

#[test]
fn forked_checkpoint_chain() {
    // The recorder signs a second, different checkpoint for segment 1 (a fork); the
    // bundle carries it, but checkpoint 2 still extends the original.
    let mut fixture = Fixture::valid();
    let mut sibling = fixture.bundle.checkpoints[1].checkpoint.clone();
    sibling.issued_at = sibling.issued_at.checked_add_millis(1).unwrap();
    fixture.bundle.checkpoints[1] =
        tollgate_evidence::SignedCheckpoint::sign(sibling, &fixture.keys.recorder).unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::CheckpointChain,
        ErrorCode::CheckpointLinkBroken,
    );
}

#[test]
fn flipped_checkpoint_field_byte() {
    let mut fixture = Fixture::valid();
    let checkpoint = &mut fixture.bundle.checkpoints[0].checkpoint;
    checkpoint.issued_at = checkpoint.issued_at.checked_add_millis(1).unwrap();
    let report = fixture.verify();
    assert_detected(
        &report,
        Phase::CheckpointChain,
        ErrorCode::CheckpointLinkBroken,
    );
    assert!(report.has(ErrorCode::CheckpointSignatureInvalid));
}

#[test]
fn rewritten_history_conflicts_with_known_checkpoint() {
    // An insider rewrites a receipt and re-signs everything it can; an auditor who
    // kept the original latest checkpoint sees the fork.
    let mut fixture = Fixture::valid();
    let known = fixture.bundle.checkpoints.last().unwrap().clone();
    fixture.receipt_mut(1, 1).body.cost_micro_usd = SafeU64::new(1).unwrap();
    fixture.reseal(
        &fixture.keys.recorder.clone(),
        &fixture.keys.attacker.clone(),
    );
    let options = VerifyOptions {
        known_checkpoints: vec![known],
        ..fixture.options()
    };
    let report = verify_bundle(&fixture.bytes(), &options);
    assert_detected(
        &report,
        Phase::CheckpointChain,
        ErrorCode::KnownCheckpointConflict,
    );
}

// ---- phase 6: signatures and key validity ----------------------------------------

#[test]
fn flipped_certificate_field_byte() {
    let mut fixture = Fixture::valid();
    let cert = &mut fixture.bundle.certificates[1].certificate;
    let uid = cert.pod_uid.as_str().replacen('6', "7", 1);
    cert.pod_uid = PodUid::new(uid).unwrap();
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::CertificateSignatureInvalid,
    );
}

#[test]
fn signature_forged_with_another_key() {
    let mut fixture = Fixture::valid();
    let attacker = fixture.keys.attacker.clone();
    let receipt = fixture.receipt_mut(0, 2);
    receipt.signature = sign_canonical(&receipt.body, &attacker).unwrap();
    fixture.reseal(&fixture.keys.recorder.clone(), &attacker);
    let report = fixture.verify();
    assert_detected(
        &report,
        Phase::Signatures,
        ErrorCode::ReceiptSignatureInvalid,
    );
    assert!(report.has(ErrorCode::CloseSignatureInvalid));
}

#[test]
fn altered_usage_numbers() {
    // Even the recorder, re-signing every checkpoint, cannot change usage.
    let mut fixture = Fixture::valid();
    let usage = fixture.receipt_mut(2, 2).body.usage.as_mut().unwrap();
    usage.input_tokens = SafeU64::new(usage.input_tokens.get() + 1_000).unwrap();
    fixture.reseal(
        &fixture.keys.recorder.clone(),
        &fixture.keys.attacker.clone(),
    );
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::ReceiptSignatureInvalid,
    );
}

#[test]
fn altered_tls_hash() {
    let mut fixture = Fixture::valid();
    let upstream = fixture.receipt_mut(1, 1).body.upstream.as_mut().unwrap();
    upstream.tls_cert_sha256 = Some(flipped(&upstream.tls_cert_sha256.unwrap()));
    fixture.reseal(
        &fixture.keys.recorder.clone(),
        &fixture.keys.attacker.clone(),
    );
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::ReceiptSignatureInvalid,
    );
}

#[test]
fn certificate_outside_validity_window() {
    let mut fixture = Fixture::valid();
    let short = certificate(&fixture.keys, 0, T0 - HOUR, T0 + 1);
    let index = fixture
        .bundle
        .certificates
        .iter()
        .position(|c| c.certificate.key_id == short.certificate.key_id)
        .unwrap();
    fixture.bundle.certificates[index] = short;
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::OutsideCertificateWindow,
    );
}

#[test]
fn ca_key_outside_validity_window() {
    let mut fixture = Fixture::valid();
    fixture.trust.keys[0].not_before = at(T0);
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::KeyOutsideWindow,
    );
}

#[test]
fn revoked_ca_key() {
    let mut fixture = Fixture::valid();
    fixture.trust.keys[0].state = KeyState::Revoked;
    let report = fixture.verify();
    assert_detected(&report, Phase::Signatures, ErrorCode::KeyRevoked);
    assert!(report.has(ErrorCode::SigningKeyUncertified));
}

#[test]
fn revoked_recorder_key() {
    let mut fixture = Fixture::valid();
    fixture.trust.keys[1].state = KeyState::Revoked;
    assert_detected(&fixture.verify(), Phase::Signatures, ErrorCode::KeyRevoked);
}

#[test]
fn retired_key_without_not_after_verifies_nothing() {
    let mut fixture = Fixture::valid();
    fixture.trust.keys[1].state = KeyState::Retired;
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::RetiredKeyWithoutNotAfter,
    );
}

#[test]
fn ca_key_with_recorder_role() {
    let mut fixture = Fixture::valid();
    fixture.trust.keys[0].role = KeyRole::Recorder;
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::KeyRoleMismatch,
    );
}

#[test]
fn certificate_from_untrusted_ca() {
    let mut fixture = Fixture::valid();
    let keys = fixture.keys.clone();
    let mut cert = fixture.bundle.certificates[0].certificate.clone();
    cert.issuer_key_id = KeyId::of_signing_key(&keys.attacker);
    fixture.bundle.certificates[0] =
        tollgate_evidence::SignedKeyCertificate::issue(cert, &keys.attacker).unwrap();
    assert_detected(&fixture.verify(), Phase::Signatures, ErrorCode::KeyUnknown);
}

#[test]
fn receipts_signed_by_uncertified_key() {
    let mut fixture = Fixture::valid();
    fixture.bundle.certificates.remove(0);
    fixture.refresh_unsigned();
    fixture.resign_manifest();
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::SigningKeyUncertified,
    );
}

#[test]
fn workload_not_bound_by_certificate() {
    // A compromised gateway signs a receipt claiming another namespace.
    let mut fixture = Fixture::valid();
    let gateway = fixture.keys.gateways[0].clone();
    let receipt = fixture.receipt_mut(0, 4);
    receipt.body.workload.namespace = DnsLabel::new("team-1").unwrap();
    *receipt = SignedReceipt::sign(receipt.body.clone(), &gateway).unwrap();
    fixture.reseal(&fixture.keys.recorder.clone(), &gateway);
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::WorkloadMismatch,
    );
}

#[test]
fn checkpoints_signed_by_untrusted_recorder_key() {
    let mut fixture = Fixture::valid();
    fixture.reseal(
        &fixture.keys.attacker.clone(),
        &fixture.keys.attacker.clone(),
    );
    let report = fixture.verify();
    assert_detected(&report, Phase::Signatures, ErrorCode::KeyUnknown);
    assert!(report.findings().all(|f| f.code == ErrorCode::KeyUnknown));
}

#[test]
fn changed_manifest_created_at() {
    let mut fixture = Fixture::valid();
    fixture.bundle.manifest.created_at = at(T0 + 3 * HOUR);
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::ManifestSignatureInvalid,
    );
}

#[test]
fn stream_switching_keys() {
    let mut fixture = Fixture::valid();
    let other = fixture.keys.gateways[1].clone();
    let receipt = fixture.receipt_mut(0, 5);
    *receipt = SignedReceipt::sign(receipt.body.clone(), &other).unwrap();
    fixture.reseal(
        &fixture.keys.recorder.clone(),
        &fixture.keys.gateways[0].clone(),
    );
    let report = fixture.verify();
    assert_detected(&report, Phase::Signatures, ErrorCode::StreamKeyChanged);
    assert!(report.has(ErrorCode::WorkloadMismatch));
}

// ---- phase 7: cross-segment links ------------------------------------------------

#[test]
fn broken_previous_segment_link() {
    let mut fixture = Fixture::valid();
    let genesis = &mut fixture.bundle.segments[2].genesis;
    let PrevHash::Hash(prev) = genesis.prev_seal_hash else {
        panic!("segment 2 links to segment 1")
    };
    genesis.prev_seal_hash = PrevHash::Hash(flipped(&prev));
    let report = fixture.verify();
    assert_detected(&report, Phase::SegmentLinks, ErrorCode::SegmentLinkBroken);
    assert!(report.has(ErrorCode::GenesisHashMismatch));
}

#[test]
fn flipped_seal_time_byte() {
    let mut fixture = Fixture::valid();
    let seal = &mut fixture.bundle.segments[0].seal;
    seal.sealed_at = seal.sealed_at.checked_add_millis(1).unwrap();
    let report = fixture.verify();
    assert_detected(
        &report,
        Phase::SegmentLinks,
        ErrorCode::CheckpointSealMismatch,
    );
    assert!(report.has(ErrorCode::SegmentLinkBroken));
}

#[test]
fn genesis_rewritten() {
    let mut fixture = Fixture::valid();
    let genesis = &mut fixture.bundle.segments[0].genesis;
    genesis.created_at = at(T0 - DAY);
    assert_detected(
        &fixture.verify(),
        Phase::SegmentLinks,
        ErrorCode::GenesisHashMismatch,
    );
}

#[test]
fn close_record_forged_reason() {
    let mut fixture = Fixture::valid();
    let envelope = fixture.envelope_mut(1, 7);
    if let EnvelopeRecord::Close(close) = &mut envelope.record {
        close.close.reason = CloseReason::Fatal;
    }
    envelope.hash = envelope.compute_hash().unwrap();
    fixture.reseal(
        &fixture.keys.recorder.clone(),
        &fixture.keys.attacker.clone(),
    );
    assert_detected(
        &fixture.verify(),
        Phase::Signatures,
        ErrorCode::CloseSignatureInvalid,
    );
}

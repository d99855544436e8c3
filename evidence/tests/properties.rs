//! Property tests: random valid bundles verify; no single mutation passes; JCS is
//! idempotent; chains and Merkle proofs hold for random inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, Spec, build};
use proptest::prelude::*;
use tollgate_evidence::chain::{
    CloseReason, Envelope, EnvelopeRecord, StreamChainChecker, StreamChainWriter,
};
use tollgate_evidence::decision::SignedDecision;
use tollgate_evidence::fields::{Identifier, SafeU64};
use tollgate_evidence::hash::PrevHash;
use tollgate_evidence::jcs::{CanonicalValue, to_canonical_bytes};
use tollgate_evidence::merkle::{
    MerkleAccumulator, MerkleTree, leaf_hash, verify_consistency, verify_inclusion,
};
use tollgate_evidence::receipt::SignedReceipt;
use tollgate_evidence::strict_json;
use tollgate_evidence::{Verdict, verify_bundle};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..=3, 0usize..=4, 1usize..=6, 0u64..1_000).prop_map(
        |(streams, receipts_per_stream, segment_size, seed)| Spec {
            streams,
            receipts_per_stream,
            segment_size,
            seed,
        },
    )
}

/// A structural edit an attacker without keys can make, optionally followed by fixing
/// the unsigned parts (leaf offsets, manifest contents).
#[derive(Debug, Clone)]
enum Mutation {
    DropEnvelope(usize),
    DuplicateEnvelope(usize),
    SwapEnvelopes(usize, usize),
    MoveEnvelopeToNextSegment(usize),
    DropSegment(usize),
    SwapSegments(usize, usize),
    DropCheckpoint(usize),
    DropCertificate(usize),
    DropProof(usize),
    BumpSeq(usize),
    BumpUsage(usize),
    RenameStream(usize),
    BumpCheckpointSize(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<prop::sample::Index>();
    prop_oneof![
        i.clone()
            .prop_map(|i| Mutation::DropEnvelope(i.index(usize::MAX))),
        i.clone()
            .prop_map(|i| Mutation::DuplicateEnvelope(i.index(usize::MAX))),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapEnvelopes(a, b)),
        any::<usize>().prop_map(Mutation::MoveEnvelopeToNextSegment),
        any::<usize>().prop_map(Mutation::DropSegment),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
        any::<usize>().prop_map(Mutation::DropCheckpoint),
        any::<usize>().prop_map(Mutation::DropCertificate),
        any::<usize>().prop_map(Mutation::DropProof),
        any::<usize>().prop_map(Mutation::BumpSeq),
        any::<usize>().prop_map(Mutation::BumpUsage),
        any::<usize>().prop_map(Mutation::RenameStream),
        any::<usize>().prop_map(Mutation::BumpCheckpointSize),
    ]
}

/// Applies `mutation`; returns false when it would not change anything (e.g. swapping
/// an envelope with itself), so the case is discarded.
fn apply(fixture: &mut Fixture, mutation: &Mutation) -> bool {
    let total: usize = fixture
        .bundle
        .segments
        .iter()
        .map(|s| s.envelopes.len())
        .sum();
    let locate = |fixture: &Fixture, n: usize| {
        let mut n = n % total.max(1);
        for (s, segment) in fixture.bundle.segments.iter().enumerate() {
            if n < segment.envelopes.len() {
                return (s, n);
            }
            n -= segment.envelopes.len();
        }
        (0, 0)
    };
    let segments = fixture.bundle.segments.len();
    match *mutation {
        Mutation::DropEnvelope(n) => {
            let (s, i) = locate(fixture, n);
            fixture.bundle.segments[s].envelopes.remove(i);
        }
        Mutation::DuplicateEnvelope(n) => {
            let (s, i) = locate(fixture, n);
            let copy = fixture.bundle.segments[s].envelopes[i].clone();
            fixture.bundle.segments[s].envelopes.insert(i, copy);
        }
        Mutation::SwapEnvelopes(a, b) => {
            let (sa, ia) = locate(fixture, a);
            let (sb, ib) = locate(fixture, b);
            if (sa, ia) == (sb, ib) {
                return false;
            }
            let ea = fixture.bundle.segments[sa].envelopes[ia].clone();
            let eb = std::mem::replace(&mut fixture.bundle.segments[sb].envelopes[ib], ea);
            fixture.bundle.segments[sa].envelopes[ia] = eb;
        }
        Mutation::MoveEnvelopeToNextSegment(n) => {
            let (s, i) = locate(fixture, n);
            if s + 1 >= segments {
                return false;
            }
            let moved = fixture.bundle.segments[s].envelopes.remove(i);
            fixture.bundle.segments[s + 1].envelopes.insert(0, moved);
        }
        Mutation::DropSegment(n) => {
            fixture.bundle.segments.remove(n % segments);
        }
        Mutation::SwapSegments(a, b) => {
            if a % segments == b % segments {
                return false;
            }
            fixture.bundle.segments.swap(a % segments, b % segments);
        }
        Mutation::DropCheckpoint(n) => {
            let len = fixture.bundle.checkpoints.len();
            fixture.bundle.checkpoints.remove(n % len);
        }
        Mutation::DropCertificate(n) => {
            let len = fixture.bundle.certificates.len();
            fixture.bundle.certificates.remove(n % len);
        }
        Mutation::DropProof(n) => {
            let proofs = &mut fixture.bundle.proofs;
            let len = proofs.inclusion.len() + proofs.consistency.len();
            let n = n % len;
            if n < proofs.inclusion.len() {
                proofs.inclusion.remove(n);
            } else {
                proofs.consistency.remove(n - proofs.inclusion.len());
            }
        }
        Mutation::BumpSeq(n) => {
            let (s, i) = locate(fixture, n);
            let envelope = &mut fixture.bundle.segments[s].envelopes[i];
            envelope.seq = envelope.seq.checked_increment().unwrap();
            envelope.hash = envelope.compute_hash().unwrap();
        }
        Mutation::BumpUsage(n) => {
            let (s, i) = locate(fixture, n);
            let envelope = &mut fixture.bundle.segments[s].envelopes[i];
            let Some(usage) = envelope.receipt().and_then(|r| r.body.usage) else {
                return false;
            };
            if let tollgate_evidence::EnvelopeRecord::Receipt(r) = &mut envelope.record {
                r.body.usage = Some(tollgate_evidence::Usage {
                    output_tokens: usage.output_tokens.checked_increment().unwrap(),
                    ..usage
                });
            }
            envelope.hash = envelope.compute_hash().unwrap();
        }
        Mutation::RenameStream(n) => {
            let (s, i) = locate(fixture, n);
            let envelope = &mut fixture.bundle.segments[s].envelopes[i];
            envelope.stream_id = Identifier::new(format!("{}-x", envelope.stream_id)).unwrap();
            envelope.hash = envelope.compute_hash().unwrap();
        }
        Mutation::BumpCheckpointSize(n) => {
            let len = fixture.bundle.checkpoints.len();
            let checkpoint = &mut fixture.bundle.checkpoints[n % len].checkpoint;
            checkpoint.size = checkpoint.size.checked_increment().unwrap();
        }
    }
    true
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_valid_bundle_always_verifies(spec in spec()) {
        let fixture = build(spec);
        let report = fixture.verify();
        prop_assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.findings().collect::<Vec<_>>());
        let without_trust = verify_bundle(&fixture.bytes(), &Default::default());
        prop_assert_eq!(without_trust.verdict, Verdict::Warn);
    }

    #[test]
    fn single_byte_flip_never_passes(spec in spec(), position in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let fixture = build(spec);
        let mut bytes = fixture.bytes();
        let at = position.index(bytes.len());
        bytes[at] ^= mask;
        let report = fixture.verify_bytes(&bytes);
        prop_assert_ne!(report.verdict, Verdict::Pass, "flip at {} ({:?})", at, String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 40).min(bytes.len())]));
    }

    #[test]
    fn structural_mutation_never_passes(spec in spec(), mutation in mutation(), fix_unsigned in any::<bool>()) {
        let mut fixture = build(spec);
        prop_assume!(apply(&mut fixture, &mutation));
        if fix_unsigned {
            fixture.refresh_unsigned();
        }
        let report = fixture.verify();
        prop_assert_ne!(report.verdict, Verdict::Pass, "{:?}", mutation);
    }

    #[test]
    fn jcs_is_idempotent_and_order_independent(value in canonical_value()) {
        let bytes = to_canonical_bytes(&value).unwrap();
        let parsed = strict_json::parse_value(&bytes).unwrap();
        prop_assert_eq!(&to_canonical_bytes(&parsed).unwrap(), &bytes);
        prop_assert_eq!(normalize(parsed), normalize(value.clone()));
        let reversed = to_canonical_bytes(&reverse_objects(value)).unwrap();
        prop_assert_eq!(reversed, bytes.clone());
        // serde_json reads JCS output as the same JSON.
        let via_serde: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(to_canonical_bytes(&via_serde).unwrap(), bytes);
    }

    #[test]
    fn chain_checker_accepts_exactly_the_written_chain(count in 0usize..12, cut in any::<prop::sample::Index>(), op in 0u8..3) {
        let spec = Spec::default();
        let key = common::Keys::new(0, 1).gateways[0].clone();
        let mut writer = StreamChainWriter::new(Identifier::new("s").unwrap());
        let mut envelopes: Vec<Envelope> = (0..count)
            .map(|r| writer.append(SignedReceipt::sign(common::receipt_body(&spec, 0, r), &key).unwrap()).unwrap())
            .collect();
        envelopes.push(writer.close(CloseReason::Shutdown, common::at(common::T0 + common::HOUR), &key).unwrap());
        let check = |envelopes: &[Envelope]| {
            let mut checker = StreamChainChecker::new(Identifier::new("s").unwrap());
            envelopes.iter().try_for_each(|e| checker.check(e)).map(|()| checker.is_closed())
        };
        prop_assert_eq!(check(&envelopes), Ok(true));
        for (i, e) in envelopes.iter().enumerate() {
            prop_assert_eq!(e.seq, SafeU64::new(i as u64 + 1).unwrap());
        }
        let i = cut.index(envelopes.len());
        let mut broken = envelopes.clone();
        match op {
            0 => { broken.remove(i); }
            1 => { let copy = broken[i].clone(); broken.insert(i, copy); }
            _ => {
                prop_assume!(broken.len() > 1);
                let j = (i + 1) % broken.len();
                broken.swap(i, j);
            }
        }
        // A removed tail envelope leaves a valid but open chain; anything else is refused.
        if let Ok(closed) = check(&broken) {
            prop_assert!(!closed && op == 0 && i == envelopes.len() - 1);
        }
    }

    #[test]
    fn encoded_envelopes_are_their_canonical_json_and_chain_as_before(kinds in prop::collection::vec(any::<bool>(), 0..10)) {
        let spec = Spec::default();
        let key = common::Keys::new(0, 1).gateways[0].clone();
        let stream = Identifier::new("s").unwrap();
        let mut fast = StreamChainWriter::new(stream.clone());
        // The reference: records signed and sealed with their bodies encoded
        // again, by `Envelope::seal`.
        let mut prev = PrevHash::Genesis;
        let mut receipts = 0;
        for (n, is_decision) in kinds.into_iter().enumerate() {
            let seq = fast.next_seq();
            let (encoded, record) = if is_decision {
                let d = common::decision(n as u64, common::T0 + n as u64 * 10);
                let record = EnvelopeRecord::Decision(SignedDecision::sign(d.clone(), &key).unwrap());
                (fast.sign_and_append_decision_encoded(d, &key).unwrap(), record)
            } else {
                let body = common::receipt_body(&spec, 0, receipts);
                receipts += 1;
                let record = EnvelopeRecord::Receipt(SignedReceipt::sign(body.clone(), &key).unwrap());
                (fast.sign_and_append_encoded(body, &key).unwrap(), record)
            };
            let expected = Envelope::seal(stream.clone(), seq, prev, record).unwrap();
            prev = PrevHash::Hash(expected.hash);
            prop_assert_eq!(&encoded.envelope, &expected);
            prop_assert_eq!(&encoded.json, &to_canonical_bytes(&expected).unwrap());
            prop_assert_eq!(serde_json::from_slice::<Envelope>(&encoded.json).unwrap(), expected);
        }
    }

    #[test]
    fn merkle_proofs_hold_for_random_sizes(size in 1u64..200, index in any::<prop::sample::Index>(), old in any::<prop::sample::Index>()) {
        let leaves: Vec<_> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let tree = MerkleTree::new(leaves.clone());
        let mut accumulator = MerkleAccumulator::new();
        leaves.iter().for_each(|l| accumulator.push(*l));
        let root = tree.root_at(size).unwrap();
        prop_assert_eq!(accumulator.root(), root);
        let i = index.index(size as usize) as u64;
        let proof = tree.inclusion_proof(i, size).unwrap();
        prop_assert!(verify_inclusion(&leaves[i as usize], i, size, &proof, &root).is_ok());
        if size > 1 {
            let other = (i + 1) % size;
            prop_assert!(verify_inclusion(&leaves[other as usize], i, size, &proof, &root).is_err());
            prop_assert!(verify_inclusion(&leaves[i as usize], other, size, &proof, &root).is_err());
        }
        let m = old.index(size as usize + 1) as u64;
        let consistency = tree.consistency_proof(m, size).unwrap();
        prop_assert!(verify_consistency(m, size, &tree.root_at(m).unwrap(), &root, &consistency).is_ok());
    }
}

fn canonical_value() -> impl Strategy<Value = CanonicalValue> {
    let leaf = prop_oneof![
        Just(CanonicalValue::Null),
        any::<bool>().prop_map(CanonicalValue::Bool),
        (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(CanonicalValue::Integer),
        any::<String>().prop_map(CanonicalValue::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(CanonicalValue::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| CanonicalValue::Object(m.into_iter().collect())),
        ]
    })
}

/// Sorts object members by key (UTF-16 order, as JCS does) so values compare by content.
fn normalize(value: CanonicalValue) -> CanonicalValue {
    match value {
        CanonicalValue::Array(items) => {
            CanonicalValue::Array(items.into_iter().map(normalize).collect())
        }
        CanonicalValue::Object(entries) => {
            let mut entries: Vec<_> = entries
                .into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .collect();
            entries.sort_by(|a, b| tollgate_evidence::jcs::compare_keys(&a.0, &b.0));
            CanonicalValue::Object(entries)
        }
        other => other,
    }
}

fn reverse_objects(value: CanonicalValue) -> CanonicalValue {
    match value {
        CanonicalValue::Array(items) => {
            CanonicalValue::Array(items.into_iter().map(reverse_objects).collect())
        }
        CanonicalValue::Object(entries) => CanonicalValue::Object(
            entries
                .into_iter()
                .rev()
                .map(|(k, v)| (k, reverse_objects(v)))
                .collect(),
        ),
        other => other,
    }
}

proptest! {
    #![proptest_config(config())]

    /// The key routing formula picks a key that exists, the same one every
    /// time, and the body hash alone can move it.
    #[test]
    fn key_routing_stays_in_range_and_is_deterministic(
        model in "[a-z0-9.-]{1,40}",
        node in "[a-z0-9-]{1,30}",
        body in proptest::array::uniform32(any::<u8>()),
        count in 1u32..64,
    ) {
        let index = tollgate_evidence::key_index(&model, &body, &node, count);
        prop_assert!(index < count);
        prop_assert_eq!(index, tollgate_evidence::key_index(&model, &body, &node, count));
        if count == 1 {
            prop_assert_eq!(index, 0);
        }
    }
}

#[test]
fn key_routing_spreads_requests_across_keys() {
    let mut hits = [0u32; 4];
    for n in 0u32..4_000 {
        let body: [u8; 32] = tollgate_evidence::hash::sha256(&n.to_be_bytes())
            .as_bytes()
            .to_owned();
        hits[tollgate_evidence::key_index("gpt-4o", &body, "node-a", 4) as usize] += 1;
    }
    for h in hits {
        assert!((800..1_200).contains(&h), "uneven spread: {hits:?}");
    }
}

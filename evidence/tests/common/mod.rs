//! Builds valid bundles from fixed seeds, and the attacker tools the tamper and
//! property tests use on them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_evidence::bundle::{Bundle, Manifest};
use tollgate_evidence::certificate::{KeyCertificate, PodIdentity, SignedKeyCertificate};
use tollgate_evidence::chain::{CloseReason, Envelope, EnvelopeRecord, StreamChainWriter};
use tollgate_evidence::checkpoint::SignedCheckpoint;
use tollgate_evidence::decision::{DecisionBody, DecisionSchema};
use tollgate_evidence::fields::{
    Code, DnsLabel, DnsSubdomain, HostName, Identifier, ModelName, PodUid, ReceiptId, SafeU64,
    SchemaVersion1,
};
use tollgate_evidence::hash::{PrevHash, Sha256Hex, sha256};
use tollgate_evidence::keys::{KeyId, PublicKey, SigningKey, sign_canonical};
use tollgate_evidence::receipt::{
    Api, Decision, GuardCheck, GuardChecks, GuardCodes, GuardOutcome, HttpMethod, HttpStatus, Lane,
    Latency, QuotaCharge, ReceiptBody, ReceiptSchema, RequestVerdict, Route, SignedReceipt,
    Upstream, Usage, Workload,
};
use tollgate_evidence::segment::{LogWriter, Segment};
use tollgate_evidence::timestamp::Timestamp;
use tollgate_evidence::trust::{KeyRole, KeyState, TrustRoots, TrustedKey};
use tollgate_evidence::verify::{VerifyOptions, verify_bundle};
use tollgate_evidence::{BundleBuilder, ErrorCode, Phase, Verdict, VerificationReport};

pub const ORIGIN: &str = "tollgate.dev/recorder/test-cluster";
pub const T0: u64 = 1_740_787_200_000; // 2025-03-01T00:00:00.000Z
pub const HOUR: u64 = 3_600_000;
pub const DAY: u64 = 24 * HOUR;

pub fn at(millis: u64) -> Timestamp {
    Timestamp::from_unix_millis(millis).unwrap()
}

fn key_from(label: &str) -> SigningKey {
    SigningKey::from_bytes(sha256(label.as_bytes()).as_bytes())
}

/// Every key a fixture uses, derived from fixed labels.
#[derive(Debug, Clone)]
pub struct Keys {
    pub ca: SigningKey,
    pub recorder: SigningKey,
    pub gateways: Vec<SigningKey>,
    pub attacker: SigningKey,
}

impl Keys {
    pub fn new(seed: u64, streams: usize) -> Self {
        Self {
            ca: key_from("receipt-ca"),
            recorder: key_from("recorder"),
            gateways: (0..streams)
                .map(|g| key_from(&format!("gateway-{seed}-{g}")))
                .collect(),
            attacker: key_from("attacker"),
        }
    }
}

/// The shape of a generated bundle.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub streams: usize,
    pub receipts_per_stream: usize,
    pub segment_size: usize,
    pub seed: u64,
}

impl Default for Spec {
    /// 3 streams of 6 receipts plus a close each = 21 envelopes in 3 segments of 7.
    fn default() -> Self {
        Self {
            streams: 3,
            receipts_per_stream: 6,
            segment_size: 7,
            seed: 1,
        }
    }
}

pub struct Fixture {
    pub spec: Spec,
    pub keys: Keys,
    pub bundle: Bundle,
    pub trust: TrustRoots,
}

pub fn pod(g: usize) -> PodIdentity {
    PodIdentity {
        namespace: DnsLabel::new(format!("team-{g}")).unwrap(),
        service_account: DnsSubdomain::new(format!("sa-{g}")).unwrap(),
        pod_name: DnsSubdomain::new(format!("app-{g}-7f9c")).unwrap(),
        pod_uid: PodUid::new(format!("6f1c2d3e-4a5b-4c6d-8e7f-{g:012x}")).unwrap(),
    }
}

pub fn workload(g: usize) -> Workload {
    let pod = pod(g);
    Workload {
        namespace: pod.namespace,
        service_account: pod.service_account,
        pod: pod.pod_name,
    }
}

/// A certificate for gateway `g` valid from `not_before` to `not_after`.
pub fn certificate(keys: &Keys, g: usize, not_before: u64, not_after: u64) -> SignedKeyCertificate {
    let body = KeyCertificate::new(
        PublicKey::of_signing_key(&keys.gateways[g]),
        pod(g),
        at(not_before),
        at(not_after),
        KeyId::of_signing_key(&keys.ca),
    )
    .unwrap();
    SignedKeyCertificate::issue(body, &keys.ca).unwrap()
}

pub fn receipt_time(spec: &Spec, g: usize, round: usize) -> u64 {
    T0 + ((round * spec.streams + g) as u64) * 1_000
}

/// A receipt body that varies with the stream, the round and the seed.
pub fn receipt_body(spec: &Spec, g: usize, round: usize) -> ReceiptBody {
    let started = receipt_time(spec, g, round);
    let n = (round * 31 + g * 7 + spec.seed as usize) as u64;
    let live = !(g + round).is_multiple_of(3);
    let denied = round % 5 == 4;
    ReceiptBody {
        schema: ReceiptSchema,
        schema_version: Default::default(),
        id: ReceiptId::new(format!(
            "01955c00-{:04x}-7{:03x}-8{:03x}-{:012x}",
            g,
            round % 4096,
            g % 4096,
            spec.seed
        ))
        .unwrap(),
        request_id: Identifier::new(format!("req-{g}-{round}")).unwrap(),
        started_at: at(started),
        completed_at: at(started + 500 + n % 300),
        latency: Latency {
            total_ms: SafeU64::new(500 + n % 300).unwrap(),
            first_byte_ms: Some(SafeU64::new(120).unwrap()),
        },
        workload: workload(g),
        caller_hash: round
            .is_multiple_of(2)
            .then(|| sha256(format!("caller-{g}").as_bytes())),
        correlation_id: round
            .is_multiple_of(3)
            .then(|| Identifier::new(format!("corr-{g}-{round}")).unwrap()),
        decision_id: None,
        api: if g.is_multiple_of(2) {
            Api::Openai
        } else {
            Api::Anthropic
        },
        provider: Some(
            DnsSubdomain::new(if g.is_multiple_of(2) {
                "openai"
            } else {
                "anthropic"
            })
            .unwrap(),
        ),
        route: if g.is_multiple_of(2) {
            Route::ChatCompletions
        } else {
            Route::Messages
        },
        method: HttpMethod::Post,
        model_requested: Some(ModelName::new("gpt-4o").unwrap()),
        model_served: (!denied).then(|| ModelName::new("gpt-4o-2024-08-06").unwrap()),
        verdict: RequestVerdict {
            // Every third receipt comes from a gateway that predates checks.
            checks: (!n.is_multiple_of(3)).then(|| {
                GuardChecks::new(vec![GuardCheck {
                    guard: Code::new("quota").unwrap(),
                    outcome: if denied {
                        GuardOutcome::Denied
                    } else {
                        GuardOutcome::Passed
                    },
                    detail: denied.then(|| Code::new("tokens").unwrap()),
                }])
                .unwrap()
            }),
            decision: if denied {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reason: Code::new(if denied { "quota_exceeded" } else { "allowed" }).unwrap(),
            guards: GuardCodes::new(if denied {
                vec![Code::new("quota.tokens").unwrap()]
            } else {
                vec![]
            })
            .unwrap(),
        },
        response_status: HttpStatus::new(if denied { 429 } else { 200 }).unwrap(),
        request_sha256: sha256(format!("request-{g}-{round}").as_bytes()),
        response_sha256: sha256(format!("response-{g}-{round}").as_bytes()),
        response_length: SafeU64::new(1_000 + n).unwrap(),
        usage: (!denied).then(|| Usage {
            cache_write_1h_tokens: (n % 4 == 1).then(|| SafeU64::new(n % 7).unwrap()),
            cache_write_5m_tokens: (n % 3 == 1).then(|| SafeU64::new(n % 11).unwrap()),
            input_tokens: SafeU64::new(100 + n).unwrap(),
            output_tokens: SafeU64::new(50 + n).unwrap(),
            cached_tokens: SafeU64::new(n % 10).unwrap(),
            reasoning_tokens: n.is_multiple_of(2).then(|| SafeU64::new(n % 50).unwrap()),
        }),
        pricing: (!denied).then(|| tollgate_evidence::AppliedPricing {
            long_context: n.is_multiple_of(5),
            service_tier: (n % 2 == 1).then(|| Code::new("flex").unwrap()),
            table_sha256: sha256(b"price-table"),
        }),
        cost_micro_usd: SafeU64::new(if denied { 0 } else { 1_500 + n }).unwrap(),
        upstream: (!denied).then(|| Upstream {
            host: HostName::new("api.openai.com").unwrap(),
            tls_cert_sha256: live.then(|| sha256(b"leaf-certificate")),
            provider_request_id: Some(Identifier::new(format!("chatcmpl-{g}-{round}")).unwrap()),
            key_index: (n % 2) as u32,
            key_count: 2,
            key_route: None,
        }),
        policy_hash: sha256(b"policy-v1"),
        quota: Some(QuotaCharge {
            tokens: SafeU64::new(if denied { 0 } else { 150 + 2 * n }).unwrap(),
            requests: SafeU64::new(1).unwrap(),
            cost_micro_usd: SafeU64::new(if denied { 0 } else { 1_500 + n }).unwrap(),
        }),
        lane: if live { Lane::Live } else { Lane::DryRun },
    }
}

pub fn trust_roots(keys: &Keys) -> TrustRoots {
    let entry = |key: &SigningKey, role| {
        let public = PublicKey::of_signing_key(key);
        TrustedKey {
            key_id: public.key_id(),
            public_key: public,
            role,
            not_before: at(T0 - 30 * DAY),
            not_after: None,
            state: KeyState::Active,
        }
    };
    TrustRoots {
        keys: vec![
            entry(&keys.ca, KeyRole::ReceiptCa),
            entry(&keys.recorder, KeyRole::Recorder),
        ],
    }
}

/// Runs the producer, spool writer and recorder paths and bundles the result.
pub fn build(spec: Spec) -> Fixture {
    let keys = Keys::new(spec.seed, spec.streams);
    let mut writers: Vec<StreamChainWriter> = (0..spec.streams)
        .map(|g| {
            StreamChainWriter::new(Identifier::new(format!("stream-{}-{g}", spec.seed)).unwrap())
        })
        .collect();
    let mut log_order = Vec::new();
    for round in 0..spec.receipts_per_stream {
        for (g, writer) in writers.iter_mut().enumerate() {
            let receipt =
                SignedReceipt::sign(receipt_body(&spec, g, round), &keys.gateways[g]).unwrap();
            log_order.push(writer.append(receipt).unwrap());
        }
    }
    for (g, writer) in writers.iter_mut().enumerate() {
        log_order.push(
            writer
                .close(CloseReason::Shutdown, at(T0 + HOUR), &keys.gateways[g])
                .unwrap(),
        );
    }
    let (segments, checkpoints) = record(&log_order, spec.segment_size, &keys.recorder);
    let mut builder = BundleBuilder::new(Identifier::new(ORIGIN).unwrap(), at(T0 + 2 * HOUR));
    for g in 0..spec.streams {
        builder.add_certificate(certificate(&keys, g, T0 - HOUR, T0 + DAY));
    }
    for (segment, checkpoint) in segments.into_iter().zip(checkpoints) {
        builder.add_segment(segment, checkpoint).unwrap();
    }
    let bundle = builder.build(&keys.recorder).unwrap();
    let trust = trust_roots(&keys);
    Fixture {
        spec,
        keys,
        bundle,
        trust,
    }
}

/// Segments envelopes `segment_size` at a time, like the recorder does.
pub fn record(
    envelopes: &[Envelope],
    segment_size: usize,
    recorder: &SigningKey,
) -> (Vec<Segment>, Vec<SignedCheckpoint>) {
    let mut log = LogWriter::new(Identifier::new(ORIGIN).unwrap());
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    for (i, chunk) in envelopes.chunks(segment_size.max(1)).enumerate() {
        let opened = T0 + 90 * 60_000 + i as u64 * 60_000;
        let genesis = log.open_segment(at(opened)).unwrap();
        for envelope in chunk {
            log.append(envelope).unwrap();
        }
        let outcome = log.seal(at(opened + 59_000), recorder).unwrap();
        segments.push(Segment {
            genesis,
            envelopes: chunk.to_vec(),
            seal: outcome.seal,
        });
        checkpoints.push(outcome.checkpoint);
    }
    (segments, checkpoints)
}

impl Fixture {
    pub fn valid() -> Self {
        build(Spec::default())
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bundle.to_json().unwrap()
    }

    pub fn options(&self) -> VerifyOptions {
        VerifyOptions {
            trust: Some(self.trust.clone()),
            ..VerifyOptions::default()
        }
    }

    pub fn verify(&self) -> VerificationReport {
        verify_bundle(&self.bytes(), &self.options())
    }

    pub fn verify_bytes(&self, bytes: &[u8]) -> VerificationReport {
        verify_bundle(bytes, &self.options())
    }

    pub fn envelopes_mut(&mut self) -> impl Iterator<Item = &mut Envelope> {
        self.bundle
            .segments
            .iter_mut()
            .flat_map(|s| s.envelopes.iter_mut())
    }

    /// The position (segment, index) of `stream`'s envelope with `seq`.
    pub fn find(&self, stream: usize, seq: u64) -> (usize, usize) {
        let id = format!("stream-{}-{stream}", self.spec.seed);
        for (s, segment) in self.bundle.segments.iter().enumerate() {
            for (i, e) in segment.envelopes.iter().enumerate() {
                if e.stream_id.as_str() == id && e.seq.get() == seq {
                    return (s, i);
                }
            }
        }
        panic!("no envelope {id}/{seq}");
    }

    pub fn envelope_mut(&mut self, stream: usize, seq: u64) -> &mut Envelope {
        let (s, i) = self.find(stream, seq);
        &mut self.bundle.segments[s].envelopes[i]
    }

    pub fn receipt_mut(&mut self, stream: usize, seq: u64) -> &mut SignedReceipt {
        match &mut self.envelope_mut(stream, seq).record {
            EnvelopeRecord::Receipt(r) => r,
            _ => panic!("not a receipt"),
        }
    }

    /// What an outsider can fix without keys: leaf offsets and the (unsigned) manifest
    /// contents. The manifest signature then no longer matches.
    pub fn refresh_unsigned(&mut self) {
        let mut first = 0;
        for segment in &mut self.bundle.segments {
            segment.genesis.first_leaf_index = SafeU64::new(first).unwrap();
            first += segment.envelopes.len() as u64;
        }
        let b = &self.bundle;
        self.bundle.manifest = Manifest::summarize(
            &b.manifest.origin,
            b.manifest.created_at,
            b.base.as_ref(),
            &b.certificates,
            &b.segments,
            &b.checkpoints,
            &b.proofs,
        )
        .unwrap();
    }

    /// What an insider holding the recorder key (`recorder`) can do after editing
    /// envelopes: recompute every hash, chain link and Merkle root, re-sign close
    /// records it had to change with `forger` (it has no gateway key), re-seal,
    /// re-checkpoint and re-sign the manifest.
    pub fn reseal(&mut self, recorder: &SigningKey, forger: &SigningKey) {
        let mut heads: std::collections::BTreeMap<Identifier, (PrevHash, u64)> = Default::default();
        for envelope in self.envelopes_mut() {
            let (prev, receipts) = heads
                .get(&envelope.stream_id)
                .copied()
                .unwrap_or((PrevHash::Genesis, 0));
            envelope.prev_hash = prev;
            if let EnvelopeRecord::Close(close) = &mut envelope.record {
                let before = close.close.clone();
                close.close.last_hash = prev;
                close.close.last_seq = SafeU64::new(receipts).unwrap();
                close.close.receipt_count = SafeU64::new(receipts).unwrap();
                if close.close != before {
                    close.signature = sign_canonical(&close.close, forger).unwrap();
                }
            }
            envelope.hash = envelope.compute_hash().unwrap();
            let count = receipts + u64::from(envelope.receipt().is_some());
            heads.insert(
                envelope.stream_id.clone(),
                (PrevHash::Hash(envelope.hash), count),
            );
        }
        let mut log = LogWriter::new(Identifier::new(ORIGIN).unwrap());
        let mut builder = BundleBuilder::new(
            self.bundle.manifest.origin.clone(),
            self.bundle.manifest.created_at,
        );
        for certificate in &self.bundle.certificates {
            builder.add_certificate(certificate.clone());
        }
        let segments = std::mem::take(&mut self.bundle.segments);
        for old in segments {
            let genesis = log.open_segment(old.genesis.created_at).unwrap();
            for envelope in &old.envelopes {
                log.append(envelope).unwrap();
            }
            let outcome = log.seal(old.seal.sealed_at, recorder).unwrap();
            let segment = Segment {
                genesis,
                envelopes: old.envelopes,
                seal: outcome.seal,
            };
            builder.add_segment(segment, outcome.checkpoint).unwrap();
        }
        self.bundle = builder.build(recorder).unwrap();
    }

    /// Re-signs the manifest with the real recorder key (an insider).
    pub fn resign_manifest(&mut self) {
        self.bundle.manifest_signature = self.bundle.manifest.sign(&self.keys.recorder).unwrap();
    }
}

/// A different hash: the first byte flipped.
pub fn flipped(hash: &Sha256Hex) -> Sha256Hex {
    let mut bytes = *hash.as_bytes();
    bytes[0] ^= 0x01;
    Sha256Hex::from_bytes(bytes)
}

/// Asserts the tamper is caught in `phase` with `code`, and not earlier.
#[track_caller]
pub fn assert_detected(report: &VerificationReport, phase: Phase, code: ErrorCode) {
    let summary: Vec<String> = report
        .phases
        .iter()
        .map(|p| {
            format!(
                "{:?}={:?} {:?}",
                p.phase,
                p.verdict,
                p.findings
                    .iter()
                    .map(|f| f.code.as_str())
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        code.phase(),
        phase,
        "code {code} belongs to {:?}",
        code.phase()
    );
    assert_eq!(report.verdict, Verdict::Fail, "{summary:#?}");
    for p in &report.phases {
        if p.phase < phase {
            assert_ne!(
                p.verdict,
                Verdict::Fail,
                "failed earlier than {phase:?}: {summary:#?}"
            );
        }
    }
    let target = report.phase(phase).unwrap();
    assert_eq!(target.verdict, Verdict::Fail, "{summary:#?}");
    assert!(
        target.findings.iter().any(|f| f.code == code),
        "no {code} in {phase:?}: {summary:#?}"
    );
}

/// What a recorder hands the builder for the range of `full` from segment
/// `from`: the checkpoint before it, the frontier there, and each continued
/// stream's last envelope before it, proven in its segment.
pub fn range_base(full: &Bundle, from: usize) -> tollgate_evidence::RangeBase {
    let mut base = tollgate_evidence::MerkleAccumulator::new();
    for envelope in full.segments[..from].iter().flat_map(|s| &s.envelopes) {
        base.push(tollgate_evidence::segment::envelope_leaf(&envelope.hash));
    }
    let in_range: std::collections::BTreeSet<&Identifier> = full.segments[from..]
        .iter()
        .flat_map(|s| &s.envelopes)
        .map(|e| &e.stream_id)
        .collect();
    // The last envelope before the range of each stream that goes on in it.
    let mut last: std::collections::BTreeMap<&Identifier, (usize, usize)> = Default::default();
    for (j, segment) in full.segments[..from].iter().enumerate() {
        for (i, envelope) in segment.envelopes.iter().enumerate() {
            if in_range.contains(&envelope.stream_id) {
                last.insert(&envelope.stream_id, (j, i));
            }
        }
    }
    let oldest = last.values().map(|(j, _)| *j).min().unwrap_or(from);
    let continuations = last
        .values()
        .map(|&(j, i)| {
            let segment = &full.segments[j];
            let hashes: Vec<Sha256Hex> = segment.envelopes.iter().map(|e| e.hash).collect();
            tollgate_evidence::Continuation::prove(
                segment.envelopes[i].clone(),
                j as u64,
                i as u64,
                &hashes,
            )
            .unwrap()
        })
        .collect();
    tollgate_evidence::RangeBase {
        checkpoint: full.checkpoints[from - 1].clone(),
        frontier: base.frontier().to_vec(),
        headers: full.segments[oldest..from]
            .iter()
            .map(|s| tollgate_evidence::SegmentHeader {
                genesis: s.genesis.clone(),
                seal: s.seal.clone(),
            })
            .collect(),
        continuations,
    }
}

/// The range bundle of `full`'s segments from `from` on, based on the checkpoint
/// of segment `from - 1`, as a recorder exports it.
pub fn range_of(full: &Bundle, from: usize, recorder: &SigningKey) -> Bundle {
    let mut builder = BundleBuilder::after(
        full.manifest.origin.clone(),
        full.manifest.created_at,
        range_base(full, from),
    )
    .unwrap();
    for certificate in &full.certificates {
        builder.add_certificate(certificate.clone());
    }
    for (segment, checkpoint) in full.segments[from..].iter().zip(&full.checkpoints[from..]) {
        builder
            .add_segment(segment.clone(), checkpoint.clone())
            .unwrap();
    }
    builder.build(recorder).unwrap()
}

/// A forward decision for request `n`, started at `started` (ms) and decided 5 ms later.
pub fn decision(n: u64, started: u64) -> DecisionBody {
    DecisionBody {
        attempt: 0,
        decided_at: at(started + 5),
        host: HostName::new("api.openai.com").unwrap(),
        id: ReceiptId::new(format!("01955c00-0000-7000-8000-{n:012x}")).unwrap(),
        model: Some(ModelName::new("gpt-4o").unwrap()),
        policy_hash: sha256(b"policy"),
        provider: DnsSubdomain::new("openai").unwrap(),
        request_id: Identifier::new(format!("req-{n}")).unwrap(),
        request_sha256: sha256(format!("request-{n}").as_bytes()),
        schema: DecisionSchema,
        schema_version: SchemaVersion1,
        started_at: at(started),
        workload: workload(0),
    }
}

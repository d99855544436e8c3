//! A receipt batch as the recorder receives it (`POST /v1/receipts`): strict
//! parse, signature and certificate checks, then the chain plan against a new
//! stream, the same pipeline as `Recorder::ingest` without the store. Never a
//! panic; every envelope ends up accepted, a duplicate or rejected, and nothing
//! is accepted that failed verification.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tollgate_evidence::TrustRoots;
use tollgate_recorder::ingest::{StoredStream, parse_batch, plan_chain, verify_batch};
use tollgate_test_support::fixtures::{key_from, trust_for_ca};

/// The fixtures' CA, so batches made by `tollgate_test_support::fixtures`
/// (the seeds) verify and the chain checks are reached.
static TRUST: LazyLock<TrustRoots> = LazyLock::new(|| trust_for_ca(&key_from("receipt-ca")));

/// The recorder's default `max_batch_receipts`.
const MAX_BATCH: usize = 1_000;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = parse_batch(data, MAX_BATCH) else {
        return;
    };
    let verified = verify_batch(batch, &TRUST, 1);
    let total = verified.envelopes.len();
    assert!(total <= MAX_BATCH, "a batch over the limit was parsed");
    let good = verified.envelopes.iter().filter(|(_, e)| e.is_ok()).count();
    let Some(stream_id) = verified.stream_id.clone() else {
        return;
    };
    let Ok(plan) = plan_chain(&stream_id, verified.envelopes, &StoredStream::default()) else {
        return;
    };
    assert!(
        plan.accepted.len() <= good,
        "an envelope that failed verification was accepted"
    );
    assert_eq!(plan.accepted.len(), plan.accepted_indices.len());
    assert!(
        plan.accepted.len() + plan.rejected.len() + plan.duplicates as usize <= total,
        "more outcomes than envelopes"
    );
});

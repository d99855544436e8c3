//! Anything the strict reader accepts has a canonical form, and that form reads
//! back to itself (JCS is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_evidence::{jcs, strict_json};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = strict_json::parse_value(data) else {
        return;
    };
    let canonical = jcs::to_canonical_bytes(&value).expect("strictly parsed values encode");
    let again = strict_json::parse_value(&canonical).expect("canonical output parses");
    assert_eq!(
        jcs::to_canonical_bytes(&again).expect("re-encodes"),
        canonical
    );
});

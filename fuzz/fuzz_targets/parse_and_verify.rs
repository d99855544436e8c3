//! Feeds arbitrary bytes to the bundle verifier. It must never panic, must give the
//! same report for the same input, and must never pass without a trust root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_evidence::{Verdict, VerifyLimits, VerifyOptions, verify_bundle};

fuzz_target!(|data: &[u8]| {
    let options = VerifyOptions {
        limits: VerifyLimits {
            max_bundle_bytes: 1 << 20,
            ..VerifyLimits::default()
        },
        ..VerifyOptions::default()
    };
    let report = verify_bundle(data, &options);
    assert_ne!(report.verdict, Verdict::Pass, "passed without a trust root");
    assert_eq!(
        report,
        verify_bundle(data, &options),
        "verification is not deterministic"
    );
});

//! The control document a gateway fetches from the operator, through the
//! gateway's full checks (version, policy hash, caller key, a key for every
//! provider that needs one). Never a panic; whatever is accepted renders and
//! parses back to itself.
//!
//! First byte even: the bytes are the document. Odd: the bytes are a gateway
//! config whose policy hash is then set right, so the fuzzer gets past the
//! hash check into the config's own rules.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::control::parse_document;
use tollgate_wire::config::GatewayConfig;
use tollgate_wire::control::{ConfigDocument, PodInfo};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let owned;
    let document = if mode % 2 == 0 {
        body
    } else {
        let Ok(mut config) = serde_json::from_slice::<GatewayConfig>(body) else {
            return;
        };
        config.policy_hash = config.content_hash();
        let document = ConfigDocument {
            pod: PodInfo {
                namespace: "demo".into(),
                name: "app-0".into(),
                uid: "u-1".into(),
                service_account: "default".into(),
                labels: BTreeMap::new(),
            },
            config,
            credentials: BTreeMap::new(),
            caller_key: None,
        };
        let Ok((bytes, _)) = document.render() else {
            return;
        };
        owned = bytes;
        &owned[..]
    };
    let plain = ConfigDocument::parse(document);
    let Ok((parsed, _credentials)) = parse_document(document) else {
        return;
    };
    assert!(
        plain.is_ok(),
        "the gateway accepted what the wire type refuses"
    );
    let (bytes, _) = parsed.render().expect("an accepted document renders");
    let (again, _) = parse_document(&bytes).expect("a rendered document parses");
    assert!(again == parsed, "the document did not round-trip");
});

//! The YAML a platform team applies, as `kubectl tollgate compile` and the
//! operator read it: parsed into custom resources, compiled into a namespace's
//! gateway config, rendered as the control document and parsed back by the
//! gateway's own checks. Never a panic; the compiled policy hash is the
//! config's content hash; the document round-trips.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tollgate_crds::compile::{ClusterObjects, compile_namespace_config};
use tollgate_crds::manifest::{Manifest, parse_manifests};
use tollgate_wire::control::{ConfigDocument, PodInfo};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifests) = parse_manifests("fuzz", text) else {
        return;
    };
    let (mut providers, mut policies, mut quotas, mut cluster_quotas, mut anchors) =
        (vec![], vec![], vec![], vec![], vec![]);
    for manifest in manifests {
        match manifest {
            Manifest::LLMProvider(p) => providers.push(*p),
            Manifest::EgressPolicy(mut p) => {
                p.metadata.namespace.get_or_insert_with(|| "demo".into());
                policies.push(*p);
            }
            Manifest::EgressQuota(mut q) => {
                q.metadata.namespace.get_or_insert_with(|| "demo".into());
                quotas.push(*q);
            }
            Manifest::ClusterEgressQuota(q) => cluster_quotas.push(*q),
            Manifest::TrustAnchor(a) => anchors.push(*a),
            _ => {}
        }
    }
    let labels = BTreeMap::from([("tollgate.dev/inject".to_string(), "enabled".to_string())]);
    let objects = ClusterObjects {
        providers: &providers,
        policies: &policies,
        quotas: &quotas,
        cluster_quotas: &cluster_quotas,
        trust_anchors: &anchors,
    };
    let compiled = compile_namespace_config("demo", &labels, objects);
    assert_eq!(
        compiled.config.policy_hash,
        compiled.config.content_hash(),
        "the policy hash is not the config's content hash"
    );
    let again = compile_namespace_config("demo", &labels, objects);
    assert_eq!(
        compiled.config, again.config,
        "compiling is not deterministic"
    );
    let document = ConfigDocument {
        pod: PodInfo {
            namespace: "demo".into(),
            name: "app-0".into(),
            uid: "u-1".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
        },
        config: compiled.config,
        credentials: BTreeMap::new(),
        caller_key: None,
    };
    let (bytes, _etag) = document.render().expect("a compiled config renders");
    let parsed = ConfigDocument::parse(&bytes).expect("a rendered document parses");
    assert_eq!(
        parsed.config, document.config,
        "the document did not round-trip"
    );
});

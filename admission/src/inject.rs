//! Injection: the gateway as a native sidecar, the init-network step, the
//! gateway's volumes, base-URL env and the `NET_RAW` drop in app containers.
//!
//! Injection is a pure function of the pod's labels, the namespace's policies
//! and the installation settings. It first removes whatever it would add
//! (containers and volumes with Tollgate's reserved names) and then adds it
//! again, so injecting an injected pod changes nothing, and an impostor
//! container that borrowed a reserved name is replaced, not kept.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::view::NamespaceView;
use crate::{
    ANNOTATION_DEFAULT_CONTAINER, ANNOTATION_INJECT, ANNOTATION_INJECTED,
    ANNOTATION_INJECTION_HASH, ANNOTATION_WORKER_THREADS, AUDIENCE_GATEWAY, AUDIENCE_RECORDER,
    BASE_URL_ENV, CONTROL_CA_CONFIGMAP, DISABLED, GATEWAY_ADMIN_PORT, GATEWAY_CONTAINER,
    GATEWAY_PORT, GATEWAY_UID, GATEWAY_VOLUMES, INIT_NETWORK_CONTAINER, INJECTION_VERSION,
    InjectionSettings, MAX_WORKER_THREADS, VOLUME_CONTROL_CA, VOLUME_SPOOL, VOLUME_TOKENS,
};

/// Where the gateway reads the control endpoint's CA.
pub const CONTROL_CA_DIR: &str = "/etc/tollgate/control-ca";
/// Where the projected tokens are mounted.
pub const TOKENS_DIR: &str = "/var/run/secrets/tollgate.dev/tokens";
/// The audience of the token the gateway trades with AWS STS. A Tollgate
/// audience, not `sts.amazonaws.com`: no app container may project a token
/// for a `tollgate.dev/*` audience (rule `gateway-volume-mount`), so only the
/// gateway can assume a role whose trust policy requires this one. It is
/// registered as a client ID of the cluster's IAM OIDC provider.
pub const AUDIENCE_AWS_STS: &str = "tollgate.dev/aws";
/// The audience of the token the gateway exchanges with Google's Security
/// Token Service, for the same reason a Tollgate audience: the workload
/// identity pool provider lists it among its allowed audiences.
pub const AUDIENCE_GCP_STS: &str = "tollgate.dev/gcp";
/// The audience of the token the gateway presents to Microsoft Entra ID as
/// a federated client assertion (named in the application's federated
/// identity credential), for the same reason a Tollgate audience.
pub const AUDIENCE_AZURE_AD: &str = "tollgate.dev/azure";
/// Where the receipt spool is mounted.
pub const SPOOL_DIR: &str = "/var/run/tollgate/spool";

/// Why injection could not produce a pod.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the injected spec could not be built: {0}")]
    Build(String),
    #[error("the pod could not be encoded for patching: {0}")]
    Encode(String),
    #[error(
        "annotation {ANNOTATION_WORKER_THREADS}: {0:?} is not a whole number from 1 to {MAX_WORKER_THREADS}"
    )]
    WorkerThreads(String),
}

/// What injection decided for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Governed: inject.
    Inject,
    /// The namespace is not labelled `tollgate.dev/inject=enabled`.
    NotGoverned,
    /// The operator's own namespace: never injected.
    OperatorNamespace,
    /// `tollgate.dev/inject: disabled`, and every selecting policy allows it.
    OptedOut,
    /// `tollgate.dev/inject: disabled` without a policy that allows it. The
    /// pod is left as it is; validation rejects it (`opt-out-not-permitted`)
    /// rather than injection silently overruling what the author asked for.
    OptOutNotPermitted,
}

/// Decides whether a pod (or pod template) with this metadata gets injected.
pub fn decide(meta: &ObjectMeta, ns: &NamespaceView, settings: &InjectionSettings) -> Decision {
    if ns.name == settings.operator_namespace {
        return Decision::OperatorNamespace;
    }
    if !ns.governed {
        return Decision::NotGoverned;
    }
    if !opt_out_requested(meta) {
        return Decision::Inject;
    }
    let labels = meta.labels.clone().unwrap_or_default();
    if ns.opt_out_permitted(&labels) {
        Decision::OptedOut
    } else {
        Decision::OptOutNotPermitted
    }
}

/// Whether the object carries the opt-out annotation.
pub fn opt_out_requested(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_INJECT))
        .is_some_and(|v| v == DISABLED)
}

/// Everything injection adds to a pod, for one set of pod labels.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectedParts {
    pub init_network: Container,
    pub gateway: Container,
    pub volumes: Vec<Volume>,
    /// sha256 (hex) of the canonical JSON of the parts above and the env.
    pub hash: String,
}

/// The result of injecting one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub decision: Decision,
    /// The pod after injection (unchanged unless `decision` is `Inject`).
    pub pod: Pod,
    /// RFC 6902 patch from the pod to the injected pod; empty if unchanged.
    pub patch: json_patch::Patch,
}

/// Injects `pod` if [`decide`] says so.
pub fn inject(
    pod: &Pod,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<Injection, InjectError> {
    let decision = decide(&pod.metadata, ns, settings);
    let mut injected = pod.clone();
    if decision == Decision::Inject {
        let spec = injected.spec.get_or_insert_with(PodSpec::default);
        inject_spec(&mut injected.metadata, spec, ns, settings)?;
    }
    let before = serde_json::to_value(pod).map_err(|e| InjectError::Encode(e.to_string()))?;
    let after = serde_json::to_value(&injected).map_err(|e| InjectError::Encode(e.to_string()))?;
    Ok(Injection {
        decision,
        pod: injected,
        patch: json_patch::diff(&before, &after),
    })
}

/// Injects a pod spec and its metadata in place (pods and pod templates).
pub fn inject_spec(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<(), InjectError> {
    let parts = injected_parts(meta, ns, settings)?;

    let init = spec.init_containers.get_or_insert_with(Vec::new);
    init.retain(|c| c.name != INIT_NETWORK_CONTAINER && c.name != GATEWAY_CONTAINER);
    for c in init.iter_mut() {
        harden_app_container(c);
    }
    init.insert(0, parts.gateway.clone());
    init.insert(0, parts.init_network.clone());

    for c in spec.containers.iter_mut() {
        harden_app_container(c);
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| !GATEWAY_VOLUMES.contains(&v.name.as_str()));
    volumes.extend(parts.volumes.iter().cloned());

    let first_app = spec.containers.first().map(|c| c.name.clone());
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(ANNOTATION_INJECTED.into(), INJECTION_VERSION.into());
    annotations.insert(ANNOTATION_INJECTION_HASH.into(), parts.hash);
    if let Some(first_app) = first_app {
        annotations
            .entry(ANNOTATION_DEFAULT_CONTAINER.into())
            .or_insert(first_app);
    }
    Ok(())
}

/// Base-URL env appended when missing (a different value the author set is
/// left alone, for validation to reject with `base-url-override`), and
/// `NET_RAW` added to the dropped capabilities.
fn harden_app_container(c: &mut Container) {
    let env = c.env.get_or_insert_with(Vec::new);
    for (name, value) in BASE_URL_ENV {
        if !env.iter().any(|e| e.name == name) {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value.into()),
                value_from: None,
            });
        }
    }
    let caps = c
        .security_context
        .get_or_insert_with(Default::default)
        .capabilities
        .get_or_insert_with(Default::default);
    let drop = caps.drop.get_or_insert_with(Vec::new);
    if !drop
        .iter()
        .any(|d| matches!(normalize_capability(d).as_str(), "NET_RAW" | "ALL"))
    {
        drop.push("NET_RAW".into());
    }
}

/// `cap_net_raw` and `NET_RAW` name the same capability.
pub fn normalize_capability(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// The gateway request threads a pod asks for with
/// [`ANNOTATION_WORKER_THREADS`]; `None` keeps the gateway's default.
pub fn worker_threads(meta: &ObjectMeta) -> Result<Option<u16>, InjectError> {
    let Some(value) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_WORKER_THREADS))
    else {
        return Ok(None);
    };
    match value.parse::<u16>() {
        Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(Some(n)),
        _ => Err(InjectError::WorkerThreads(value.clone())),
    }
}

/// The containers and volumes injection adds for a pod with this metadata
/// (its labels pick the egress allowed, its annotations the gateway's
/// threads). Every field the API server would default is set explicitly, so
/// the stored object equals this and validation can compare exactly.
pub fn injected_parts(
    meta: &ObjectMeta,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<InjectedParts, InjectError> {
    let allow = ns.allowed_egress(meta.labels.as_ref().unwrap_or(&BTreeMap::new()));
    let threads = worker_threads(meta)?;
    // The parts depend only on the settings, the allow list and the threads,
    // which are the same for almost every review: a small per-thread memo
    // saves rebuilding and hashing them each time (a pure cache, never stale).
    PARTS_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, _, parts)) = cache
            .iter()
            .find(|(s, key, _)| s == settings && key.0 == allow && key.1 == threads)
        {
            return Ok(parts.clone());
        }
        let parts = build_parts(&allow, threads, settings)?;
        if cache.len() >= PARTS_CACHE_SIZE {
            cache.remove(0);
        }
        cache.push((settings.clone(), (allow, threads), parts.clone()));
        Ok(parts)
    })
}

const PARTS_CACHE_SIZE: usize = 16;

type PartsCache = Vec<(InjectionSettings, (Vec<String>, Option<u16>), InjectedParts)>;

thread_local! {
    static PARTS_CACHE: std::cell::RefCell<PartsCache> = const { std::cell::RefCell::new(Vec::new()) };
}

fn build_parts(
    allow: &[String],
    worker_threads: Option<u16>,
    settings: &InjectionSettings,
) -> Result<InjectedParts, InjectError> {
    let mut init_args: Vec<String> = vec![
        "init-network".into(),
        "--gateway-uid".into(),
        GATEWAY_UID.to_string(),
    ];
    if !settings.cluster_dns.is_empty() {
        let dns: Vec<String> = settings
            .cluster_dns
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        init_args.extend(["--dns".into(), dns.join(" ")]);
    }
    if !allow.is_empty() {
        init_args.extend(["--allow".into(), allow.join(" ")]);
    }
    let init_network = json!({
        "name": INIT_NETWORK_CONTAINER,
        "image": settings.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "args": init_args,
        "securityContext": {
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });

    let mut gateway_args: Vec<String> = [
        "run",
        "--control-url",
        &settings.control_url,
        "--control-ca-file",
        &format!("{CONTROL_CA_DIR}/ca.crt"),
        "--token-file",
        &format!("{TOKENS_DIR}/gateway"),
        "--spool-dir",
        SPOOL_DIR,
        "--listen",
        &format!("127.0.0.1:{GATEWAY_PORT}"),
        "--admin-listen",
        &format!("0.0.0.0:{GATEWAY_ADMIN_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(threads) = worker_threads {
        gateway_args.extend(["--worker-threads".into(), threads.to_string()]);
    }
    if let Some(recorder) = &settings.recorder_url {
        gateway_args.extend([
            "--recorder-url".into(),
            recorder.clone(),
            "--recorder-token-file".into(),
            format!("{TOKENS_DIR}/recorder"),
        ]);
    }
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": GATEWAY_ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
            "successThreshold": 1,
        })
    };
    let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let gateway = json!({
        "name": GATEWAY_CONTAINER,
        "image": settings.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "args": gateway_args,
        "env": [
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_UID", "metadata.uid"),
            field_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("NODE_NAME", "spec.nodeName"),
        ],
        "securityContext": {
            "runAsUser": GATEWAY_UID,
            "runAsGroup": GATEWAY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "startupProbe": probe("/startup", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "volumeMounts": [
            {"name": VOLUME_SPOOL, "mountPath": SPOOL_DIR},
            {"name": VOLUME_TOKENS, "mountPath": TOKENS_DIR, "readOnly": true},
            {"name": VOLUME_CONTROL_CA, "mountPath": CONTROL_CA_DIR, "readOnly": true},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    let volumes = json!([
        {"name": VOLUME_SPOOL, "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": VOLUME_TOKENS, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"audience": AUDIENCE_GATEWAY, "expirationSeconds": 3600, "path": "gateway"}},
            {"serviceAccountToken": {"audience": AUDIENCE_RECORDER, "expirationSeconds": 3600, "path": "recorder"}},
            // For Bedrock providers with aws.webIdentity: traded with STS for
            // the role's credentials, by the gateway alone.
            {"serviceAccountToken": {"audience": AUDIENCE_AWS_STS, "expirationSeconds": 3600, "path": "aws"}},
            // For Vertex AI providers with gcp.workloadIdentity: exchanged
            // with Google's STS, by the gateway alone.
            {"serviceAccountToken": {"audience": AUDIENCE_GCP_STS, "expirationSeconds": 3600, "path": "gcp"}},
            // For Azure OpenAI providers with azure.workloadIdentity:
            // presented to Entra ID, by the gateway alone.
            {"serviceAccountToken": {"audience": AUDIENCE_AZURE_AD, "expirationSeconds": 3600, "path": "azure"}},
        ]}},
        {"name": VOLUME_CONTROL_CA, "configMap": {"name": CONTROL_CA_CONFIGMAP, "defaultMode": 420,
            "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ]);
    let hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&json!({
            "initNetwork": init_network,
            "gateway": gateway,
            "volumes": volumes,
            "env": BASE_URL_ENV,
        }))
        .map_err(|e| InjectError::Build(e.to_string()))?,
    ));
    let build = |e: serde_json::Error| InjectError::Build(e.to_string());
    Ok(InjectedParts {
        init_network: serde_json::from_value(init_network).map_err(build)?,
        gateway: serde_json::from_value(gateway).map_err(build)?,
        volumes: serde_json::from_value(volumes).map_err(build)?,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn settings() -> InjectionSettings {
        InjectionSettings {
            gateway_image: "tollgate/gateway:test".into(),
            operator_namespace: "tollgate-system".into(),
            control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
            recorder_url: None,
            cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
        }
    }

    fn governed() -> NamespaceView {
        NamespaceView {
            name: "team-a".into(),
            governed: true,
            policies: vec![],
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                "env": [{"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:15080/v1"}]}]}
        }))
        .unwrap()
    }

    #[test]
    fn injects_init_network_first_then_the_gateway_and_hardens_app_containers() {
        let out = inject(&pod(), &governed(), &settings()).unwrap();
        assert_eq!(out.decision, Decision::Inject);
        let spec = out.pod.spec.unwrap();
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, vec![INIT_NETWORK_CONTAINER, GATEWAY_CONTAINER]);
        let app = &spec.containers[0];
        let env: Vec<(&str, Option<&str>)> = app
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("OPENAI_BASE_URL", Some("http://127.0.0.1:15080/v1")),
                ("ANTHROPIC_BASE_URL", Some("http://127.0.0.1:15080")),
            ]
        );
        let drop = app
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.clone());
        assert_eq!(drop, Some(vec!["NET_RAW".to_string()]));
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, GATEWAY_VOLUMES.to_vec());
        assert!(!out.patch.0.is_empty());
    }

    #[test]
    fn init_network_args_carry_dns_and_allowed_egress() {
        let parts = injected_parts(&ObjectMeta::default(), &governed(), &settings()).unwrap();
        assert_eq!(
            parts.init_network.args.unwrap(),
            vec![
                "init-network",
                "--gateway-uid",
                "15080",
                "--dns",
                "198.19.0.10"
            ]
        );
        let mut with_recorder = settings();
        with_recorder.recorder_url =
            Some("https://tollgate-recorder.tollgate-system.svc:8443".into());
        let parts = injected_parts(&ObjectMeta::default(), &governed(), &with_recorder).unwrap();
        let args = parts.gateway.args.unwrap();
        assert!(args.windows(2).any(|w| w[0] == "--recorder-url"));
        assert!(args.contains(&"/var/run/secrets/tollgate.dev/tokens/recorder".to_string()));
    }

    #[test]
    fn a_pod_may_ask_for_more_gateway_threads_within_bounds() {
        let asking = |value: &str| ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_WORKER_THREADS.to_string(),
                value.to_string(),
            )])),
            ..ObjectMeta::default()
        };
        let args = |meta: &ObjectMeta| {
            injected_parts(meta, &governed(), &settings())
                .map(|parts| parts.gateway.args.unwrap_or_default())
        };
        let default = args(&ObjectMeta::default()).unwrap();
        assert!(!default.iter().any(|a| a == "--worker-threads"));
        let two = args(&asking("2")).unwrap();
        assert!(two.windows(2).any(|w| w == ["--worker-threads", "2"]));
        // Another gateway spec, so another hash: validation compares both.
        let hash = |meta: &ObjectMeta| injected_parts(meta, &governed(), &settings()).unwrap().hash;
        assert_ne!(hash(&asking("2")), hash(&ObjectMeta::default()));
        for bad in ["0", "65", "-1", "two", "", " 2"] {
            let err = args(&asking(bad)).unwrap_err();
            assert!(
                err.to_string().contains(ANNOTATION_WORKER_THREADS),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = inject(&pod(), &governed(), &settings()).unwrap().pod;
        let twice = inject(&once, &governed(), &settings()).unwrap();
        assert_eq!(twice.pod, once);
        assert!(twice.patch.0.is_empty(), "{:?}", twice.patch);
    }

    #[test]
    fn an_impostor_with_the_gateway_name_is_replaced() {
        let mut p = pod();
        p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: GATEWAY_CONTAINER.into(),
            image: Some("evil:1".into()),
            ..Default::default()
        }]);
        let out = inject(&p, &governed(), &settings()).unwrap().pod;
        let init = out.spec.unwrap().init_containers.unwrap();
        assert_eq!(init.len(), 2);
        assert_eq!(init[1].image.as_deref(), Some("tollgate/gateway:test"));
    }

    #[test]
    fn operator_namespace_and_ungoverned_namespaces_are_left_alone() {
        let mut ns = governed();
        ns.name = "tollgate-system".into();
        let out = inject(&pod(), &ns, &settings()).unwrap();
        assert_eq!(out.decision, Decision::OperatorNamespace);
        assert!(out.patch.0.is_empty());
        let mut ns = governed();
        ns.governed = false;
        assert_eq!(
            inject(&pod(), &ns, &settings()).unwrap().decision,
            Decision::NotGoverned
        );
    }
}

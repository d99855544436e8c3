//! Sidecar injection and the bypass rule table, as pure functions over pod
//! specs. The operator's webhooks and `kubectl tollgate inject` / `lint` call
//! into this crate; it links no kube client and does no I/O.
//!
//! - [`inject`]: what a governed pod gets (the gateway sidecar, the
//!   init-network step, volumes, env) as a function of the pod, the
//!   namespace's policies ([`NamespaceView`]) and the installation
//!   ([`InjectionSettings`]).
//! - [`rules`]: THE rule table. Every way around the gateway that admission
//!   refuses has one entry with an id, a message and a pure check.
//! - [`review`]: AdmissionReview in, AdmissionReview out, for each webhook
//!   path, over a [`PolicyView`] that the operator fills from its caches.
//! - [`workload`]: finding the pod template inside Deployments, Jobs, ...
#![forbid(unsafe_code)]

use std::net::IpAddr;

pub mod inject;
pub mod review;
pub mod rules;
pub mod view;
pub mod workload;

pub use inject::{InjectError, Injection, inject, injected_parts};
pub use review::{Webhook, review};
pub use rules::{RULES, Rule, Subject, Violation, check_pod};
pub use view::{NamespaceView, PolicySummary, PolicyView, StaticPolicyView};

/// What injection needs to know about the installation. Built from the
/// operator's flags (or the CLI's) and never from the pod being admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionSettings {
    /// The gateway image, also used for the init-network container.
    pub gateway_image: String,
    /// The operator's namespace: nothing is ever injected there.
    pub operator_namespace: String,
    /// The control endpoint gateways fetch config and key certificates from,
    /// e.g. `https://tollgate-operator.tollgate-system.svc:9443`.
    pub control_url: String,
    /// The recorder gateways ship receipts to, when one is installed.
    pub recorder_url: Option<String>,
    /// Cluster DNS resolvers the init-network rules let pods reach.
    pub cluster_dns: Vec<IpAddr>,
}

/// The version of the injected spec, written to [`ANNOTATION_INJECTED`].
pub const INJECTION_VERSION: &str = "v1";
/// Namespace label that turns governance on (`enabled`) or explicitly off.
pub const LABEL_INJECT: &str = "tollgate.dev/inject";
/// Pod annotation to opt out (`disabled`), honoured only where policy allows.
pub const ANNOTATION_INJECT: &str = "tollgate.dev/inject";
/// Pod annotation asking for more request threads in the pod's gateway
/// (`--worker-threads`, 1 to [`MAX_WORKER_THREADS`]; the gateway's default is
/// one). Read at injection and again by validation, so the injected gateway
/// and the annotation always agree.
pub const ANNOTATION_WORKER_THREADS: &str = "tollgate.dev/gateway-worker-threads";
/// The most request threads a pod may ask its gateway for (the gateway's own
/// bound for `--worker-threads`).
pub const MAX_WORKER_THREADS: u16 = 64;
/// Pod annotation written by injection: the injection version.
pub const ANNOTATION_INJECTED: &str = "tollgate.dev/injected";
/// Pod annotation written by injection: sha256 of the injected parts.
pub const ANNOTATION_INJECTION_HASH: &str = "tollgate.dev/injection-hash";
/// kubectl's default container for exec/logs; injection points it at the
/// first app container so the default is never the gateway.
pub const ANNOTATION_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Value of the label / annotation that turns injection on.
pub const ENABLED: &str = "enabled";
/// Value of the label / annotation that turns injection off.
pub const DISABLED: &str = "disabled";

/// The gateway sidecar's container name (a native sidecar init container).
pub const GATEWAY_CONTAINER: &str = "tollgate-gateway";
/// The init container that writes the egress rules; always first.
pub const INIT_NETWORK_CONTAINER: &str = "tollgate-init-network";
/// Container and volume names starting with this are reserved for Tollgate.
pub const RESERVED_PREFIX: &str = "tollgate-";
/// The UID the gateway runs as; the only UID whose traffic leaves the pod.
pub const GATEWAY_UID: i64 = 15080;
/// Gateway API port on loopback.
pub const GATEWAY_PORT: u16 = 15080;
/// Gateway admin port: /live, /startup, /ready, /metrics.
pub const GATEWAY_ADMIN_PORT: u16 = 15081;

/// The receipt spool emptyDir.
pub const VOLUME_SPOOL: &str = "tollgate-spool";
/// Projected ServiceAccount tokens for the control endpoint and recorder.
pub const VOLUME_TOKENS: &str = "tollgate-tokens";
/// The control endpoint's CA certificate (ConfigMap `tollgate-control-ca`).
pub const VOLUME_CONTROL_CA: &str = "tollgate-control-ca";
/// Every volume injection adds.
pub const GATEWAY_VOLUMES: [&str; 3] = [VOLUME_SPOOL, VOLUME_TOKENS, VOLUME_CONTROL_CA];
/// The ConfigMap the operator maintains in governed namespaces.
pub const CONTROL_CA_CONFIGMAP: &str = "tollgate-control-ca";

/// Token audience the control endpoint accepts.
pub const AUDIENCE_GATEWAY: &str = "tollgate.dev/gateway";
/// Token audience the recorder accepts.
pub const AUDIENCE_RECORDER: &str = "tollgate.dev/recorder";

/// Base-URL variables injected into every app container, with their values.
pub const BASE_URL_ENV: [(&str, &str); 2] = [
    ("OPENAI_BASE_URL", "http://127.0.0.1:15080/v1"),
    ("ANTHROPIC_BASE_URL", "http://127.0.0.1:15080"),
];
/// Proxy variables an app container may not set (any letter case): a proxy
/// inside an allowed CIDR would carry LLM traffic past the gateway.
pub const PROXY_ENV: [&str; 3] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"];
/// Capabilities no non-gateway container may add (`ALL` included).
pub const DANGEROUS_CAPABILITIES: [&str; 5] =
    ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "ALL"];

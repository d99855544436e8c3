//! THE rule table: every way around the gateway that admission refuses.
//!
//! Each [`Rule`] has an id (quoted in every denial), a message saying what it
//! stops, and a pure check. Pods, ephemeral containers and workload templates
//! all go through [`check_pod`]; `CONNECT` reviews through [`check_connect`];
//! namespace label changes through [`check_namespace_change`].

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{EnvVar, PodSpec, SecurityContext, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::inject::{
    Decision, InjectError, InjectedParts, decide, injected_parts, normalize_capability,
    opt_out_requested,
};
use crate::view::NamespaceView;
use crate::{
    ANNOTATION_INJECTED, ANNOTATION_INJECTION_HASH, BASE_URL_ENV, DANGEROUS_CAPABILITIES, ENABLED,
    GATEWAY_CONTAINER, GATEWAY_UID, GATEWAY_VOLUMES, INIT_NETWORK_CONTAINER, INJECTION_VERSION,
    InjectionSettings, LABEL_INJECT, PROXY_ENV, RESERVED_PREFIX, VOLUME_TOKENS,
};

/// What is being checked: an admitted pod, or the pod template of a workload
/// (which injection has not run on yet, so presence rules do not apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Pod,
    Template,
}

/// The input of a pod-spec check.
#[derive(Debug)]
pub struct PodInput<'a> {
    pub subject: Subject,
    pub meta: &'a ObjectMeta,
    pub spec: &'a PodSpec,
    pub ns: &'a NamespaceView,
    pub settings: &'a InjectionSettings,
    /// What injection would add for this pod's labels.
    pub expected: &'a InjectedParts,
}

/// The input of a `CONNECT pods/exec` or `pods/attach` check.
#[derive(Debug)]
pub struct ConnectInput<'a> {
    /// The container named in the options; empty when none was named.
    pub container: &'a str,
}

/// The input of a namespace UPDATE check.
#[derive(Debug)]
pub struct NamespaceChange<'a> {
    pub old_labels: &'a BTreeMap<String, String>,
    pub new_labels: &'a BTreeMap<String, String>,
    pub ns: &'a NamespaceView,
}

/// A rule's check: returns one detail per finding, empty when compliant.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    PodSpec(fn(&PodInput) -> Vec<String>),
    Connect(fn(&ConnectInput) -> Vec<String>),
    Namespace(fn(&NamespaceChange) -> Vec<String>),
}

/// One row of the rule table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Stable id, quoted in denials, lint output, Events and docs.
    pub id: &'static str,
    /// What the rule stops, in a sentence.
    pub message: &'static str,
    pub check: Check,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub rule: &'static str,
    pub message: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.message, self.detail)
    }
}

/// The rule table.
pub static RULES: &[Rule] = &[
    Rule {
        id: "gateway-missing",
        message: "governed pods must carry the injected tollgate-gateway sidecar and tollgate-init-network container",
        check: Check::PodSpec(gateway_missing),
    },
    Rule {
        id: "gateway-modified",
        message: "the gateway, its init container and volumes must be exactly what injection produces, and Tollgate's reserved names may not be reused",
        check: Check::PodSpec(gateway_modified),
    },
    Rule {
        id: "opt-out-not-permitted",
        message: "the tollgate.dev/inject: disabled opt-out needs every EgressPolicy selecting the pod to set spec.injection.allowOptOut",
        check: Check::PodSpec(opt_out_not_permitted),
    },
    Rule {
        id: "host-network",
        message: "hostNetwork bypasses the pod's egress rules",
        check: Check::PodSpec(host_network),
    },
    Rule {
        id: "host-pid",
        message: "hostPID exposes the gateway's process and memory",
        check: Check::PodSpec(host_pid),
    },
    Rule {
        id: "share-process-namespace",
        message: "shareProcessNamespace lets app containers reach into the gateway's process",
        check: Check::PodSpec(share_process_namespace),
    },
    Rule {
        id: "privileged-container",
        message: "non-gateway containers may not be privileged",
        check: Check::PodSpec(privileged_container),
    },
    Rule {
        id: "dangerous-capability",
        message: "non-gateway containers may not add NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_PTRACE or ALL",
        check: Check::PodSpec(dangerous_capability),
    },
    Rule {
        id: "net-raw-not-dropped",
        message: "app containers must drop NET_RAW, since raw sockets skip the egress rules",
        check: Check::PodSpec(net_raw_not_dropped),
    },
    Rule {
        id: "gateway-uid",
        message: "UID 15080 is reserved for the gateway; no other container may run as it",
        check: Check::PodSpec(gateway_uid),
    },
    Rule {
        id: "base-url-override",
        message: "OPENAI_BASE_URL and ANTHROPIC_BASE_URL must point at the local gateway",
        check: Check::PodSpec(base_url_override),
    },
    Rule {
        id: "proxy-env",
        message: "HTTP_PROXY, HTTPS_PROXY and ALL_PROXY may not be set: a proxy would carry LLM traffic past the gateway",
        check: Check::PodSpec(proxy_env),
    },
    Rule {
        id: "gateway-volume-mount",
        message: "only the gateway may mount its volumes or project a token for the tollgate.dev audiences",
        check: Check::PodSpec(gateway_volume_mount),
    },
    Rule {
        id: "dns-outside-cluster",
        message: "dnsPolicy None may only use the cluster's DNS resolvers",
        check: Check::PodSpec(dns_outside_cluster),
    },
    Rule {
        id: "ephemeral-targets-gateway",
        message: "ephemeral containers may not target the gateway's process namespace",
        check: Check::PodSpec(ephemeral_targets_gateway),
    },
    Rule {
        id: "exec-into-gateway",
        message: "exec and attach into the gateway's containers are refused",
        check: Check::Connect(exec_into_gateway),
    },
    Rule {
        id: "namespace-unlabel",
        message: "a namespace with an enforcing EgressPolicy cannot leave governance; delete or disable its EgressPolicies first",
        check: Check::Namespace(namespace_unlabel),
    },
];

/// Looks a rule up by id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// Runs every pod-spec rule. Returns nothing for pods that are not governed
/// (namespace not labelled, the operator's namespace, or a permitted opt-out).
pub fn check_pod(
    subject: Subject,
    meta: &ObjectMeta,
    spec: &PodSpec,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<Vec<Violation>, InjectError> {
    match decide(meta, ns, settings) {
        Decision::NotGoverned | Decision::OperatorNamespace | Decision::OptedOut => {
            return Ok(Vec::new());
        }
        Decision::Inject | Decision::OptOutNotPermitted => {}
    }
    let expected = injected_parts(meta, ns, settings)?;
    let input = PodInput {
        subject,
        meta,
        spec,
        ns,
        settings,
        expected: &expected,
    };
    let mut out = Vec::new();
    for r in RULES {
        if let Check::PodSpec(check) = r.check {
            out.extend(check(&input).into_iter().map(|detail| Violation {
                rule: r.id,
                message: r.message,
                detail,
            }));
        }
    }
    Ok(out)
}

/// Runs the connect rules.
pub fn check_connect(input: &ConnectInput) -> Vec<Violation> {
    run(|c| match c {
        Check::Connect(check) => Some(check(input)),
        _ => None,
    })
}

/// Runs the namespace rules.
pub fn check_namespace_change(input: &NamespaceChange) -> Vec<Violation> {
    run(|c| match c {
        Check::Namespace(check) => Some(check(input)),
        _ => None,
    })
}

fn run(f: impl Fn(Check) -> Option<Vec<String>>) -> Vec<Violation> {
    RULES
        .iter()
        .flat_map(|r| {
            f(r.check).into_iter().flatten().map(|detail| Violation {
                rule: r.id,
                message: r.message,
                detail,
            })
        })
        .collect()
}

// ----- container views ------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    App,
    Ephemeral,
}

#[derive(Debug)]
struct ContainerView<'a> {
    kind: Kind,
    index: usize,
    name: &'a str,
    security_context: Option<&'a SecurityContext>,
    env: &'a [EnvVar],
    mounts: &'a [VolumeMount],
    target: Option<&'a str>,
}

impl ContainerView<'_> {
    /// The two containers injection owns, in their places.
    fn is_gateway_owned(&self) -> bool {
        self.kind == Kind::Init
            && ((self.index == 0 && self.name == INIT_NETWORK_CONTAINER)
                || (self.index == 1 && self.name == GATEWAY_CONTAINER))
    }

    fn label(&self) -> String {
        let kind = match self.kind {
            Kind::Init => "init container",
            Kind::App => "container",
            Kind::Ephemeral => "ephemeral container",
        };
        format!("{kind} {:?}", self.name)
    }
}

fn containers(spec: &PodSpec) -> Vec<ContainerView<'_>> {
    let mut out = Vec::new();
    for (index, c) in spec.init_containers.iter().flatten().enumerate() {
        out.push(ContainerView {
            kind: Kind::Init,
            index,
            name: &c.name,
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            target: None,
        });
    }
    for (index, c) in spec.containers.iter().enumerate() {
        out.push(ContainerView {
            kind: Kind::App,
            index,
            name: &c.name,
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            target: None,
        });
    }
    for (index, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        out.push(ContainerView {
            kind: Kind::Ephemeral,
            index,
            name: &c.name,
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            target: c.target_container_name.as_deref(),
        });
    }
    out
}

fn non_gateway(spec: &PodSpec) -> impl Iterator<Item = ContainerView<'_>> {
    containers(spec)
        .into_iter()
        .filter(|c| !c.is_gateway_owned())
}

// ----- checks ---------------------------------------------------------------

fn gateway_missing(input: &PodInput) -> Vec<String> {
    // An opt-out is reported by its own rule; a template is injected later.
    if input.subject == Subject::Template || opt_out_requested(input.meta) {
        return Vec::new();
    }
    let init = input.spec.init_containers.as_deref().unwrap_or_default();
    [INIT_NETWORK_CONTAINER, GATEWAY_CONTAINER]
        .into_iter()
        .filter(|name| !init.iter().any(|c| c.name == *name))
        .map(|name| format!("init container {name:?} is missing"))
        .collect()
}

fn gateway_modified(input: &PodInput) -> Vec<String> {
    let mut out = Vec::new();
    // Reserved names outside the two injected slots are impostors, in pods
    // and templates alike.
    for c in containers(input.spec) {
        if c.name.starts_with(RESERVED_PREFIX) && !c.is_gateway_owned() {
            let template_slot = input.subject == Subject::Template && c.kind == Kind::Init;
            if !template_slot {
                out.push(format!(
                    "{} uses a name reserved for Tollgate (at the wrong place, or an impostor)",
                    c.label()
                ));
            }
        }
    }
    if !injection_present(input) {
        return out; // gateway-missing (or the opt-out rule) says it all
    }
    let init = input.spec.init_containers.as_deref().unwrap_or_default();
    let expected = [
        (0, &input.expected.init_network),
        (1, &input.expected.gateway),
    ];
    for (index, want) in expected {
        let Some(found) = init.iter().position(|c| c.name == want.name) else {
            continue; // gateway-missing reports it
        };
        if found != index {
            out.push(format!(
                "init container {:?} is at position {found}, injection puts it at {index}",
                want.name
            ));
        }
        let differing = differing_fields(&comparable(&init[found]), &comparable(want));
        if !differing.is_empty() {
            out.push(format!(
                "init container {:?} differs from the injected spec in {}",
                want.name,
                differing.join(", ")
            ));
        }
    }
    let volumes = input.spec.volumes.as_deref().unwrap_or_default();
    for want in &input.expected.volumes {
        match volumes.iter().find(|v| v.name == want.name) {
            None => out.push(format!("volume {:?} is missing", want.name)),
            Some(v) if v != want => {
                out.push(format!(
                    "volume {:?} differs from the injected spec",
                    want.name
                ));
            }
            Some(_) => {}
        }
    }
    for v in volumes {
        if v.name.starts_with(RESERVED_PREFIX) && !GATEWAY_VOLUMES.contains(&v.name.as_str()) {
            out.push(format!(
                "volume {:?} uses a name reserved for Tollgate",
                v.name
            ));
        }
    }
    let annotations = input.meta.annotations.clone().unwrap_or_default();
    if annotations.get(ANNOTATION_INJECTED).map(String::as_str) != Some(INJECTION_VERSION) {
        out.push(format!(
            "annotation {ANNOTATION_INJECTED} is not {INJECTION_VERSION:?}"
        ));
    }
    if annotations.get(ANNOTATION_INJECTION_HASH) != Some(&input.expected.hash) {
        out.push(format!(
            "annotation {ANNOTATION_INJECTION_HASH} does not match the injected spec"
        ));
    }
    out
}

/// A container as JSON, minus what the API server may add by itself: the
/// ServiceAccount admission plugin's token mount (it mounts into every
/// container when it runs after injection). Anything else counts.
/// Whether injection ran on this pod (either injected container is there).
/// When it did not, gateway-missing is the one finding; the rules checking
/// what injection adds (volumes, env, the NET_RAW drop) stay quiet.
fn injection_present(input: &PodInput) -> bool {
    input.subject == Subject::Pod
        && !opt_out_requested(input.meta)
        && input
            .spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == GATEWAY_CONTAINER || c.name == INIT_NETWORK_CONTAINER)
}

fn comparable<T: serde::Serialize>(container: &T) -> Value {
    let mut value = serde_json::to_value(container).unwrap_or(Value::Null);
    if let Some(Value::Array(mounts)) = value.get_mut("volumeMounts") {
        mounts.retain(|m| {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            let path = m
                .get("mountPath")
                .and_then(Value::as_str)
                .unwrap_or_default();
            !(name.starts_with("kube-api-access-")
                && path == "/var/run/secrets/kubernetes.io/serviceaccount")
        });
    }
    value
}

fn differing_fields(found: &Value, want: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let found = found.as_object().unwrap_or(&empty);
    let want = want.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = found.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| found.get(*k) != want.get(*k))
        .cloned()
        .collect()
}

fn opt_out_not_permitted(input: &PodInput) -> Vec<String> {
    if !opt_out_requested(input.meta) {
        return Vec::new();
    }
    // check_pod skips permitted opt-outs entirely, so reaching here with the
    // annotation means it is not permitted.
    let labels = input.meta.labels.clone().unwrap_or_default();
    let selecting: Vec<&str> = input
        .ns
        .selecting(&labels)
        .map(|p| p.name.as_str())
        .collect();
    if selecting.is_empty() {
        vec![format!(
            "no EgressPolicy in namespace {:?} selects this pod",
            input.ns.name
        )]
    } else {
        vec![format!(
            "EgressPolicies selecting it: {}; not all allow opt-out",
            selecting.join(", ")
        )]
    }
}

fn host_network(input: &PodInput) -> Vec<String> {
    flag(input.spec.host_network, "hostNetwork is true")
}

fn host_pid(input: &PodInput) -> Vec<String> {
    flag(input.spec.host_pid, "hostPID is true")
}

fn share_process_namespace(input: &PodInput) -> Vec<String> {
    flag(
        input.spec.share_process_namespace,
        "shareProcessNamespace is true",
    )
}

fn flag(value: Option<bool>, detail: &str) -> Vec<String> {
    if value == Some(true) {
        vec![detail.to_string()]
    } else {
        Vec::new()
    }
}

fn privileged_container(input: &PodInput) -> Vec<String> {
    non_gateway(input.spec)
        .filter(|c| c.security_context.and_then(|s| s.privileged) == Some(true))
        .map(|c| format!("{} is privileged", c.label()))
        .collect()
}

fn dangerous_capability(input: &PodInput) -> Vec<String> {
    let mut out = Vec::new();
    for c in non_gateway(input.spec) {
        let added = c
            .security_context
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.add.as_ref());
        for cap in added.into_iter().flatten() {
            let cap = normalize_capability(cap);
            if DANGEROUS_CAPABILITIES.contains(&cap.as_str()) {
                out.push(format!("{} adds {cap}", c.label()));
            }
        }
    }
    out
}

fn net_raw_not_dropped(input: &PodInput) -> Vec<String> {
    if !injection_present(input) {
        return Vec::new(); // injection adds the drop
    }
    non_gateway(input.spec)
        .filter(|c| {
            let dropped = c
                .security_context
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|caps| caps.drop.as_ref());
            !dropped
                .into_iter()
                .flatten()
                .any(|d| matches!(normalize_capability(d).as_str(), "NET_RAW" | "ALL"))
        })
        .map(|c| format!("{} does not drop NET_RAW", c.label()))
        .collect()
}

fn gateway_uid(input: &PodInput) -> Vec<String> {
    let pod_uid = input
        .spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user);
    non_gateway(input.spec)
        .filter_map(|c| {
            let own = c.security_context.and_then(|s| s.run_as_user);
            match (own, pod_uid) {
                (Some(GATEWAY_UID), _) => {
                    Some(format!("{} sets runAsUser {GATEWAY_UID}", c.label()))
                }
                (None, Some(GATEWAY_UID)) => Some(format!(
                    "{} inherits runAsUser {GATEWAY_UID} from the pod securityContext",
                    c.label()
                )),
                _ => None,
            }
        })
        .collect()
}

fn base_url_override(input: &PodInput) -> Vec<String> {
    let mut out = Vec::new();
    for c in non_gateway(input.spec) {
        for (name, value) in BASE_URL_ENV {
            let entries: Vec<&EnvVar> = c.env.iter().filter(|e| e.name == name).collect();
            match entries.as_slice() {
                [] => {
                    // Injection appends it to init and app containers of pods.
                    if injection_present(input) && c.kind != Kind::Ephemeral {
                        out.push(format!("{} lacks {name}", c.label()));
                    }
                }
                [only] if only.value.as_deref() == Some(value) && only.value_from.is_none() => {}
                [_] => out.push(format!(
                    "{} sets {name} to something other than {value}",
                    c.label()
                )),
                _ => out.push(format!("{} sets {name} more than once", c.label())),
            }
        }
    }
    out
}

fn proxy_env(input: &PodInput) -> Vec<String> {
    let mut out = Vec::new();
    for c in non_gateway(input.spec) {
        for e in c.env {
            let upper = e.name.to_ascii_uppercase();
            if PROXY_ENV.contains(&upper.as_str()) {
                out.push(format!("{} sets {}", c.label(), e.name));
            }
        }
    }
    out
}

fn gateway_volume_mount(input: &PodInput) -> Vec<String> {
    let mut out = Vec::new();
    for c in non_gateway(input.spec) {
        for m in c.mounts {
            if GATEWAY_VOLUMES.contains(&m.name.as_str()) {
                out.push(format!(
                    "{} mounts the gateway volume {:?}",
                    c.label(),
                    m.name
                ));
            }
        }
    }
    for v in input.spec.volumes.iter().flatten() {
        if v.name == VOLUME_TOKENS {
            continue; // compared with the injected spec by gateway-modified
        }
        let audiences = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .filter_map(|t| t.audience.as_deref());
        for audience in audiences {
            let tollgate = audience == "tollgate.dev" || audience.starts_with("tollgate.dev/");
            if tollgate {
                out.push(format!(
                    "volume {:?} projects a token for audience {audience:?}",
                    v.name
                ));
            }
        }
    }
    out
}

fn dns_outside_cluster(input: &PodInput) -> Vec<String> {
    if input.spec.dns_policy.as_deref() != Some("None") {
        return Vec::new();
    }
    let nameservers = input
        .spec
        .dns_config
        .as_ref()
        .and_then(|d| d.nameservers.as_ref());
    nameservers
        .into_iter()
        .flatten()
        .filter(|ns| {
            let parsed: Option<std::net::IpAddr> = ns.trim().parse().ok();
            !parsed.is_some_and(|ip| input.settings.cluster_dns.contains(&ip))
        })
        .map(|ns| format!("nameserver {ns} is not a cluster DNS resolver"))
        .collect()
}

fn ephemeral_targets_gateway(input: &PodInput) -> Vec<String> {
    containers(input.spec)
        .into_iter()
        .filter(|c| c.kind == Kind::Ephemeral)
        .filter(|c| c.target.is_some_and(|t| t.starts_with(RESERVED_PREFIX)))
        .map(|c| format!("{} targets {:?}", c.label(), c.target.unwrap_or_default()))
        .collect()
}

fn exec_into_gateway(input: &ConnectInput) -> Vec<String> {
    // An empty container name never resolves to an init container (the API
    // server only defaults to the single app container), so only a named
    // Tollgate container is a target.
    if input.container.starts_with(RESERVED_PREFIX) {
        vec![format!(
            "container {:?} belongs to Tollgate",
            input.container
        )]
    } else {
        Vec::new()
    }
}

fn namespace_unlabel(input: &NamespaceChange) -> Vec<String> {
    let enabled = |labels: &BTreeMap<String, String>| {
        labels.get(LABEL_INJECT).map(String::as_str) == Some(ENABLED)
    };
    if !enabled(input.old_labels) || enabled(input.new_labels) {
        return Vec::new();
    }
    let enforcing: Vec<&str> = input
        .ns
        .policies
        .iter()
        .filter(|p| p.mode == tollgate_crds::policy::PolicyMode::Enforce)
        .map(|p| p.name.as_str())
        .collect();
    if enforcing.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "label {LABEL_INJECT}=enabled is being removed or changed while EgressPolicies enforce: {}",
        enforcing.join(", ")
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_kebab_case() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        for id in &ids {
            assert!(
                id.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{id}"
            );
        }
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len());
        assert!(rule("host-network").is_some());
        assert!(rule("nope").is_none());
    }

    #[test]
    fn connect_rule_refuses_only_tollgate_containers() {
        assert_eq!(
            check_connect(&ConnectInput {
                container: "tollgate-gateway"
            })
            .len(),
            1
        );
        assert_eq!(
            check_connect(&ConnectInput {
                container: "tollgate-init-network"
            })[0]
                .rule,
            "exec-into-gateway"
        );
        assert!(check_connect(&ConnectInput { container: "app" }).is_empty());
        assert!(check_connect(&ConnectInput { container: "" }).is_empty());
    }
}

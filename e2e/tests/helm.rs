#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The Helm chart `charts/tollgate`, rendered by the real helm (built from
//! source by `e2e/build-helm.sh`) and applied to the real API server:
//! CRDs and RBAC for real, everything else with server-side dry-run.
//!
//! Tests named `chart_*` need only helm; `e2e_*` need the cluster too. A
//! missing helm is a failure, never a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use tollgate_e2e::manifests::{expected_message, parse_documents};
use tollgate_e2e::namespace::{ensure_namespace, unique_name};
use tollgate_e2e::{FIELD_MANAGER, Kubectl, client, repo_root};

const RELEASE: &str = "tollgate";
const DEFAULT_NS: &str = "tollgate-system";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/tollgate")
}

fn pinned(name: &str) -> Result<String> {
    let env = std::fs::read_to_string(repo_root().join("e2e/versions.env"))?;
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{name} missing from e2e/versions.env"))
}

/// `TOLLGATE_HELM` (set by e2e/run.sh), else the cache path build-helm.sh
/// writes. Missing is an error.
fn helm_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOLLGATE_HELM").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        ensure!(
            bin.is_file(),
            "TOLLGATE_HELM={} does not exist",
            bin.display()
        );
        return Ok(bin);
    }
    let cache = std::env::var_os("TOLLGATE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tollgate")))
        .ok_or_else(|| anyhow!("neither TOLLGATE_CACHE nor HOME is set"))?;
    let bin = cache
        .join("helm")
        .join(format!("v{}", pinned("HELM_VERSION")?))
        .join("helm");
    ensure!(
        bin.is_file(),
        "helm not found at {} and TOLLGATE_HELM is unset: run e2e/build-helm.sh (e2e/run.sh does)",
        bin.display()
    );
    Ok(bin)
}

struct HelmOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

fn helm(args: &[&str]) -> Result<HelmOutput> {
    let bin = helm_bin()?;
    // helm keeps caches and config under HOME-derived paths; point them at
    // a scratch directory so the tests never touch the user's.
    let scratch = std::env::temp_dir().join(format!("tollgate-helm-{}", std::process::id()));
    let out = Command::new(&bin)
        .args(args)
        .env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn values_file(name: &str) -> String {
    chart_dir().join("ci").join(name).display().to_string()
}

fn template_args(namespace: &str, values: &[String], sets: &[&str]) -> Result<Vec<String>> {
    let mut args = vec![
        "template".to_owned(),
        RELEASE.to_owned(),
        chart_dir().display().to_string(),
        "--namespace".to_owned(),
        namespace.to_owned(),
        "--include-crds".to_owned(),
        "--kube-version".to_owned(),
        pinned("K8S_VERSION")?,
    ];
    for v in values {
        args.push("--values".to_owned());
        args.push(v.clone());
    }
    for s in sets {
        args.push("--set".to_owned());
        args.push((*s).to_owned());
    }
    Ok(args)
}

/// `helm template` (with CRDs) into parsed documents; an error with
/// helm's stderr if it fails.
fn render(namespace: &str, values: &[String], sets: &[&str]) -> Result<Vec<Value>> {
    let args = template_args(namespace, values, sets)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args)?;
    ensure!(
        out.success,
        "helm {} failed:\n{}",
        args.join(" "),
        out.stderr
    );
    let docs = parse_documents(&out.stdout).context("parsing helm template output")?;
    ensure!(!docs.is_empty(), "helm template rendered nothing");
    Ok(docs)
}

/// `helm template` that must fail; returns stderr.
fn render_fails(values: &[String]) -> Result<String> {
    let args = template_args(DEFAULT_NS, values, &[])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args)?;
    ensure!(
        !out.success,
        "helm template with {values:?} succeeded but must fail; rendered:\n{}",
        out.stdout.chars().take(2000).collect::<String>()
    );
    Ok(out.stderr)
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .ok_or_else(|| anyhow!("the chart renders no {kind_} {name_}"))
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in docs {
        *counts.entry(kind(d).to_owned()).or_insert(0) += 1;
    }
    counts
}

fn args_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn all_values_files() -> Vec<Vec<String>> {
    vec![
        vec![],
        vec![values_file("postgres-values.yaml")],
        vec![values_file("cert-manager-values.yaml")],
    ]
}

// ---------------------------------------------------------------- helm only

#[test]
fn chart_lints_strictly_with_every_values_file() -> Result<()> {
    let chart = chart_dir().display().to_string();
    for values in all_values_files() {
        let mut args = vec![
            "lint",
            "--strict",
            chart.as_str(),
            "--namespace",
            DEFAULT_NS,
        ];
        for v in &values {
            args.push("--values");
            args.push(v);
        }
        let out = helm(&args)?;
        ensure!(
            out.success,
            "helm {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        ensure!(
            out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "unexpected lint output: {}",
            out.stdout
        );
    }
    Ok(())
}

#[test]
fn chart_ships_the_grafana_dashboard_only_when_asked() -> Result<()> {
    let docs = render(DEFAULT_NS, &[], &[])?;
    ensure!(
        find(&docs, "ConfigMap", "tollgate-grafana-dashboards").is_err(),
        "the dashboard ConfigMap is rendered by default"
    );
    let docs = render(
        DEFAULT_NS,
        &[],
        &[
            "grafanaDashboards.enabled=true",
            "grafanaDashboards.namespace=monitoring",
        ],
    )?;
    let map = find(&docs, "ConfigMap", "tollgate-grafana-dashboards")?;
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        map["data"]["tollgate-genai.json"]
            .as_str()
            .context("no tollgate-genai.json in the ConfigMap")?,
    )
    .context("the shipped dashboard is not JSON")?;
    let source: Value = serde_json::from_str(&std::fs::read_to_string(
        chart_dir().join("dashboards/tollgate-genai.json"),
    )?)?;
    assert_eq!(
        shipped, source,
        "the ConfigMap must carry the dashboard file unchanged"
    );
    Ok(())
}

#[test]
fn chart_renders_the_control_plane_with_default_values() -> Result<()> {
    let docs = render(DEFAULT_NS, &[], &[])?;
    // The aggregated usage API trusts the CA of the recorder's generated
    // certificate, the same CA the Secret carries.
    let api = find(&docs, "APIService", "v1alpha1.usage.tollgate.dev")?;
    let secret = find(&docs, "Secret", "tollgate-recorder-tls")?;
    assert_eq!(api["spec"]["caBundle"], secret["data"]["ca.crt"]);
    assert!(
        api["spec"]["caBundle"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
    );
    assert_eq!(api["spec"]["service"]["name"], "tollgate-recorder");
    let counts = kinds(&docs);
    for (k, n) in [
        ("CustomResourceDefinition", 6),
        ("Deployment", 1),
        ("StatefulSet", 1),
        ("ServiceAccount", 2),
        // operator, recorder, tollgate-usage-viewer, tollgate-auditor,
        // tollgate-recorder-keys-reader
        ("ClusterRole", 5),
        ("ClusterRoleBinding", 3),
        ("Role", 1),
        // the operator's, and the recorder's front-proxy reader in kube-system
        ("RoleBinding", 2),
        ("APIService", 1),
        ("MutatingWebhookConfiguration", 1),
        ("ValidatingWebhookConfiguration", 1),
        ("NetworkPolicy", 2),
        ("PodDisruptionBudget", 1),
    ] {
        assert_eq!(counts.get(k).copied(), Some(n), "{k} count in {counts:?}");
    }
    // No cert-manager objects in self-signed mode.
    assert!(
        docs.iter().all(|d| !d["apiVersion"]
            .as_str()
            .unwrap_or("")
            .starts_with("cert-manager.io")),
        "self-signed mode must not need cert-manager"
    );
    for d in &docs {
        if kind(d) == "RoleBinding" && name(d) == "tollgate-recorder-auth-reader" {
            // Reads the API server's front-proxy settings, which live there.
            assert_eq!(d["metadata"]["namespace"], "kube-system");
            continue;
        }
        if kind(d) != "CustomResourceDefinition"
            && kind(d) != "APIService"
            && !kind(d).starts_with("Cluster")
            && !kind(d).ends_with("WebhookConfiguration")
        {
            assert_eq!(
                d["metadata"]["namespace"],
                DEFAULT_NS,
                "{} {}",
                kind(d),
                name(d)
            );
        }
    }

    // HA operator by default: 3 replicas, PDB, anti-affinity, no unavailable
    // replica during a rollout.
    let op = find(&docs, "Deployment", "tollgate-operator")?;
    assert_eq!(op["spec"]["replicas"], 3);
    assert_eq!(op["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let anti = &op["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"],
        op["spec"]["selector"]["matchLabels"]
    );
    let pdb = find(&docs, "PodDisruptionBudget", "tollgate-operator")?;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"], op["spec"]["selector"]);

    let args = args_of(op);
    for expected in [
        format!("--namespace={DEFAULT_NS}"),
        "--webhook-listen=0.0.0.0:8443".to_owned(),
        "--control-listen=0.0.0.0:9443".to_owned(),
        "--metrics-listen=0.0.0.0:8080".to_owned(),
        "--gateway-image=tollgate/gateway:0.1.0".to_owned(),
        format!("--recorder-url=https://tollgate-recorder.{DEFAULT_NS}.svc:8443"),
        "--identity=$(POD_NAME)".to_owned(),
        "--webhook-cert-mode=self-signed".to_owned(),
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    assert_eq!(
        op["spec"]["template"]["spec"]["containers"][0]["image"],
        "tollgate/operator:0.1.0"
    );

    // The operator trusts the recorder's CA, and sees only its ca.crt.
    let env = op["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("TOLLGATE_RECORDER_CA_FILE"), "{env}");
    let ca = op["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "recorder-ca")
        .context("recorder-ca volume")?;
    assert_eq!(ca["secret"]["secretName"], "tollgate-recorder-tls");
    assert_eq!(
        ca["secret"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}])
    );

    // Recorder: a StatefulSet on SQLite with a PVC.
    let rec = find(&docs, "StatefulSet", "tollgate-recorder")?;
    assert_eq!(rec["spec"]["replicas"], 1);
    assert_eq!(
        rec["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(
        rec["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let rargs = args_of(rec);
    for expected in [
        "serve",
        "--storage=sqlite",
        "--auth=token-review",
        "--listen=0.0.0.0:8443",
        "--reader=system:serviceaccount:tollgate-system:tollgate-operator",
    ] {
        assert!(
            rargs.iter().any(|a| a == expected),
            "{expected} missing from {rargs:?}"
        );
    }
    let tls = find(&docs, "Secret", "tollgate-recorder-tls")?;
    assert_eq!(tls["type"], "kubernetes.io/tls");

    // Services by their contract names and ports.
    let svc = find(&docs, "Service", "tollgate-operator")?;
    let ports: BTreeSet<i64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, BTreeSet::from([8080, 8443, 9443]));
    let svc = find(&docs, "Service", "tollgate-recorder")?;
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);

    // Without the recorder nothing refers to it.
    let docs = render(DEFAULT_NS, &[], &["recorder.enabled=false"])?;
    assert!(find(&docs, "StatefulSet", "tollgate-recorder").is_err());
    let op = find(&docs, "Deployment", "tollgate-operator")?;
    assert!(!op.to_string().contains("tollgate-recorder"), "{op}");
    assert_eq!(kinds(&docs).get("NetworkPolicy"), Some(&1));
    Ok(())
}

#[test]
fn chart_pods_are_locked_down() -> Result<()> {
    for values in all_values_files() {
        let docs = render(DEFAULT_NS, &values, &[])?;
        let workloads: Vec<&Value> = docs
            .iter()
            .filter(|d| matches!(kind(d), "Deployment" | "StatefulSet" | "DaemonSet"))
            .collect();
        assert_eq!(workloads.len(), 2, "{values:?}");
        for w in workloads {
            let what = format!("{} {} ({values:?})", kind(w), name(w));
            let pod = &w["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
            assert_ne!(
                pod["securityContext"]["runAsUser"], 15080,
                "{what}: the gateway's UID"
            );
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
            assert_eq!(pod["hostNetwork"], Value::Null, "{what}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
                assert_eq!(sc["capabilities"]["add"], Value::Null, "{what}");
                assert!(c["resources"]["requests"].is_object(), "{what}: requests");
            }
        }
        // Only the two workloads mount API credentials; their accounts
        // don't automount elsewhere.
        for sa in docs.iter().filter(|d| kind(d) == "ServiceAccount") {
            assert_eq!(sa["automountServiceAccountToken"], false, "{}", name(sa));
        }
    }
    Ok(())
}

/// What every webhook must carry (the admission contract).
fn check_common(hook: &Value, namespace: &str) {
    let n = hook["name"].as_str().unwrap_or("?");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{n}");
    assert_eq!(hook["sideEffects"], "None", "{n}");
    assert_eq!(hook["failurePolicy"], "Fail", "{n}");
    assert_eq!(hook["matchPolicy"], "Equivalent", "{n}");
    assert_eq!(hook["timeoutSeconds"], 5, "{n}");
    let svc = &hook["clientConfig"]["service"];
    assert_eq!(svc["name"], "tollgate-operator", "{n}");
    assert_eq!(svc["namespace"], namespace, "{n}");
    assert_eq!(svc["port"], 8443, "{n}");
    assert_eq!(hook["clientConfig"]["url"], Value::Null, "{n}");
}

fn governed_only(namespace: &str) -> Value {
    json!({"matchExpressions": [
        {"key": "tollgate.dev/inject", "operator": "In", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace]},
    ]})
}

/// (path, [(group, version, resources, operations)]) of each webhook.
fn rules_by_path(config: &Value) -> BTreeMap<String, Vec<(String, String, String, String)>> {
    let mut out = BTreeMap::new();
    for hook in config["webhooks"].as_array().into_iter().flatten() {
        let path = hook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let mut rules = Vec::new();
        for r in hook["rules"].as_array().into_iter().flatten() {
            rules.push((
                r["apiGroups"].to_string(),
                r["apiVersions"].to_string(),
                r["resources"].to_string(),
                r["operations"].to_string(),
            ));
        }
        out.insert(path, rules);
    }
    out
}

#[test]
fn chart_webhooks_match_the_admission_contract() -> Result<()> {
    let ns = "tollgate-custom";
    let docs = render(ns, &[], &[])?;
    let mutating = find(&docs, "MutatingWebhookConfiguration", "tollgate-injector")?;
    let validating = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "tollgate-validator",
    )?;

    let hooks: Vec<&Value> = mutating["webhooks"]
        .as_array()
        .into_iter()
        .chain(validating["webhooks"].as_array())
        .flatten()
        .collect();
    let names: BTreeSet<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names.len(), hooks.len(), "webhook names must be unique");
    for hook in &hooks {
        check_common(hook, ns);
        // The operator patches caBundle; the chart must not own it.
        assert_eq!(hook["clientConfig"]["caBundle"], Value::Null);
    }

    let s = |v: &[&str]| serde_json::to_string(v).unwrap();
    let mutating_rules = rules_by_path(mutating);
    assert_eq!(
        mutating_rules,
        BTreeMap::from([(
            "/mutate/pods".to_owned(),
            vec![(s(&[""]), s(&["v1"]), s(&["pods"]), s(&["CREATE"]))]
        )])
    );
    let validating_rules = rules_by_path(validating);
    let expected = BTreeMap::from([
        (
            "/validate/pods".to_owned(),
            vec![(s(&[""]), s(&["v1"]), s(&["pods"]), s(&["CREATE", "UPDATE"]))],
        ),
        (
            "/validate/pods-ephemeral".to_owned(),
            vec![(
                s(&[""]),
                s(&["v1"]),
                s(&["pods/ephemeralcontainers"]),
                s(&["UPDATE"]),
            )],
        ),
        (
            "/validate/pods-connect".to_owned(),
            vec![(
                s(&[""]),
                s(&["v1"]),
                s(&["pods/exec", "pods/attach"]),
                s(&["CONNECT"]),
            )],
        ),
        (
            "/validate/namespaces".to_owned(),
            vec![(s(&[""]), s(&["v1"]), s(&["namespaces"]), s(&["UPDATE"]))],
        ),
        (
            "/validate/workloads".to_owned(),
            vec![
                (
                    s(&["apps"]),
                    s(&["v1"]),
                    s(&["deployments", "statefulsets", "daemonsets", "replicasets"]),
                    s(&["CREATE", "UPDATE"]),
                ),
                (
                    s(&["batch"]),
                    s(&["v1"]),
                    s(&["jobs", "cronjobs"]),
                    s(&["CREATE", "UPDATE"]),
                ),
            ],
        ),
    ]);
    assert_eq!(validating_rules, expected);

    // Selectors: governed namespaces except the release namespace; the
    // namespaces webhook selects the Namespace object itself, old or new.
    for hook in &hooks {
        let path = hook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("");
        if path == "/validate/namespaces" {
            assert_eq!(
                hook["objectSelector"],
                json!({"matchExpressions": [
                    {"key": "tollgate.dev/inject", "operator": "In", "values": ["enabled"]},
                ]}),
                "{path}"
            );
            assert_eq!(
                hook["namespaceSelector"],
                json!({"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [ns]},
                ]}),
                "{path}"
            );
        } else {
            assert_eq!(hook["namespaceSelector"], governed_only(ns), "{path}");
            assert_eq!(hook["objectSelector"], Value::Null, "{path}");
        }
    }
    Ok(())
}

/// A webhook as the API server would compare it, without what legitimately
/// differs between the chart and the operator's own registration: the CA
/// bundle (the operator patches it in) and how it is reached (a URL out of
/// cluster; the chart always uses the Service, checked separately).
fn comparable_webhook(hook: &Value) -> Value {
    let mut hook = hook.clone();
    let path = match hook["clientConfig"]["url"].as_str() {
        Some(url) => url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| url[i + 3 + j..].to_owned()))
            .unwrap_or_default(),
        None => hook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    };
    hook["clientConfig"] = json!({"path": path});
    hook
}

/// Drift test: the chart's webhook configurations must be the ones the
/// operator builds (`operator/src/webhooks/configuration.rs`, golden files in
/// `operator/testdata/webhooks/`), rendered for the same namespace.
#[test]
fn chart_webhooks_match_the_operators_golden_files() -> Result<()> {
    let dir = repo_root().join("operator/testdata/webhooks");
    let docs = render("tollgate-system", &[], &[])?;
    let mut compared = BTreeSet::new();
    for path in tollgate_e2e::manifests::yaml_files(&dir)? {
        for golden in parse_documents(&std::fs::read_to_string(&path)?)? {
            let k = kind(&golden);
            if !k.ends_with("WebhookConfiguration") {
                continue;
            }
            let ours = find(&docs, k, name(&golden))?;
            let theirs: Vec<Value> = golden["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(comparable_webhook)
                .collect();
            let mine: Vec<Value> = ours["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(comparable_webhook)
                .collect();
            assert_eq!(
                mine,
                theirs,
                "the chart's {k} differs from {}",
                path.display()
            );
            // An in-cluster golden also fixes the Service reference.
            for (g, m) in golden["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(ours["webhooks"].as_array().into_iter().flatten())
            {
                if g["clientConfig"]["service"].is_object() {
                    assert_eq!(g["clientConfig"]["service"], m["clientConfig"]["service"]);
                }
            }
            compared.insert(k.to_owned());
        }
    }
    assert_eq!(
        compared.len(),
        2,
        "expected golden Mutating and Validating configurations in {}, compared {compared:?}",
        dir.display()
    );
    Ok(())
}

#[test]
fn chart_cert_manager_mode_uses_cert_manager() -> Result<()> {
    let docs = render(DEFAULT_NS, &[values_file("cert-manager-values.yaml")], &[])?;
    for (k, n) in [
        ("Issuer", "tollgate-selfsigned"),
        ("Issuer", "tollgate-ca"),
        ("Certificate", "tollgate-ca"),
        ("Certificate", "tollgate-operator-webhook"),
        ("Certificate", "tollgate-recorder"),
    ] {
        let d = find(&docs, k, n)?;
        assert_eq!(d["apiVersion"], "cert-manager.io/v1");
    }
    let cert = find(&docs, "Certificate", "tollgate-operator-webhook")?;
    assert_eq!(cert["spec"]["secretName"], "tollgate-operator-webhook-tls");
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("tollgate-operator.{DEFAULT_NS}.svc")))
    );
    for (k, n) in [
        ("MutatingWebhookConfiguration", "tollgate-injector"),
        ("ValidatingWebhookConfiguration", "tollgate-validator"),
    ] {
        let d = find(&docs, k, n)?;
        assert_eq!(
            d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{DEFAULT_NS}/tollgate-operator-webhook")
        );
    }
    // The aggregated usage API trusts the recorder's Certificate (by its name).
    let api = find(&docs, "APIService", "v1alpha1.usage.tollgate.dev")?;
    assert_eq!(
        api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{DEFAULT_NS}/tollgate-recorder")
    );
    assert!(api["spec"]["caBundle"].is_null(), "{api}");
    let op = find(&docs, "Deployment", "tollgate-operator")?;
    let args = args_of(op);
    assert!(args.contains(&"--webhook-cert-mode=cert-manager".to_owned()));
    assert!(args.contains(&"--webhook-cert-dir=/var/run/tollgate/webhook-certs".to_owned()));
    assert!(args.contains(&"--cluster-dns=198.19.0.10".to_owned()));
    // The chart generates no certificate of its own in this mode.
    assert!(find(&docs, "Secret", "tollgate-recorder-tls").is_err());

    // With an existing issuer, no private CA is created.
    let docs = render(
        DEFAULT_NS,
        &[values_file("cert-manager-values.yaml")],
        &[
            "tls.certManager.issuerRef.name=corp-ca",
            "tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    )?;
    assert_eq!(kinds(&docs).get("Issuer"), None);
    let cert = find(&docs, "Certificate", "tollgate-operator-webhook")?;
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    Ok(())
}

#[test]
fn chart_postgres_values_run_replicated_recorders() -> Result<()> {
    let docs = render(DEFAULT_NS, &[values_file("postgres-values.yaml")], &[])?;
    let rec = find(&docs, "StatefulSet", "tollgate-recorder")?;
    assert_eq!(rec["spec"]["replicas"], 2);
    assert_eq!(rec["spec"]["volumeClaimTemplates"], Value::Null);
    let args = args_of(rec);
    for expected in [
        "--storage=postgres",
        "--postgres-url-file=/var/run/tollgate/postgres/url",
        "--key-file=/var/run/tollgate/key/recorder.key",
        "--trust-anchor=/etc/tollgate/trust-anchor/trust-anchor.yaml",
        "--reader=group:tollgate-auditors",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} missing from {args:?}"
        );
    }
    let volumes = &rec["spec"]["template"]["spec"]["volumes"];
    let url = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "postgres-url")
        .context("postgres-url volume")?;
    assert_eq!(url["secret"]["secretName"], "tollgate-recorder-postgres");
    assert_eq!(
        url["secret"]["items"],
        json!([{"key": "url", "path": "url"}])
    );
    // Two replicas get a PDB of their own.
    find(&docs, "PodDisruptionBudget", "tollgate-recorder")?;
    // The extra egress rule (PostgreSQL) lands in the recorder's policy.
    let np = find(&docs, "NetworkPolicy", "tollgate-recorder")?;
    assert!(np["spec"]["egress"].to_string().contains("5432"));
    Ok(())
}

#[test]
fn chart_network_policies_fence_the_control_plane() -> Result<()> {
    let docs = render(DEFAULT_NS, &[], &[])?;
    let op = find(&docs, "NetworkPolicy", "tollgate-operator")?;
    assert_eq!(op["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = op["spec"]["ingress"].as_array().unwrap();
    // Default: webhooks from anywhere, control endpoint from governed
    // namespaces, metrics closed.
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    assert_eq!(ingress[0]["from"], Value::Null);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": 8443, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[1]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"tollgate.dev/inject": "enabled"}}}])
    );
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": 9443, "protocol": "TCP"}])
    );
    assert!(!op["spec"].to_string().contains("8080"));

    let rec = find(&docs, "NetworkPolicy", "tollgate-recorder")?;
    let from = &rec["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().map(Vec::len), Some(2), "{from}");
    assert_eq!(
        rec["spec"]["ingress"][0]["ports"],
        json!([{"port": 8443, "protocol": "TCP"}])
    );

    // Metrics open only to the configured peers.
    let docs = render(DEFAULT_NS, &[values_file("cert-manager-values.yaml")], &[])?;
    let op = find(&docs, "NetworkPolicy", "tollgate-operator")?;
    let ingress = op["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 3);
    assert_eq!(
        ingress[2]["ports"],
        json!([{"port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[2]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );

    // And none at all when disabled.
    let docs = render(DEFAULT_NS, &[], &["networkPolicy.enabled=false"])?;
    assert_eq!(kinds(&docs).get("NetworkPolicy"), None);
    Ok(())
}

#[test]
fn chart_refuses_invalid_values_with_a_clear_message() -> Result<()> {
    let dir = chart_dir().join("ci/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let expect = expected_message(&text).with_context(|| path.display().to_string())?;
        let stderr = render_fails(&[path.display().to_string()])?;
        assert!(
            stderr.contains(&expect),
            "{}: expected {expect:?} in helm's error:\n{stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "only {checked} invalid values files under {}",
        dir.display()
    );
    Ok(())
}

#[test]
fn chart_schema_rejects_a_typo_at_every_level() -> Result<()> {
    // `--set` typos at several depths, each must name the bad key.
    for (set, key) in [
        ("operatr.replicaCount=1", "operatr"),
        ("operator.replicas=1", "replicas"),
        ("operator.image.tga=x", "tga"),
        ("recorder.storage.postgress.urlSecret.name=x", "postgress"),
        ("networkPolicy.apiServer.cidr=10.0.0.0/8", "cidr"),
        ("tls.certManager.issuer=x", "issuer"),
    ] {
        let args = template_args(DEFAULT_NS, &[], &[set])?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm(&args)?;
        ensure!(!out.success, "--set {set} must fail");
        assert!(
            out.stderr
                .contains("values don't meet the specifications of the schema")
                && out.stderr.contains(&format!("'{key}' not allowed")),
            "--set {set}: {}",
            out.stderr
        );
    }
    Ok(())
}

// --------------------------------------------------------- against the cluster

/// Splits rendered documents into those applied for real (CRDs, RBAC,
/// ServiceAccounts) and those only dry-run. Webhook configurations are
/// never applied for real: they would fail closed on governed namespaces
/// of every other suite while no operator serves them.
fn split_real_and_dry_run(docs: &[Value]) -> (Vec<Value>, Vec<Value>) {
    docs.iter().cloned().partition(|d| {
        matches!(
            kind(d),
            "CustomResourceDefinition"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
                | "ServiceAccount"
        )
    })
}

fn to_stream(docs: &[Value]) -> Result<String> {
    // JSON is YAML; one List keeps kubectl to a single request stream.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    Ok(serde_json::to_string(&list)?)
}

async fn apply(kubectl: &Kubectl, docs: &[Value], dry_run: bool) -> Result<String> {
    let manager = format!("--field-manager={FIELD_MANAGER}");
    let mut args = vec![
        "apply",
        "--server-side",
        "--force-conflicts",
        manager.as_str(),
        "-f",
        "-",
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    kubectl.run_with_stdin(&args, &to_stream(docs)?).await
}

/// A Pod with a workload's pod template, its volume claim templates turned
/// into claims.
fn pod_from_template(workload: &Value) -> Value {
    let mut spec = workload["spec"]["template"]["spec"].clone();
    for claim in workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let vol = claim["metadata"]["name"].clone();
        let claim_name = format!("{}-{}-0", vol.as_str().unwrap_or(""), name(workload));
        if let Some(volumes) = spec["volumes"].as_array_mut() {
            volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": claim_name}}));
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{}-pss", name(workload))},
        "spec": spec,
    })
}

async fn can_i(kubectl: &Kubectl, who: &str, query: &[&str]) -> Result<bool> {
    let as_ = format!("--as={who}");
    let mut args = vec!["auth", "can-i", as_.as_str()];
    args.extend_from_slice(query);
    let out = kubectl.output(&args, None).await?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl {} answered {other:?}: {}",
            args.join(" "),
            out.stderr
        ),
    }
}

#[tokio::test]
async fn e2e_helm_chart_applies_with_least_privilege_rbac() -> Result<()> {
    let client = client().await?;
    let kubectl = Kubectl::from_env()?;
    let ns = unique_name("tollgate-helm");
    ensure_namespace(&client, &ns).await?;
    let docs = render(&ns, &[], &[])?;
    let (real, dry) = split_real_and_dry_run(&docs);
    ensure!(
        real.len() >= 14,
        "expected CRDs and RBAC, got {}",
        real.len()
    );

    let out = apply(&kubectl, &real, false).await?;
    for d in &real {
        assert!(
            out.contains(&format!("/{} serverside-applied", name(d))),
            "{} {} not applied:\n{out}",
            kind(d),
            name(d)
        );
    }
    for d in real
        .iter()
        .filter(|d| kind(d) == "CustomResourceDefinition")
    {
        kubectl
            .run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{}", name(d)),
            ])
            .await?;
    }
    let out = apply(&kubectl, &dry, true).await?;
    for d in &dry {
        assert!(
            out.contains(&format!("/{} serverside-applied (server dry run)", name(d))),
            "{} {} not accepted by the dry run:\n{out}",
            kind(d),
            name(d)
        );
    }
    // The dry run stored nothing.
    let nothing = kubectl
        .output(&["get", "deployment", "tollgate-operator", "-n", &ns], None)
        .await?;
    assert!(!nothing.status.success(), "dry run created the Deployment");

    // Both pods pass the Pod Security Standard "restricted", enforced by the
    // API server's PodSecurity admission on a pod built from each template.
    kubectl
        .run(&[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .await?;
    for w in dry
        .iter()
        .filter(|d| matches!(kind(d), "Deployment" | "StatefulSet"))
    {
        let pod = pod_from_template(w);
        let out = kubectl
            .output(
                &["create", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&serde_json::to_string(&pod)?),
            )
            .await?;
        assert!(
            out.status.success() && out.stderr.trim().is_empty(),
            "{} {} is not PSS restricted:\n{}{}",
            kind(w),
            name(w),
            out.stderr,
            out.stdout
        );
    }

    let operator = format!("system:serviceaccount:{ns}:tollgate-operator");
    let recorder = format!("system:serviceaccount:{ns}:tollgate-recorder");
    let allowed: Vec<Vec<&str>> = vec![
        vec!["list", "egresspolicies.tollgate.dev", "-A"],
        vec!["watch", "clusteregressquotas.tollgate.dev"],
        vec![
            "patch",
            "egressquotas.tollgate.dev",
            "--subresource=status",
            "-n",
            "default",
        ],
        vec!["create", "trustanchors.tollgate.dev"],
        vec!["patch", "trustanchors.tollgate.dev/tollgate-receipt-ca"],
        vec!["get", "pods", "-n", "default"],
        vec!["list", "pods", "-A"],
        vec!["watch", "namespaces"],
        vec!["create", "tokenreviews.authentication.k8s.io"],
        vec!["create", "events", "-n", "default"],
        vec!["create", "configmaps", "-n", "default"],
        vec!["delete", "configmaps", "-n", "default"],
        vec!["patch", "mutatingwebhookconfigurations/tollgate-injector"],
        vec![
            "patch",
            "validatingwebhookconfigurations/tollgate-validator",
        ],
        vec!["get", "secrets", "-n", &ns],
        vec!["create", "secrets", "-n", &ns],
        vec!["update", "secrets/tollgate-webhook-ca", "-n", &ns],
        vec!["update", "secrets/tollgate-receipt-ca", "-n", &ns],
        vec!["update", "leases.coordination.k8s.io", "-n", &ns],
        vec![
            "create",
            "serviceaccounts/tollgate-operator",
            "--subresource=token",
            "-n",
            &ns,
        ],
    ];
    let denied: Vec<Vec<&str>> = vec![
        vec!["get", "secrets", "-n", "default"],
        vec!["list", "secrets", "-A"],
        vec!["delete", "secrets", "-n", &ns],
        vec!["update", "secrets", "-n", &ns],
        vec!["update", "secrets/tollgate-caller-key", "-n", &ns],
        vec!["update", "egresspolicies.tollgate.dev", "-n", "default"],
        vec!["delete", "llmproviders.tollgate.dev", "-n", "default"],
        vec!["patch", "trustanchors.tollgate.dev/someone-elses"],
        vec!["create", "pods", "-n", "default"],
        vec!["delete", "pods", "-n", "default"],
        vec!["create", "pods/exec", "-n", "default"],
        vec!["patch", "namespaces"],
        vec!["update", "configmaps", "-n", "default"],
        vec!["watch", "mutatingwebhookconfigurations"],
        vec!["patch", "mutatingwebhookconfigurations/other"],
        vec!["create", "mutatingwebhookconfigurations"],
        vec![
            "create",
            "serviceaccounts/default",
            "--subresource=token",
            "-n",
            &ns,
        ],
        vec!["get", "leases.coordination.k8s.io", "-n", "kube-system"],
        vec!["create", "clusterrolebindings"],
    ];
    let mut wrong = Vec::new();
    for q in &allowed {
        if !can_i(&kubectl, &operator, q).await? {
            wrong.push(format!("operator cannot {}", q.join(" ")));
        }
    }
    for q in &denied {
        if can_i(&kubectl, &operator, q).await? {
            wrong.push(format!("operator CAN {}", q.join(" ")));
        }
    }
    for q in [
        vec!["create", "tokenreviews.authentication.k8s.io"],
        vec!["create", "subjectaccessreviews.authorization.k8s.io"],
        vec!["list", "trustanchors.tollgate.dev"],
        vec![
            "get",
            "configmaps/extension-apiserver-authentication",
            "-n",
            "kube-system",
        ],
    ] {
        if !can_i(&kubectl, &recorder, &q).await? {
            wrong.push(format!("recorder cannot {}", q.join(" ")));
        }
    }
    for q in [
        vec!["get", "secrets", "-n", ns.as_str()],
        vec!["list", "pods", "-A"],
        vec!["get", "egresspolicies.tollgate.dev", "-A"],
        vec!["patch", "trustanchors.tollgate.dev/tollgate-receipt-ca"],
        vec!["create", "trustanchors.tollgate.dev"],
        vec!["list", "configmaps", "-n", "kube-system"],
    ] {
        if can_i(&kubectl, &recorder, &q).await? {
            wrong.push(format!("recorder CAN {}", q.join(" ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC is not least privilege:\n  {}",
        wrong.join("\n  ")
    );
    Ok(())
}

#[tokio::test]
async fn e2e_helm_postgres_and_cert_manager_renders_pass_a_dry_run() -> Result<()> {
    let client = client().await?;
    let kubectl = Kubectl::from_env()?;
    for (values, prefix) in [
        (values_file("postgres-values.yaml"), "tollgate-helm-pg"),
        (values_file("cert-manager-values.yaml"), "tollgate-helm-cm"),
    ] {
        let ns = unique_name(prefix);
        ensure_namespace(&client, &ns).await?;
        let docs = render(&ns, std::slice::from_ref(&values), &[])?;
        // cert-manager's CRDs are not installed here: its objects are
        // checked by chart_cert_manager_mode_uses_cert_manager, everything
        // else goes to the API server. CRDs are applied by the other test.
        let (cert_manager, rest): (Vec<Value>, Vec<Value>) = docs
            .into_iter()
            .filter(|d| kind(d) != "CustomResourceDefinition")
            .partition(|d| {
                d["apiVersion"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("cert-manager.io/")
            });
        if values.contains("cert-manager") {
            ensure!(
                cert_manager.len() == 5,
                "{} cert-manager objects",
                cert_manager.len()
            );
        }
        let out = apply(&kubectl, &rest, true).await?;
        for d in &rest {
            assert!(
                out.contains(&format!("/{} serverside-applied (server dry run)", name(d))),
                "{values}: {} {} not accepted:\n{out}",
                kind(d),
                name(d)
            );
        }
    }
    Ok(())
}

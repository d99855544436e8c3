#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code
//! The three user stories on a real node (`e2e/cluster.sh up --with-node`: kubelet,
//! containerd, runc, CNI, kube-proxy, scheduler, controller-manager, CoreDNS), with
//! the images `make images` built:
//!
//! 1. `helm install` the chart: operators, the recorder with its volume, webhooks
//!    served by operator pods, the aggregated usage API; all Ready.
//! 2. A TLS upstream speaking the OpenAI and Anthropic wire formats on the node's
//!    address, with its `LLMProvider`s, `TrustAnchor` and key Secret.
//! 3. Policy, quota and a Deployment in a governed namespace: the sidecar is
//!    injected, init-network fences the pod, requests go through the gateway with
//!    the provider's key injected, direct connections and foreign DNS fail, the
//!    quota answers 429 and its status shows used and remaining; a revoked key
//!    among two is routed around once refused, and the provider's status
//!    names it (`status.keys`, `KeysHealthy`) from the gateways' reports.
//! 4. Faults: the operator leader pod deleted, the recorder pod deleted (receipts
//!    spooled and drained, counts match exactly), a hostNetwork pod rejected.
//! 5. Audit with nothing but the kubeconfig, after the faults so that it covers
//!    their receipts: usage (a namespace admin sees only their namespace), keys,
//!    bundle export, verify PASS while the apps run; `kubectl tollgate dashboard`
//!    as the namespace admin (usage, quota burn-down, checkpoint; other
//!    namespaces, missing secrets and foreign hosts refused).
//!
//! Only `e2e/run.sh` (its node stage) runs this file; without a node it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::objects::condition;
use tollgate_e2e::operator::cli_binary;
use tollgate_e2e::{Kubectl, eventually, repo_root};

const SYSTEM_NS: &str = "tollgate-system";
const APP_NS: &str = "node-app";
const FAULT_NS: &str = "node-faults";
const NODE_IP: &str = "198.18.0.1";
const CLUSTER_DNS: &str = "198.19.0.10";
const GATEWAY: &str = "http://127.0.0.1:15080";

/// The Bedrock model and the role the node's gateways assume for it.
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const BEDROCK_ROLE: &str = "arn:aws:iam::123456789012:role/tollgate-node-bedrock";
/// The workload identity pool provider and the service account the node's
/// gateways exchange their tokens for, for Vertex AI.
const GCP_POOL: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tollgate/providers/node";
const GCP_SERVICE_ACCOUNT: &str = "vertex-node@tollgate-node.iam.gserviceaccount.com";
/// The Entra ID tenant and application the node's gateways get Azure OpenAI
/// tokens for.
const ENTRA_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ENTRA_CLIENT_ID: &str = "5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b";

fn node_env() -> Result<()> {
    ensure!(
        std::env::var("TOLLGATE_E2E_NODE").as_deref() == Ok("1"),
        "this suite needs the node: run it with e2e/run.sh (its node stage starts \
         `e2e/cluster.sh up --with-node`)"
    );
    Ok(())
}

fn helm_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("TOLLGATE_HELM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .context("TOLLGATE_HELM is not set (e2e/run.sh sets it)")?;
    ensure!(
        bin.is_file(),
        "TOLLGATE_HELM={} does not exist",
        bin.display()
    );
    Ok(bin)
}

/// Runs a command to completion; its stdout, or an error with both streams.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl tollgate ARGS` with the e2e kubeconfig and nothing else.
/// `kubectl-tollgate` with nothing but PATH, a HOME and `kubeconfig`.
fn tollgate_command(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(cli_binary().expect("kubectl-tollgate is built"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null());
    cmd
}

fn tollgate(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    tollgate_command(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl-tollgate")
}

/// `kubectl tollgate dashboard` running as a child, and its URL's parts.
struct DashboardProxy {
    child: Child,
    /// Kept open: the proxy writes more lines after the URL.
    _stdout: BufReader<std::process::ChildStdout>,
    base: String,
    secret: String,
}

impl Drop for DashboardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DashboardProxy {
    fn start(kubeconfig: &Path, args: &[&str]) -> Result<Self> {
        let mut child = tollgate_command(kubeconfig)
            .arg("dashboard")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting kubectl tollgate dashboard")?;
        let stdout = child.stdout.take().context("dashboard stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        // tollgate dashboard: http://127.0.0.1:PORT/dashboard/#token=SECRET&namespace=NS
        let url = first
            .trim()
            .strip_prefix("tollgate dashboard: ")
            .with_context(|| format!("dashboard printed {first:?}"))?;
        let (page, fragment) = url.split_once("/dashboard/#token=").context("no token")?;
        let secret = fragment.split('&').next().unwrap_or_default().to_string();
        Ok(Self {
            child,
            _stdout: stdout,
            base: page.to_string(),
            secret,
        })
    }

    fn curl(&self, path: &str, headers: &[String]) -> Result<(u16, String)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-w", "\n%{http_code}"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        Ok((code.trim().parse()?, body.to_string()))
    }

    fn get(&self, path: &str, with_secret: bool) -> Result<(u16, String)> {
        let auth = format!("Authorization: Bearer {}", self.secret);
        self.curl(
            path,
            if with_secret {
                std::slice::from_ref(&auth)
            } else {
                &[]
            },
        )
    }

    fn get_with_host(&self, path: &str, host: &str) -> Result<(u16, String)> {
        self.curl(path, &[format!("Host: {host}")])
    }
}

fn kubeconfig() -> PathBuf {
    PathBuf::from(std::env::var_os("KUBECONFIG").expect("KUBECONFIG is set"))
}

/// A test CA and a leaf for the node's address, with openssl.
fn upstream_pki(dir: &Path) -> Result<()> {
    let sh = format!(
        r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
  -days 2 -subj /CN=tollgate-node-upstream-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr \
  -subj /CN={NODE_IP} 2>/dev/null
printf 'subjectAltName=IP:{NODE_IP}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
  -extfile leaf.ext -out leaf.crt 2>/dev/null
cat leaf.crt ca.crt > chain.crt"#
    );
    run(Command::new("bash").arg("-c").arg(sh).current_dir(dir))?;
    Ok(())
}

/// The project's mock provider (OpenAI and Anthropic wire formats over TLS), on
/// the node's bridge address so that pods can reach it.
struct Upstream {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Upstream {
    fn start(dir: &Path) -> Result<Self> {
        let log = dir.join("upstream.jsonl");
        let mut child = Command::new("python3")
            .arg(repo_root().join("gateway/tests/sdk/mock_upstream.py"))
            .arg("--cert")
            .arg(dir.join("chain.crt"))
            .arg("--key")
            .arg(dir.join("leaf.key"))
            .arg("--log")
            .arg(&log)
            .args(["--bind", NODE_IP, "--tag", "node"])
            // STS for Bedrock web identity: any ServiceAccount token the
            // kubelet issued for audience tollgate.dev/aws, for this role.
            .args([
                "--sts-audience",
                "tollgate.dev/aws",
                "--sts-role",
                BEDROCK_ROLE,
            ])
            // Google STS and IAM for Vertex AI workload identity: any token
            // the kubelet issued for audience tollgate.dev/gcp.
            .args([
                "--gcp-audience",
                "tollgate.dev/gcp",
                "--gcp-pool",
                GCP_POOL,
                "--gcp-service-account",
                GCP_SERVICE_ACCOUNT,
            ])
            // Entra ID for Azure OpenAI workload identity: any token the
            // kubelet issued for audience tollgate.dev/azure.
            .args([
                "--entra-audience",
                "tollgate.dev/azure",
                "--entra-tenant",
                ENTRA_TENANT,
                "--entra-client-id",
                ENTRA_CLIENT_ID,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the mock upstream")?;
        let stdout = child.stdout.take().context("mock stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("mock upstream did not start: {line:?}"))?;
        Ok(Self { child, port, log })
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Runs a command in the app container of `deploy/app` (stdin closed).
async fn in_app(
    k: &Kubectl,
    ns: &str,
    command: &[&str],
) -> Result<tollgate_e2e::kubectl::KubectlOutput> {
    let mut args = vec!["exec", "-n", ns, "deploy/app", "-c", "app", "--"];
    args.extend_from_slice(command);
    k.output(&args, None).await
}

/// One POST from inside the app container, through the sidecar: (HTTP status, body).
async fn app_post(k: &Kubectl, ns: &str, path: &str, body: &Value) -> Result<(u16, String)> {
    // busybox wget (Debian's static build crashes with -T or -O -): -S prints the
    // status line to stderr, the body goes to a file that is printed afterwards,
    // also for error statuses (429, 403).
    let body = body.to_string();
    let url = format!("{GATEWAY}{path}");
    let script = "rm -f /tmp/resp; wget -S -q -O /tmp/resp --header 'Content-Type: application/json' \
                  --header 'anthropic-version: 2023-06-01' --post-data \"$1\" \"$2\"; \
                  rc=$?; cat /tmp/resp 2>/dev/null; exit $rc";
    let out = in_app(k, ns, &["sh", "-c", script, "sh", &body, &url]).await?;
    let status = out
        .stderr
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|s| s.parse::<u16>().ok())
        })
        .with_context(|| {
            format!(
                "no HTTP status from wget in the app container: {}",
                out.stderr
            )
        })?;
    Ok((status, out.stdout))
}

/// Sends `body` to `path` from the app container, through its gateway: any
/// answer but a 200 with the mock's completion fails, showing what the
/// upstream saw and the gateway's log.
async fn through_gateway(
    k: &Kubectl,
    upstream: &Upstream,
    what: &str,
    path: &str,
    body: &Value,
) -> Result<()> {
    let (status, answer) = app_post(k, APP_NS, path, body).await?;
    if status != 200 || !answer.contains("MOCKCOMPLETION") {
        let logs = k
            .run(&["logs", "-n", APP_NS, "deploy/app", "-c", "tollgate-gateway"])
            .await
            .unwrap_or_default();
        bail!(
            "{what} through the gateway: {status} {answer}\nupstream saw: {:?}\ngateway log:\n{logs}",
            upstream.records()
        );
    }
    Ok(())
}

/// The token exchange (`kind`: the mock's record of it) that accepted the
/// app pod's own ServiceAccount token, issued by the kubelet for
/// `audience`.
fn app_pod_exchange<'s>(seen: &'s [Value], kind: &str, audience: &str) -> Result<&'s Value> {
    let exchange = seen
        .iter()
        .map(|r| &r[kind])
        .find(|e| e["token_ok"] == true)
        .with_context(|| format!("no {kind} exchange with a projected token: {seen:?}"))?;
    let subject = exchange["subject"].as_str().unwrap_or_default();
    ensure!(
        subject.starts_with(&format!("system:serviceaccount:{APP_NS}:"))
            && exchange["token_audience"] == json!([audience]),
        "the {kind} token is not the app pod's, for {audience}: {exchange}"
    );
    Ok(exchange)
}

fn chat(model: &str, marker: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": format!("hello {marker}")}]})
}

async fn apply(k: &Kubectl, docs: &[Value]) -> Result<()> {
    let stream: String = docs.iter().map(|d| format!("---\n{d}\n")).collect();
    k.run_with_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &stream,
    )
    .await?;
    Ok(())
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": "tollgate-e2e/app:1",
                        "imagePullPolicy": "Never",
                        "securityContext": {"runAsUser": 1000, "runAsNonRoot": true,
                                            "allowPrivilegeEscalation": false},
                    }],
                },
            },
        },
    })
}

/// Applies the app Deployment in `ns` and waits until its pod is Ready; the
/// time it took. `gateway_threads` asks for that many gateway request threads
/// through the pod annotation.
async fn run_app(k: &Kubectl, ns: &str, gateway_threads: Option<u16>) -> Result<Duration> {
    let t0 = Instant::now();
    let mut d = deployment("app");
    d["metadata"]["namespace"] = json!(ns);
    if let Some(n) = gateway_threads {
        d["spec"]["template"]["metadata"]["annotations"] =
            json!({"tollgate.dev/gateway-worker-threads": n.to_string()});
    }
    apply(k, &[d]).await?;
    k.run(&[
        "rollout",
        "status",
        "-n",
        ns,
        "deploy/app",
        "--timeout=180s",
    ])
    .await
    .context("the governed Deployment did not become Ready")?;
    Ok(t0.elapsed())
}

/// The request threads the gateway of the app pod in `ns` runs, from the
/// runtime's own count in its `listening` log line.
async fn gateway_threads(k: &Kubectl, ns: &str) -> Result<u64> {
    let pod = pod_json(k, ns).await?;
    let name = pod["metadata"]["name"].as_str().context("pod name")?;
    let log = k
        .run(&["logs", "-n", ns, name, "-c", "tollgate-gateway"])
        .await?;
    log.lines()
        .filter(|l| l.starts_with("tollgate-gateway: listening "))
        .find_map(|l| l.split(' ').find_map(|f| f.strip_prefix("threads=")))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no listening line with threads= in the gateway log:\n{log}"))
}

async fn pod_json(k: &Kubectl, ns: &str) -> Result<Value> {
    let list: Value = serde_json::from_str(
        &k.run(&["get", "pods", "-n", ns, "-l", "app=app", "-o", "json"])
            .await?,
    )?;
    list["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        })
        .cloned()
        .context("no app pod")
}

fn usage_total(report: &Value) -> u64 {
    report["total"]["requests"].as_u64().unwrap_or(0)
}

fn usage_json(kubeconfig: &Path, args: &[&str]) -> Result<Value> {
    let mut all = vec!["usage", "-o", "json", "--since", "2h"];
    all.extend_from_slice(args);
    let out = tollgate(kubeconfig, &all);
    ensure!(
        out.status.success(),
        "kubectl tollgate usage failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn namespace_requests(report: &Value, ns: &str) -> u64 {
    report["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["namespace"] == ns)
                .map(|r| r["requests"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Resident memory of every host process whose command name is `name`, in KiB.
fn rss_kib(name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if status.lines().next() == Some(&format!("Name:\t{}", &name[..name.len().min(15)]))
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        {
            out.push(kib);
        }
    }
    out
}

#[tokio::test]
async fn node_user_stories_install_govern_audit_and_survive_faults() -> Result<()> {
    node_env()?;
    let k = Kubectl::from_env()?;
    let kubeconfig = kubeconfig();
    let work = std::env::temp_dir().join(unique_name("tg-node"));
    std::fs::create_dir_all(&work)?;
    let mut timings: Vec<(String, Duration)> = Vec::new();

    // ---- 1. helm install on the node --------------------------------------
    let pv_dir = repo_root().join("e2e/.state/pv-recorder");
    let _ = std::fs::remove_dir_all(&pv_dir);
    std::fs::create_dir_all(&pv_dir)?;
    run(Command::new("chown").arg("65532:65532").arg(&pv_dir))?;
    apply(
        &k,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NS,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"}}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "tollgate-e2e-recorder"},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "storageClassName": "tollgate-e2e-local",
                         "persistentVolumeReclaimPolicy": "Retain",
                         "hostPath": {"path": pv_dir.display().to_string(), "type": "Directory"}}}),
        ],
    )
    .await?;
    let t0 = Instant::now();
    run(Command::new(helm_bin()?)
        .args(["install", "tollgate"])
        .arg(repo_root().join("charts/tollgate"))
        .args(["-n", SYSTEM_NS, "--create-namespace", "-f"])
        .arg(repo_root().join("e2e/node-values.yaml"))
        .args(["--wait", "--timeout", "6m"])
        .env("KUBECONFIG", &kubeconfig))
    .context("helm install on the node")?;
    timings.push(("helm install to Ready".into(), t0.elapsed()));
    k.run(&[
        "wait",
        "--for=condition=Available",
        "apiservice/v1alpha1.usage.tollgate.dev",
        "--timeout=120s",
    ])
    .await
    .context("the aggregated usage API did not become Available")?;
    timings.push(("install to APIService Available".into(), t0.elapsed()));
    eprintln!(
        "node: $ kubectl -n {SYSTEM_NS} get pods\n{}",
        k.run(&["get", "pods", "-n", SYSTEM_NS]).await?
    );
    eprintln!(
        "node: $ kubectl get apiservice v1alpha1.usage.tollgate.dev\n{}",
        k.run(&["get", "apiservice", "v1alpha1.usage.tollgate.dev"])
            .await?
    );
    let ready = k
        .run(&["get", "pods", "-n", SYSTEM_NS, "-o",
               "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[*].ready}{\"\\n\"}{end}"])
        .await?;
    ensure!(
        ready
            .lines()
            .filter(|l| l.starts_with("tollgate-operator-"))
            .count()
            == 2
            && ready.lines().any(|l| l.starts_with("tollgate-recorder-0="))
            && ready.lines().all(|l| l.ends_with("=true")),
        "control plane pods not all ready:\n{ready}"
    );
    // The receipt CA the operator publishes reaches the recorder with no hand-over.
    eventually(Duration::from_secs(60), || async {
        k.run(&["get", "trustanchor", "tollgate-receipt-ca"])
            .await
            .map(|_| ())
    })
    .await?;

    // ---- 2. the upstream and its provider objects ---------------------------
    upstream_pki(&work)?;
    let upstream = Upstream::start(&work)?;
    let key = format!("sk-node-INJECTED-{}", unique_name("k"));
    let ca_pem = std::fs::read_to_string(work.join("ca.crt"))?;
    let base_url = format!("https://{NODE_IP}:{}", upstream.port);
    let pricing = json!({"inputPerMillionMicroUSD": 150000, "outputPerMillionMicroUSD": 600000});
    apply(
        &k,
        &[
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "node-provider-keys", "namespace": SYSTEM_NS},
                   "stringData": {"key-a": key, "key-revoked": format!("sk-node-REVOKED-{}", unique_name("k"))}}),
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "TrustAnchor",
                   "metadata": {"name": "node-upstream-ca"},
                   "spec": {"upstream": [{"host": NODE_IP, "caBundle": ca_pem}]}}),
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-openai"},
                   "spec": {"api": "openai", "baseURL": base_url, "hosts": [NODE_IP],
                            "credentialsRef": {"secretName": "node-provider-keys", "keys": ["key-a"]},
                            "models": [{"name": "gpt-4o-mini", "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
            // Two keys, one of them revoked (the mock answers 401 to it).
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-keys"},
                   "spec": {"api": "openai", "baseURL": base_url, "hosts": [NODE_IP],
                            "credentialsRef": {"secretName": "node-provider-keys", "keys": ["key-a", "key-revoked"]},
                            "models": [{"name": "gpt-4o-keys", "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
            // No key at all: each gateway trades its pod's projected token.
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-bedrock"},
                   "spec": {"api": "bedrock", "baseURL": base_url, "hosts": [NODE_IP],
                            "aws": {"region": "us-east-1",
                                    "webIdentity": {"roleArn": BEDROCK_ROLE, "stsURL": format!("{base_url}/")}},
                            "models": [{"name": BEDROCK_MODEL, "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-vertex"},
                   "spec": {"api": "vertex", "baseURL": base_url, "hosts": [NODE_IP],
                            "gcp": {"project": "tollgate-node", "location": "us-central1",
                                    "workloadIdentity": {"audience": GCP_POOL,
                                                         "serviceAccount": GCP_SERVICE_ACCOUNT,
                                                         "stsURL": format!("{base_url}/v1/token"),
                                                         "iamCredentialsURL": base_url}},
                            "models": [{"name": "gemini-2.5-flash", "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-azure"},
                   "spec": {"api": "azureOpenai", "baseURL": base_url, "hosts": [NODE_IP],
                            "azure": {"apiVersion": "2024-10-21",
                                      "workloadIdentity": {"tenantID": ENTRA_TENANT,
                                                           "clientID": ENTRA_CLIENT_ID,
                                                           "authorityHost": base_url}},
                            "models": [{"name": "gpt-4o-node", "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "node-anthropic"},
                   "spec": {"api": "anthropic", "baseURL": base_url, "hosts": [NODE_IP],
                            "credentialsRef": {"secretName": "node-provider-keys", "keys": ["key-a"]},
                            "models": [{"name": "claude-haiku-4-5", "pricing": pricing}],
                            "tls": {"trustAnchorRef": "node-upstream-ca"}}}),
        ],
    )
    .await?;

    // ---- 3. a governed namespace: policy, quota, a Deployment --------------
    let policy = |ns: &str| {
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "EgressPolicy",
               "metadata": {"name": "default", "namespace": ns},
               "spec": {"mode": "enforce", "failMode": "closed",
                        "allow": [{"providerRef": "node-openai", "models": ["gpt-4o-mini"]},
                                  {"providerRef": "node-anthropic", "models": ["claude-*"]},
                                  {"providerRef": "node-bedrock", "models": ["anthropic.*"]},
                                  {"providerRef": "node-vertex", "models": ["gemini-*"]},
                                  {"providerRef": "node-azure", "models": ["gpt-4o-node"]},
                                  {"providerRef": "node-keys", "models": ["gpt-4o-keys"]}]}})
    };
    const QUOTA_REQUESTS: u64 = 20;
    for ns in [APP_NS, FAULT_NS] {
        apply(
            &k,
            &[json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"tollgate.dev/inject": "enabled"}}})],
        )
        .await?;
        apply(&k, &[policy(ns)]).await?;
    }
    apply(
        &k,
        &[
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "EgressQuota",
                 "metadata": {"name": "requests", "namespace": APP_NS},
                 // A day in India (UTC+05:30): the sidecar, the recorder and the
                 // operator all resolve the zone from their own bundled database.
                 "spec": {"limits": [{"name": "daily", "window": "day", "timeZone": "Asia/Kolkata",
                                      "requests": QUOTA_REQUESTS}],
                          "enforcement": "enforce", "failMode": "closed"}}),
        ],
    )
    .await?;
    let pod_ready = run_app(&k, APP_NS, None).await?;
    timings.push(("governed pod apply to Ready".into(), pod_ready));
    let threads = gateway_threads(&k, APP_NS).await?;
    ensure!(
        threads == 1,
        "the gateway runs {threads} request threads by default, not 1"
    );
    let pod = pod_json(&k, APP_NS).await?;
    eprintln!(
        "node: $ kubectl -n {APP_NS} get pods\n{}",
        k.run(&["get", "pods", "-n", APP_NS]).await?
    );
    let init = &pod["status"]["initContainerStatuses"];
    ensure!(
        init.as_array()
            .is_some_and(|s| s.iter().any(|c| c["name"] == "tollgate-init-network"
                && c["state"]["terminated"]["exitCode"] == 0)),
        "init-network did not run to completion in the pod: {init}"
    );
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["containers"].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"tollgate-gateway"),
        "no gateway sidecar: {names:?}"
    );

    let mut sent_app = 0u64;
    // A request through the gateway, the provider's key injected upstream.
    let marker = unique_name("m");
    let (status, body) = app_post(
        &k,
        APP_NS,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", &marker),
    )
    .await?;
    sent_app += 1;
    ensure!(
        status == 200 && body.contains("MOCKCOMPLETION"),
        "chat through the gateway: {status} {body}"
    );
    let (status, body) = app_post(
        &k,
        APP_NS,
        "/v1/messages",
        &json!({"model": "claude-haiku-4-5", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await?;
    sent_app += 1;
    ensure!(
        status == 200 && body.contains("MOCKCOMPLETION"),
        "messages through the gateway: {status} {body}"
    );
    // Bedrock with no stored key: the gateway traded the pod's kubelet-issued
    // token with STS and signed with the temporary credentials.
    let converse =
        json!({"messages": [{"role": "user", "content": [{"text": format!("hi {marker}")}]}]});
    let bedrock_path = format!("/model/{}/converse", BEDROCK_MODEL.replace(':', "%3A"));
    through_gateway(&k, &upstream, "Bedrock converse", &bedrock_path, &converse).await?;
    sent_app += 1;
    let seen = upstream.records();
    let exchange = app_pod_exchange(&seen, "sts", "tollgate.dev/aws")?;
    let issued = exchange["issued"].as_str().unwrap_or_default();
    ensure!(
        seen.iter().any(|r| r["sigv4"] == "valid"
            && r["headers"]["authorization"]
                .as_str()
                .is_some_and(|a| a.contains(&format!("Credential={issued}/")))),
        "no Bedrock request signed with the temporary credentials: {seen:?}"
    );
    // Vertex AI with no stored key: the gateway exchanged the pod's
    // kubelet-issued token with Google's STS, impersonated the service
    // account with IAM, and sent that account's token.
    let generate =
        json!({"contents": [{"role": "user", "parts": [{"text": format!("hi {marker}")}]}]});
    let vertex_path = "/v1/projects/app-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent";
    through_gateway(
        &k,
        &upstream,
        "Vertex AI generateContent",
        vertex_path,
        &generate,
    )
    .await?;
    sent_app += 1;
    let seen = upstream.records();
    app_pod_exchange(&seen, "gcp_sts", "tollgate.dev/gcp")?;
    ensure!(
        seen.iter()
            .any(|r| r["gcp_iam"]["account"] == GCP_SERVICE_ACCOUNT
                && r["gcp_iam"]["issued"].is_string()),
        "IAM issued no token for the service account: {seen:?}"
    );
    ensure!(
        seen.iter()
            .any(|r| r["vertex"]["auth"] == "issued-token"
                && r["vertex"]["project"] == "tollgate-node"),
        "no Vertex AI request with the issued token, at the provider's project: {seen:?}"
    );
    // Azure OpenAI with no stored key: the gateway presented the pod's
    // kubelet-issued token to Entra ID and sent the access token it got.
    let azure_path = "/openai/deployments/gpt-4o-node/chat/completions?api-version=2024-10-21";
    let azure_chat = chat("gpt-4o-node", &marker);
    through_gateway(&k, &upstream, "Azure OpenAI chat", azure_path, &azure_chat).await?;
    sent_app += 1;
    let seen = upstream.records();
    app_pod_exchange(&seen, "entra", "tollgate.dev/azure")?;
    ensure!(
        seen.iter().any(|r| r["azure"]["auth"] == "entra-token"),
        "no Azure OpenAI request with the Entra ID token: {seen:?}"
    );
    // Key health: requests spread over two keys by their bodies until one
    // meets the revoked key's 401; from then on the gateway routes around it.
    let mut met_refusal = false;
    for i in 0..8 {
        let (status, body) = app_post(
            &k,
            APP_NS,
            "/v1/chat/completions",
            &chat("gpt-4o-keys", &format!("key{i}")),
        )
        .await?;
        sent_app += 1;
        match status {
            200 => {}
            401 => {
                met_refusal = true;
                break;
            }
            other => bail!("key health request {i}: {other} {body}"),
        }
    }
    ensure!(met_refusal, "8 requests never met the revoked key");
    for i in 0..2 {
        let (status, body) = app_post(
            &k,
            APP_NS,
            "/v1/chat/completions",
            &chat("gpt-4o-keys", &format!("after{i}")),
        )
        .await?;
        sent_app += 1;
        ensure!(
            status == 200,
            "a request after the refusal was not routed around the revoked key: {status} {body}"
        );
    }
    let seen = upstream.records();
    ensure!(
        seen.iter()
            .any(|r| r["headers"]["authorization"] == format!("Bearer {key}")),
        "the upstream never saw the provider's key as a bearer token: {seen:?}"
    );
    ensure!(
        seen.iter()
            .any(|r| r["headers"]["x-api-key"] == key.as_str()),
        "the Anthropic upstream never saw the provider's key: {seen:?}"
    );
    let env = k
        .run(&["exec", "-n", APP_NS, "deploy/app", "-c", "app", "--", "env"])
        .await?;
    ensure!(
        !env.contains(&key),
        "the app container can see the provider key"
    );
    ensure!(
        env.contains("OPENAI_BASE_URL="),
        "injected base URLs missing: {env}"
    );
    // A model the policy does not allow.
    let (status, _) = app_post(&k, APP_NS, "/v1/chat/completions", &chat("gpt-5", &marker)).await?;
    sent_app += 1;
    ensure!(
        status == 403,
        "a model outside the policy answered {status}"
    );

    // A direct connection from the app container to the upstream fails...
    let before = upstream.records().len();
    let direct = in_app(
        &k,
        APP_NS,
        &["nc", "-w", "5", NODE_IP, &upstream.port.to_string()],
    )
    .await?;
    ensure!(
        !direct.status.success(),
        "a direct TCP connection to the upstream succeeded"
    );
    let direct_wget = in_app(
        &k,
        APP_NS,
        &[
            "wget",
            "-q",
            "-O",
            "/tmp/direct",
            &format!("{base_url}/v1/models"),
        ],
    )
    .await?;
    ensure!(
        !direct_wget.status.success(),
        "a direct HTTPS request to the upstream succeeded"
    );
    ensure!(
        direct_wget.stderr.contains("refused") || direct_wget.stderr.contains("reset"),
        "the direct connection was not reset by the pod's rules: {}",
        direct_wget.stderr
    );
    ensure!(
        upstream.records().len() == before,
        "the upstream saw a direct request"
    );
    // ... DNS goes to the cluster's resolver only ...
    let dns_ok = in_app(
        &k,
        APP_NS,
        &[
            "nslookup",
            "kubernetes.default.svc.cluster.local",
            CLUSTER_DNS,
        ],
    )
    .await?;
    ensure!(
        dns_ok.status.success(),
        "cluster DNS from the app failed: {}{}",
        dns_ok.stdout,
        dns_ok.stderr
    );
    // The node's address runs the very CoreDNS behind the cluster DNS Service:
    // only the pod's rules can make it fail.
    let dns_other = NODE_IP;
    let dns_bad = in_app(
        &k,
        APP_NS,
        &[
            "nslookup",
            "kubernetes.default.svc.cluster.local",
            dns_other,
        ],
    )
    .await?;
    ensure!(
        !dns_bad.status.success(),
        "DNS to {dns_other}, not the cluster's resolver, answered: {}",
        dns_bad.stdout
    );
    // ... and the quota answers 429 once spent.
    let mut allowed = 0u64;
    let mut refused = false;
    for i in 0..(QUOTA_REQUESTS + 4) {
        let (status, body) = app_post(
            &k,
            APP_NS,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", &format!("q{i}")),
        )
        .await?;
        sent_app += 1;
        match status {
            200 => allowed += 1,
            429 => {
                refused = true;
                break;
            }
            other => bail!("quota request {i}: {other} {body}"),
        }
    }
    ensure!(
        refused,
        "the quota of {QUOTA_REQUESTS} requests never answered 429"
    );
    // Allowed before (chat, messages, Bedrock, Vertex AI, Azure OpenAI)
    // and the 403 are counted as requests too: the quota is spent by then
    // or within a request.
    eprintln!("node: quota allowed {allowed} more requests before 429");
    let status = eventually(Duration::from_secs(60), || async {
        let q: Value = serde_json::from_str(
            &k.run(&["get", "egressquota", "-n", APP_NS, "requests", "-o", "json"])
                .await?,
        )?;
        let limit = &q["status"]["limits"][0];
        ensure!(
            limit["remaining"]["requests"] == 0,
            "status not caught up: {}",
            q["status"]
        );
        ensure!(
            limit["used"]["requests"].as_u64() >= Some(QUOTA_REQUESTS),
            "used: {limit}"
        );
        ensure!(
            limit["usedPercent"].as_u64() >= Some(100),
            "usedPercent: {limit}"
        );
        // Kolkata's midnight is 18:30 UTC.
        ensure!(
            limit["resetAt"]
                .as_str()
                .is_some_and(|t| t.ends_with("T18:30:00Z")),
            "resetAt is not midnight in Asia/Kolkata: {limit}"
        );
        // The budget alert: the condition, and a Warning Event for it.
        let near = condition(&q, "NearLimit");
        ensure!(
            near["status"] == "True" && near["reason"] == "Exhausted",
            "NearLimit: {near}"
        );
        let events: Value = serde_json::from_str(
            &k.run(&["get", "events.events.k8s.io", "-n", APP_NS, "-o", "json"])
                .await?,
        )?;
        ensure!(
            events["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|e| {
                    e["reason"] == "Exhausted"
                        && e["type"] == "Warning"
                        && e["regarding"]["kind"] == "EgressQuota"
                        && e["regarding"]["name"] == "requests"
                })),
            "no Warning Event Exhausted for the quota: {events}"
        );
        Ok(limit.clone())
    })
    .await?;
    eprintln!("node: quota status {status}");
    // The gateway reported the refusal to the recorder; the operator shows it
    // in the provider's status, by the key's name, never its value.
    let keys = eventually(Duration::from_secs(120), || async {
        let p: Value = serde_json::from_str(
            &k.run(&["get", "llmprovider", "node-keys", "-o", "json"])
                .await?,
        )?;
        let keys = &p["status"]["keys"];
        ensure!(
            keys[0]["name"] == "key-a"
                && keys[0]["state"] == "Healthy"
                && keys[0]["gateways"].as_u64() >= Some(1),
            "key-a: {}",
            p["status"]
        );
        ensure!(
            keys[1]["name"] == "key-revoked"
                && keys[1]["state"] == "Refused"
                && keys[1]["refusedBy"] == 1
                && keys[1]["lastStatus"] == 401
                && keys[1]["refusedSince"].is_string(),
            "key-revoked: {}",
            p["status"]
        );
        let condition = condition(&p, "KeysHealthy");
        ensure!(
            condition["status"] == "False" && condition["reason"] == "KeyRefused",
            "KeysHealthy: {condition}"
        );
        ensure!(
            !p.to_string().contains("sk-node-"),
            "a key value in the status: {p}"
        );
        Ok(keys.clone())
    })
    .await?;
    eprintln!("node: provider keys {keys}");

    // ---- 4a. faults: the operator leader pod ---------------------------------
    let leader = k
        .run(&[
            "get",
            "lease",
            "-n",
            SYSTEM_NS,
            "tollgate-operator-leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await?;
    ensure!(
        leader.starts_with("tollgate-operator-"),
        "leader: {leader:?}"
    );
    k.run(&[
        "delete",
        "pod",
        "-n",
        SYSTEM_NS,
        leader.trim(),
        "--wait=false",
    ])
    .await?;
    // Pods keep being admitted (and injected) and rejected while it is gone.
    let fault_ready = run_app(&k, FAULT_NS, Some(2)).await?;
    timings.push(("pod to Ready, leader deleted".into(), fault_ready));
    // This pod asked for two request threads by annotation; its gateway has them.
    let threads = gateway_threads(&k, FAULT_NS).await?;
    ensure!(
        threads == 2,
        "the annotated pod's gateway runs {threads} request threads, not 2"
    );
    eprintln!("node: gateway request threads: {threads} in {FAULT_NS} (annotated), 1 in {APP_NS}");
    let host_net = k
        .output(
            &["apply", "-n", FAULT_NS, "-f", "-"],
            Some(
                &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky"},
                        "spec": {"hostNetwork": true,
                                 "containers": [{"name": "c", "image": "tollgate-e2e/app:1",
                                                 "imagePullPolicy": "Never"}]}})
                .to_string(),
            ),
        )
        .await?;
    ensure!(
        !host_net.status.success() && host_net.stderr.contains("host-network"),
        "a hostNetwork pod in a governed namespace was not rejected by rule host-network: {}",
        host_net.stderr
    );
    let (status, _) = app_post(&k, APP_NS, "/v1/messages",
        &json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})).await?;
    sent_app += 1;
    ensure!(
        status == 429 || status == 200,
        "the gateway stopped serving without the leader: {status}"
    );

    // ---- 4b. faults: the recorder pod ----------------------------------------
    let mut sent_fault = 0u64;
    for i in 0..3 {
        let (status, _) = app_post(
            &k,
            FAULT_NS,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", &format!("f{i}")),
        )
        .await?;
        sent_fault += 1;
        ensure!(status == 200, "fault namespace request {i}: {status}");
    }
    eventually(Duration::from_secs(60), || async {
        let report = usage_json(&kubeconfig, &["-n", FAULT_NS])?;
        ensure!(
            usage_total(&report) == sent_fault,
            "recorder has {} of {sent_fault}",
            usage_total(&report)
        );
        Ok(())
    })
    .await?;
    k.run(&[
        "delete",
        "pod",
        "-n",
        SYSTEM_NS,
        "tollgate-recorder-0",
        "--wait=true",
        "--timeout=60s",
    ])
    .await?;
    for i in 0..4 {
        let (status, _) = app_post(
            &k,
            FAULT_NS,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", &format!("g{i}")),
        )
        .await?;
        sent_fault += 1;
        ensure!(
            status == 200,
            "request {i} while the recorder is away: {status}"
        );
    }
    k.run(&[
        "rollout",
        "status",
        "-n",
        SYSTEM_NS,
        "statefulset/tollgate-recorder",
        "--timeout=180s",
    ])
    .await?;
    eventually(Duration::from_secs(120), || async {
        let report = usage_json(&kubeconfig, &["-n", FAULT_NS])?;
        ensure!(
            usage_total(&report) == sent_fault,
            "after the recorder restart it has {} receipts of {sent_fault}",
            usage_total(&report)
        );
        Ok(())
    })
    .await?;

    // ---- 5. audit with nothing but the kubeconfig ----------------------------
    let all = eventually(Duration::from_secs(60), || async {
        let report = usage_json(
            &kubeconfig,
            &["-A", "--by", "namespace,serviceAccount,model"],
        )?;
        ensure!(
            namespace_requests(&report, APP_NS) == sent_app,
            "usage shows {} requests for {APP_NS}, sent {sent_app}: {report}",
            namespace_requests(&report, APP_NS)
        );
        Ok(report)
    })
    .await?;
    ensure!(namespace_requests(&all, FAULT_NS) == sent_fault, "{all}");
    eprintln!("node: usage -A {}", all["rows"]);
    // A namespace admin sees their namespace only, and may not export bundles.
    k.run(&[
        "create",
        "rolebinding",
        "alice-admin",
        "-n",
        APP_NS,
        "--clusterrole=admin",
        "--user=alice",
    ])
    .await?;
    let mut as_alice: Value = serde_saphyr::from_str(&std::fs::read_to_string(&kubeconfig)?)?;
    as_alice["users"][0]["user"]["as"] = json!("alice");
    let alice_config = work.join("alice.kubeconfig");
    std::fs::write(&alice_config, serde_json::to_string(&as_alice)?)?;
    let alice = eventually(Duration::from_secs(30), || async {
        let report = usage_json(&alice_config, &["-n", APP_NS, "--by", "namespace"])?;
        ensure!(
            namespace_requests(&report, APP_NS) == sent_app,
            "alice: {report}"
        );
        Ok(report)
    })
    .await?;
    eprintln!("node: alice's usage of {APP_NS}: {}", alice["total"]);
    for args in [vec!["usage", "-n", FAULT_NS], vec!["usage", "-A"]] {
        let denied = tollgate(&alice_config, &args);
        let stderr = String::from_utf8_lossy(&denied.stderr);
        ensure!(
            !denied.status.success() && stderr.contains("forbidden"),
            "alice ran {args:?}: {stderr}"
        );
        eprintln!("node: alice {args:?}: {stderr}");
    }
    let denied = tollgate(&alice_config, &["bundle", "export", "-o", "/dev/null"]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    ensure!(
        !denied.status.success() && stderr.contains("forbidden"),
        "alice exported a bundle, or failed for another reason: {stderr}"
    );

    let keys = work.join("keys.yaml");
    let bundle = work.join("bundle.json");
    for args in [
        vec!["keys", "-o", keys.to_str().unwrap()],
        vec!["bundle", "export", "-o", bundle.to_str().unwrap()],
    ] {
        let out = tollgate(&kubeconfig, &args);
        ensure!(
            out.status.success(),
            "kubectl tollgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verify = tollgate(
        &kubeconfig,
        &[
            "verify",
            bundle.to_str().unwrap(),
            "--trust-anchor",
            keys.to_str().unwrap(),
        ],
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    eprintln!("node: verify\n{report}");
    ensure!(
        verify.status.success() && report.contains("Verdict: PASS"),
        "verify: {report}"
    );
    // Nothing the app sent is in the evidence.
    let exported = std::fs::read_to_string(&bundle)?;
    ensure!(
        !exported.contains(&marker) && !exported.contains(&key),
        "content or key in the bundle"
    );

    // ---- 5b. the dashboard, as the namespace admin ---------------------------
    let dashboard = DashboardProxy::start(&alice_config, &["-n", APP_NS])?;
    let (status, body) = dashboard.get(
        "/dashboard/api/usage?since=2h&group_by=namespace&namespace=node-app",
        true,
    )?;
    ensure!(status == 200, "dashboard usage: {status} {body}");
    let report: Value = serde_json::from_str(&body)?;
    ensure!(
        namespace_requests(&report, APP_NS) == sent_app,
        "the dashboard shows {} requests for {APP_NS}, sent {sent_app}: {report}",
        namespace_requests(&report, APP_NS)
    );
    let (status, body) = dashboard.get("/dashboard/api/quotas?namespace=node-app", true)?;
    ensure!(status == 200, "dashboard quotas: {status} {body}");
    let quotas: Value = serde_json::from_str(&body)?;
    let burn_down = &quotas["quotas"][0];
    // The burn-down is the status the operator wrote on the object.
    let object: Value = serde_json::from_str(
        &k.run(&["get", "egressquota", "requests", "-n", APP_NS, "-o", "json"])
            .await?,
    )?;
    ensure!(
        burn_down["name"] == "requests"
            && burn_down["limits"][0]["spec"]["requests"] == QUOTA_REQUESTS
            && burn_down["limits"][0]["status"]["used"]["requests"]
                .as_u64()
                .is_some()
            && burn_down["limits"][0]["status"] == object["status"]["limits"][0],
        "dashboard quota burn-down: {quotas}, the object's status: {}",
        object["status"]
    );
    let (status, body) = dashboard.get("/dashboard/api/checkpoint", true)?;
    let checkpoint: Value = serde_json::from_str(&body)?;
    ensure!(
        status == 200
            && checkpoint["checkpoint"]["signature_verified"] == true
            && checkpoint["checkpoint"]["size"].as_u64() >= Some(sent_app),
        "dashboard checkpoint: {status} {checkpoint}"
    );
    let (status, page) = dashboard.get("/dashboard/", false)?;
    ensure!(
        status == 200 && page.contains("uPlot.iife.min.js"),
        "dashboard page: {status}"
    );
    for (path, with_secret, want) in [
        ("/dashboard/api/usage?namespace=node-faults", true, 403),
        ("/dashboard/api/usage", false, 401),
        ("/dashboard/api/quotas", false, 401),
    ] {
        let (status, body) = dashboard.get(path, with_secret)?;
        ensure!(status == want, "{path}: {status} {body}, want {want}");
    }
    let (status, _) = dashboard.get_with_host("/dashboard/", "rebound.example:80")?;
    ensure!(status == 403, "a foreign Host got {status}");
    // An auditor's dashboard shows every namespace.
    let everything = DashboardProxy::start(&kubeconfig, &["-A"])?;
    let (status, body) =
        everything.get("/dashboard/api/usage?since=2h&group_by=namespace", true)?;
    let report: Value = serde_json::from_str(&body)?;
    ensure!(
        status == 200 && namespace_requests(&report, FAULT_NS) == sent_fault,
        "dashboard -A: {status} {report}"
    );
    eprintln!("node: dashboard as alice and as the admin: usage, quota and checkpoint match");
    drop((dashboard, everything));

    // ---- measurements for the record -----------------------------------------
    for (name, d) in &timings {
        eprintln!("node: {name}: {:.1}s", d.as_secs_f64());
    }
    for bin in ["tollgate-gateway", "tollgate-operator", "tollgate-recorder"] {
        eprintln!("node: RSS of {bin} (KiB, per process): {:?}", rss_kib(bin));
    }

    drop(upstream);
    run(Command::new(helm_bin()?)
        .args([
            "uninstall",
            "tollgate",
            "-n",
            SYSTEM_NS,
            "--wait",
            "--timeout",
            "2m",
        ])
        .env("KUBECONFIG", &kubeconfig))?;
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&pv_dir);
    Ok(())
}

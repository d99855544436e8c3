//! Running the real `tollgate-operator` binary against the e2e cluster, on
//! free loopback ports, and talking HTTPS to it.
//!
//! ```ignore
//! let op = OperatorProcess::start(&OperatorArgs::new(ns.name())).await?;
//! let ca = op.ca_bundle(&client).await?;          // PEM of the operator's CA(s)
//! let r = https_request(&op.control_url(), &ca, "GET", "/v1/gateway/config", &[], b"").await?;
//! ```
//!
//! The binary comes from `TOLLGATE_OPERATOR_BIN`, else
//! `$CARGO_TARGET_DIR/debug/tollgate-operator`, else `<repo>/target/debug/`;
//! `e2e/run.sh` builds it. Its log goes to `e2e/.state/operator/<name>.log`
//! and its tail is printed when it fails to become ready. Dropping the
//! handle kills the process.
//!
//! The operator writes cluster-wide webhook configurations only when
//! [`OperatorArgs::register_webhooks`] is set; their names then get a unique
//! suffix ([`OperatorProcess::webhook_suffix`]) so suites running in
//! parallel do not overwrite each other's.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tollgate_test_support::process;

use crate::cluster::{kubeconfig_path, repo_root};
use crate::namespace::unique_name;

/// How long the operator may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start the operator.
#[derive(Debug, Clone)]
pub struct OperatorArgs {
    /// `--namespace`: where its Secrets, CA and Lease live.
    pub namespace: String,
    /// Pass `--webhook-url` so it writes its webhook configurations.
    pub register_webhooks: bool,
    /// `--identity` for leader election; default a unique name.
    pub identity: Option<String>,
    /// More flags, e.g. `["--cert-validity", "10s"]`.
    pub extra_args: Vec<String>,
    /// The control endpoint's port; default a free one. A restarted
    /// operator takes its predecessor's, so gateways find it again.
    pub control_port: Option<u16>,
}

impl OperatorArgs {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            register_webhooks: false,
            identity: None,
            extra_args: Vec::new(),
            control_port: None,
        }
    }
}

/// A running operator process.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    name: String,
    webhook_port: u16,
    control_port: u16,
    metrics_port: u16,
    namespace: String,
    log: PathBuf,
    webhook_suffix: String,
}

/// A free port on 127.0.0.1 (bound, then released), from below the
/// kernel's ephemeral range (32768+) so outgoing connections cannot be
/// holding it by the time the operator binds it (as `e2e/cluster.sh` does).
pub fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + u16::try_from(n % 12_000).unwrap_or(0);
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found on 127.0.0.1")
}

/// The operator binary.
pub fn operator_binary() -> Result<PathBuf> {
    Ok(process::operator_binary()?)
}

/// The gateway binary (for gateways run against a real control endpoint).
pub fn gateway_binary() -> Result<PathBuf> {
    Ok(process::gateway_binary()?)
}

/// The kubectl plugin (`kubectl tollgate`).
pub fn cli_binary() -> Result<PathBuf> {
    Ok(process::cli_binary()?)
}

impl OperatorProcess {
    /// Starts the operator and waits until `/ready` answers 200. A port
    /// taken between picking and binding is retried on other ports.
    pub async fn start(args: &OperatorArgs) -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(args).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {}
                other => return other,
            }
        }
    }

    async fn start_once(args: &OperatorArgs) -> Result<Self> {
        let name = args
            .identity
            .clone()
            .unwrap_or_else(|| unique_name("operator"));
        let webhook_port = free_port()?;
        let control_port = match args.control_port {
            Some(port) => port,
            None => free_port()?,
        };
        let metrics_port = free_port()?;
        let log_dir = repo_root().join("e2e/.state/operator");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let webhook_suffix = format!("-{name}");
        let mut command = Command::new(operator_binary()?);
        command
            .arg("--kubeconfig")
            .arg(kubeconfig_path()?)
            .args(["--namespace", &args.namespace])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--control-listen", &format!("127.0.0.1:{control_port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--identity", &name]);
        if args.register_webhooks {
            command
                .args([
                    "--webhook-url",
                    &format!("https://127.0.0.1:{webhook_port}"),
                ])
                // `=`: the suffix starts with '-'.
                .arg(format!("--webhook-configuration-suffix={webhook_suffix}"));
        }
        command
            .args(&args.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().context("starting tollgate-operator")?;
        let mut process = Self {
            child,
            name,
            webhook_port,
            control_port,
            metrics_port,
            namespace: args.namespace.clone(),
            log,
            webhook_suffix,
        };
        process.wait_ready(READY_TIMEOUT).await?;
        Ok(process)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tollgate-operator exited with {status} before it was ready:\n{}",
                    self.log_tail(40)
                );
            }
            if let Ok((200, _)) = http_get(self.metrics_port, "/ready").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tollgate-operator was not ready after {timeout:?}:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL, and wait for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing tollgate-operator")?;
            self.child.wait()?;
        }
        Ok(())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its `--identity` (also the Lease holder name).
    pub fn identity(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `https://127.0.0.1:PORT` of the webhooks.
    pub fn webhook_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.webhook_port)
    }

    /// `https://127.0.0.1:PORT` of the control endpoint.
    pub fn control_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.control_port)
    }

    /// `http://127.0.0.1:PORT` of `/live`, `/ready`, `/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The suffix of its webhook configuration names (when it registers
    /// them): `tollgate-injector{suffix}`, `tollgate-validator{suffix}`.
    pub fn webhook_suffix(&self) -> &str {
        &self.webhook_suffix
    }

    /// PEM of the CA(s) that sign its serving certificates, read from the
    /// Secret `tollgate-webhook-ca` (current, then previous).
    pub async fn ca_bundle(&self, client: &Client) -> Result<String> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let secret = secrets
            .get("tollgate-webhook-ca")
            .await
            .context("reading Secret tollgate-webhook-ca")?;
        let data = secret.data.unwrap_or_default();
        let mut bundle = String::new();
        for key in ["ca.crt", "previous-ca.crt"] {
            if let Some(v) = data.get(key) {
                bundle.push_str(String::from_utf8_lossy(&v.0).trim_end());
                bundle.push('\n');
            }
        }
        if bundle.is_empty() {
            bail!("Secret tollgate-webhook-ca has no ca.crt");
        }
        Ok(bundle)
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A plain HTTP GET on 127.0.0.1: status and body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let response = read_response(&mut stream).await?;
    Ok((response.status, response.body))
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<HttpResponse> {
    let mut raw = Vec::new();
    // Connection: close, so the body ends at EOF; a TLS peer that closes
    // without close_notify still delivered everything before it.
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .context("bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}

/// A TLS client config trusting only `ca_bundle_pem`.
pub fn tls_client(ca_bundle_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = ca_bundle_pem.as_bytes();
    for cert in rustls_pemfile::certs(&mut reader) {
        roots.add(cert.context("parsing the CA bundle")?)?;
    }
    if roots.is_empty() {
        bail!("the CA bundle holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One HTTPS request to `base_url` (`https://127.0.0.1:PORT`), verifying the
/// server against `ca_bundle_pem`. `headers` are extra request headers.
pub async fn https_request(
    base_url: &str,
    ca_bundle_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let authority = base_url
        .strip_prefix("https://")
        .context("the URL must start with https://")?
        .trim_end_matches('/');
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(tls_client(ca_bundle_pem)?);
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a server name"))?;
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {authority}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    read_response(&mut tls).await
}

/// Completes a TLS handshake with `base_url`, verifying it against
/// `ca_bundle_pem`, and returns the DER of the leaf certificate it served.
pub async fn peer_certificate(base_url: &str, ca_bundle_pem: &str) -> Result<Vec<u8>> {
    let authority = base_url
        .strip_prefix("https://")
        .context("the URL must start with https://")?
        .trim_end_matches('/');
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(tls_client(ca_bundle_pem)?);
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a server name"))?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {authority}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no peer certificate")?;
    Ok(leaf.as_ref().to_vec())
}

/// Labels `ns` `tollgate.dev/inject=enabled`.
pub async fn label_governed(client: &Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tollgate.dev/inject": "enabled"}}})),
        )
        .await
        .with_context(|| format!("labelling namespace {ns}"))?;
    Ok(())
}

/// Asks `op`'s control endpoint (trusting `ca`) to certify `public_key`
/// (standard base64) for the pod `token` is bound to.
pub async fn request_certificate(
    op: &OperatorProcess,
    ca: &str,
    token: &str,
    public_key: &str,
) -> Result<HttpResponse> {
    let body = serde_json::json!({ "publicKey": public_key }).to_string();
    let auth = format!("Bearer {token}");
    https_request(
        &op.control_url(),
        ca,
        "POST",
        "/v1/gateway/certificate",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

/// A token for `pod`'s ServiceAccount, bound to the pod, for `audience`.
pub async fn pod_token(client: &Client, pod: &Pod, audience: &str) -> Result<String> {
    let ns = pod.namespace().context("pod without namespace")?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .context("TokenRequest bound to a pod")?;
    Ok(issued.status.context("TokenRequest without status")?.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"9\r\nab").is_err());
    }

    #[test]
    fn free_ports_are_distinct_enough() {
        let a = free_port().unwrap();
        assert_ne!(a, 0);
    }
}

/// A process the suite started (a gateway, a recorder), killed if the test
/// ends without stopping it, so a failed run leaves nothing behind.
#[derive(Debug)]
pub struct Started {
    listening: Option<process::Listening>,
    /// The address it printed it listens on.
    pub address: String,
}

impl Started {
    /// Wraps a started process.
    pub fn new(listening: process::Listening) -> Self {
        Self {
            address: listening.address.clone(),
            listening: Some(listening),
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let listening = self.listening.take().context("already stopped")?;
        Ok(listening.terminate()?)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(listening) = self.listening.take() {
            let _ = listening.kill_9();
        }
    }
}

/// `tollgate-gateway run` against the control endpoint at `control_url`,
/// reading `dir/ca.crt` and `dir/token` and spooling to `dir/spool`, with 6 s
/// key certificates (the shortest allowed: a renewal every 4 s) unless
/// `extra` names another `--key-certificate-lifetime`, and `extra` flags.
pub fn start_gateway(dir: &std::path::Path, control_url: &str, extra: &[&str]) -> Result<Started> {
    let mut command = Command::new(gateway_binary()?);
    command
        .args(["run", "--control-url", control_url])
        .arg("--control-ca-file")
        .arg(dir.join("ca.crt"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    if !extra.contains(&"--key-certificate-lifetime") {
        command.args(["--key-certificate-lifetime", "6s"]);
    }
    command.args(extra).env("RUST_LOG", "warn");
    let listening =
        process::Listening::start(command, "gateway", "tollgate-gateway: listening api=")
            .context("starting tollgate-gateway")?;
    Ok(Started::new(listening))
}

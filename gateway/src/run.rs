//! `tollgate-gateway run`: wires config, credentials, keys, the receipt spool,
//! quota and the two listeners together, reloads config without a restart,
//! and drains gracefully on SIGTERM, ending the receipt stream with a signed
//! close record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tollgate_evidence::{
    DnsLabel, DnsSubdomain, Identifier, KeyCertificate, KeyId, PodIdentity, PodUid, PublicKey,
    SignedKeyCertificate, SigningKey, Workload,
};
use tollgate_wire::caller::CallerKey;
use tollgate_wire::config::{GATEWAY_CONFIG_VERSION, GatewayConfig};

use crate::shipper::Shipper;
use tollgate_wire::client::{FileToken, TokenSource};
use tollgate_wire::server::ServerLimits;

use crate::admin::{AdminServer, Metrics};
use crate::control::ControlClient;
use crate::credentials::{Credentials, MAX_KEY_BYTES};
use crate::genai_metrics::Conventions;
use crate::proxy::{Gateway, Identity, Runtime};
use crate::quota::{LocalQuotaAuthority, QuotaAuthority};
use crate::quota_lease::LeasedQuotaAuthority;
use crate::receipts::{
    ReceiptSink, SpoolStatus, SpoolWriter, StreamKey, admit_until, now_timestamp,
    spawn_spool_writer,
};

/// Largest config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// How often the gateway looks for refused provider keys due a probe.
const KEY_PROBE_TICK: Duration = Duration::from_secs(5);

/// Flags of `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Threads that serve requests. A sidecar serves one pod: one thread
    /// spares the cross-thread wake-ups of a second (the spool writer and
    /// its fsyncs run on threads of their own either way).
    #[arg(long, env = "TOLLGATE_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// Compiled gateway config (JSON), reloaded when it changes. Local mode and
    /// tests; in a cluster the control endpoint (--control-url) supplies it.
    #[arg(
        long,
        env = "TOLLGATE_CONFIG",
        required_unless_present = "control_url",
        conflicts_with = "control_url"
    )]
    pub config: Option<PathBuf>,
    /// Directory of provider keys laid out like a mounted Secret: DIR/<secret>/<key>.
    #[arg(long, env = "TOLLGATE_CREDENTIALS_DIR", conflicts_with = "control_url")]
    pub credentials_dir: Option<PathBuf>,
    /// The operator's control endpoint (https): config, provider keys and the
    /// key certificate come from there, authenticated by --token-file.
    #[arg(long, env = "TOLLGATE_CONTROL_URL", requires = "token_file")]
    pub control_url: Option<String>,
    /// CA bundle (PEM) that verifies the control endpoint.
    #[arg(long, env = "TOLLGATE_CONTROL_CA_FILE")]
    pub control_ca_file: Option<PathBuf>,
    /// The pod-bound projected token (audience tollgate.dev/gateway), re-read on use.
    #[arg(long, env = "TOLLGATE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The projected ServiceAccount token (audience tollgate.dev/aws) that
    /// Bedrock providers with aws.webIdentity trade for credentials.
    #[arg(long, env = "TOLLGATE_AWS_WEB_IDENTITY_TOKEN_FILE", default_value = DEFAULT_AWS_TOKEN_FILE)]
    pub aws_web_identity_token_file: PathBuf,
    /// The projected ServiceAccount token (audience tollgate.dev/gcp) that
    /// Vertex AI providers with gcp.workloadIdentity exchange for an access
    /// token.
    #[arg(long, env = "TOLLGATE_GCP_IDENTITY_TOKEN_FILE", default_value = DEFAULT_GCP_TOKEN_FILE)]
    pub gcp_identity_token_file: PathBuf,
    /// The projected ServiceAccount token (audience tollgate.dev/azure) that
    /// Azure OpenAI providers with azure.workloadIdentity present to Entra
    /// ID.
    #[arg(long, env = "TOLLGATE_AZURE_IDENTITY_TOKEN_FILE", default_value = DEFAULT_AZURE_TOKEN_FILE)]
    pub azure_identity_token_file: PathBuf,
    /// The recorder receipts are shipped to. Without it receipts stay in the spool.
    #[arg(long, env = "TOLLGATE_RECORDER_URL")]
    pub recorder_url: Option<String>,
    /// CA bundle (PEM) that verifies the recorder (https); default: the control CA.
    #[arg(long, env = "TOLLGATE_RECORDER_CA_FILE")]
    pub recorder_ca_file: Option<PathBuf>,
    /// The token for the recorder (audience tollgate.dev/recorder), re-read on use.
    #[arg(long, env = "TOLLGATE_RECORDER_TOKEN_FILE", requires = "recorder_url")]
    pub recorder_token_file: Option<PathBuf>,
    /// API listener. Apps reach it as OPENAI_BASE_URL / ANTHROPIC_BASE_URL.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:15080")]
    pub listen: SocketAddr,
    /// Admin listener: /live, /startup, /ready, /metrics (bound first, so
    /// /startup says what a starting gateway waits for).
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = "127.0.0.1:15081")]
    pub admin_listen: SocketAddr,
    /// The receipt spool directory (an emptyDir in a pod).
    #[arg(long, env = "TOLLGATE_SPOOL_DIR")]
    pub spool_dir: PathBuf,
    /// Spool size limit; past it new requests get 503 under failMode closed.
    #[arg(long, env = "TOLLGATE_SPOOL_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub spool_max_bytes: u64,
    /// The pod's namespace (with --control-url, the control endpoint's answer wins).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The pod's ServiceAccount.
    #[arg(long, env = "POD_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's UID.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// A pod label, KEY=VALUE; repeatable. Picks the EgressPolicy and quota
    /// subjects (with --control-url, the pod's labels come from the operator).
    #[arg(long = "pod-label", value_parser = parse_label)]
    pub pod_labels: Vec<(String, String)>,
    /// The node id used in key selection.
    #[arg(long, env = "NODE_NAME", default_value = "local")]
    pub node_id: String,
    /// Local receipt CA private key (64 hex characters, the Ed25519 seed) that
    /// certifies this gateway's ephemeral key. Local mode and tests only: in a
    /// cluster the operator's control endpoint issues the certificate.
    #[arg(
        long,
        env = "TOLLGATE_CA_KEY_FILE",
        required_unless_present = "control_url",
        conflicts_with = "control_url"
    )]
    pub ca_key_file: Option<PathBuf>,
    /// The caller key (64 hex digits) end-user ids are hashed under for
    /// receipts' `caller_hash`. Without it no caller is hashed. In a cluster
    /// the operator's control endpoint supplies the cluster's key.
    #[arg(long, env = "TOLLGATE_CALLER_KEY_FILE", conflicts_with = "control_url")]
    pub caller_key_file: Option<PathBuf>,
    /// How long each receipt key certificate is valid: `30s`, `10m`, `24h`,
    /// `7d` (at least 5 s; the operator caps it at 24 h). The gateway renews
    /// its key at two thirds of the lifetime without a restart.
    #[arg(
        long,
        env = "TOLLGATE_KEY_CERTIFICATE_LIFETIME",
        default_value = "24h",
        value_parser = parse_lifetime
    )]
    pub key_certificate_lifetime: Duration,
    /// The data port's bounds (`--max-connections`, `--max-requests-in-flight`,
    /// `--header-read-timeout`, `--body-idle-timeout`).
    #[command(flatten)]
    pub limits: tollgate_wire::server::LimitFlags,
}

impl RunArgs {
    /// The data port's bounds from the flags.
    pub fn server_limits(&self) -> ServerLimits {
        self.limits.apply(ServerLimits::GATEWAY)
    }
}

/// The shortest key certificate lifetime accepted.
pub const MIN_KEY_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(5);

/// Parses a key certificate lifetime: a whole number and `s`, `m`, `h` or `d`.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h, d)")),
    }
    .ok_or_else(|| format!("{text:?} is too long"))?;
    let lifetime = Duration::from_secs(seconds);
    if lifetime < MIN_KEY_CERTIFICATE_LIFETIME {
        return Err(format!(
            "{text:?} is shorter than the minimum of {}s",
            MIN_KEY_CERTIFICATE_LIFETIME.as_secs()
        ));
    }
    Ok(lifetime)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("pod label {s:?}: expected KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Reads, parses and checks a compiled config: its version is known and its
/// policy hash matches its content.
pub fn load_config(path: &Path) -> anyhow::Result<GatewayConfig> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        bail!(
            "{}: {size} bytes is over the {MAX_CONFIG_BYTES}-byte config limit",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let config: GatewayConfig = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a compiled gateway config", path.display()))?;
    if config.version != GATEWAY_CONFIG_VERSION {
        bail!(
            "{}: config version {} is not supported (expected {GATEWAY_CONFIG_VERSION})",
            path.display(),
            config.version
        );
    }
    let expected = tollgate_wire::config::policy_hash(&config);
    if expected != config.policy_hash {
        bail!(
            "{}: policyHash does not match the content (expected {expected}); refusing a tampered or hand-edited config",
            path.display()
        );
    }
    Ok(config)
}

pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = tollgate_wire::secret::read_secret_file(path).context("reading the CA key")?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .with_context(|| format!("{}: expected 64 hex characters", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a caller key file: 64 hex digits (and a trailing newline), at most
/// [`MAX_KEY_BYTES`] bytes.
pub fn read_caller_key(path: &Path) -> anyhow::Result<CallerKey> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the caller key {}", path.display()))?
        .len();
    if size > MAX_KEY_BYTES {
        bail!("{}: {size} bytes is not a caller key", path.display());
    }
    let text = tollgate_wire::secret::read_secret_file(path).context("reading the caller key")?;
    CallerKey::from_hex(&text).with_context(|| format!("{}", path.display()))
}

/// A fresh Ed25519 key; it never leaves this process.
pub fn ephemeral_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the gateway key: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Where config and credentials come from, and how to notice they changed.
pub trait ConfigLoader: Send + Sync + 'static {
    /// Loads and checks the config and the keys it needs.
    fn load(&self) -> anyhow::Result<(GatewayConfig, Credentials)>;
    /// Cheap change detection: equal fingerprints mean nothing to reload.
    fn fingerprint(&self) -> Vec<u8>;
}

/// A compiled config file plus an optional credentials directory and caller key.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub config: PathBuf,
    pub credentials_dir: Option<PathBuf>,
    pub caller_key: Option<CallerKey>,
}

impl ConfigLoader for FileConfig {
    fn load(&self) -> anyhow::Result<(GatewayConfig, Credentials)> {
        let config = load_config(&self.config)?;
        let credentials = match &self.credentials_dir {
            Some(dir) => Credentials::load_dir(dir, &config)?,
            None => Credentials::default(),
        };
        Ok((config, credentials.with_caller_key(self.caller_key.clone())))
    }
    fn fingerprint(&self) -> Vec<u8> {
        std::fs::read(&self.config).unwrap_or_default()
    }
}

/// Everything a gateway needs to start, from flags or from `kubectl tollgate local`.
pub struct GatewayOptions {
    pub loader: Arc<dyn ConfigLoader>,
    pub listen: SocketAddr,
    /// The admin listener, already serving `/startup`.
    pub admin: AdminServer,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub pod: PodIdentity,
    pub pod_labels: BTreeMap<String, String>,
    pub node_id: String,
    /// Who certifies the ephemeral receipt key.
    pub certifier: Certifier,
    /// The data port's bounds.
    pub limits: ServerLimits,
    /// Where receipts are shipped, if anywhere.
    pub recorder: Option<RecorderLink>,
    /// Who enforces quotas.
    pub quota: QuotaSource,
    /// Which GenAI metric conventions `/metrics` follows.
    pub metric_conventions: Conventions,
    /// The projected ServiceAccount tokens traded for credentials when a
    /// provider uses workload identity.
    pub identity_tokens: crate::workload_identity::TokenFiles,
}

/// Where the admission webhook mounts the gateway's AWS STS token.
pub const DEFAULT_AWS_TOKEN_FILE: &str = "/var/run/secrets/tollgate.dev/tokens/aws";
/// Where the admission webhook mounts the gateway's Google STS token.
pub const DEFAULT_GCP_TOKEN_FILE: &str = "/var/run/secrets/tollgate.dev/tokens/gcp";
/// Where the admission webhook mounts the gateway's Entra ID token.
pub const DEFAULT_AZURE_TOKEN_FILE: &str = "/var/run/secrets/tollgate.dev/tokens/azure";
/// How often the gateway looks for workload identity credentials due a
/// refresh.
const WEB_IDENTITY_TICK: Duration = Duration::from_secs(30);
/// How soon a provider left without credentials is tried again.
const WEB_IDENTITY_RETRY: Duration = Duration::from_secs(5);

/// Who enforces quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSource {
    /// This process alone (local mode, tests, a single gateway).
    InProcess,
    /// Leases from the recorder in [`GatewayOptions::recorder`], shared by
    /// every gateway of the cluster.
    RecorderLeases,
}

/// Who certifies the gateway's ephemeral receipt keys, for how long.
pub enum Certifier {
    /// A local receipt CA key (local mode and tests).
    LocalCa {
        key: Box<SigningKey>,
        lifetime: Duration,
    },
    /// The operator's control endpoint, asked for `lifetime` (it may give less).
    Control {
        client: Arc<ControlClient>,
        lifetime: Duration,
    },
}

/// The recorder receipts are shipped to.
#[derive(Debug, Clone)]
pub struct RecorderLink {
    pub url: String,
    pub token: Arc<dyn TokenSource>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Certifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the CA key.
        match self {
            Self::LocalCa { lifetime, .. } => f
                .debug_struct("LocalCa")
                .field("lifetime", lifetime)
                .finish_non_exhaustive(),
            Self::Control { lifetime, .. } => f
                .debug_struct("Control")
                .field("lifetime", lifetime)
                .finish_non_exhaustive(),
        }
    }
}

impl Certifier {
    async fn certify(
        &self,
        key: &SigningKey,
        pod: &PodIdentity,
    ) -> anyhow::Result<SignedKeyCertificate> {
        match self {
            Self::LocalCa {
                key: ca_key,
                lifetime,
            } => {
                let not_before = now_timestamp();
                let millis = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
                let not_after = not_before
                    .checked_add_millis(millis)
                    .context("certificate validity overflows")?;
                Ok(SignedKeyCertificate::issue(
                    KeyCertificate::new(
                        PublicKey::of_signing_key(key),
                        pod.clone(),
                        not_before,
                        not_after,
                        KeyId::of_signing_key(ca_key),
                    )?,
                    ca_key,
                )?)
            }
            Self::Control { client, lifetime } => {
                let certificate = client
                    .certify(&PublicKey::of_signing_key(key), *lifetime)
                    .await?;
                let c = &certificate.certificate;
                if c.namespace != pod.namespace
                    || c.service_account != pod.service_account
                    || c.pod_name != pod.pod_name
                    || c.pod_uid != pod.pod_uid
                {
                    bail!("the control endpoint certified the key for a different pod");
                }
                Ok(certificate)
            }
        }
    }
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The CA key stays out of Debug output.
        f.debug_struct("GatewayOptions")
            .field("listen", &self.listen)
            .field("admin", &self.admin.local_addr())
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

/// A started gateway: where it listens, and how to stop it.
#[derive(Debug)]
pub struct RunningGateway {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The first receipt stream (each key renewal starts another).
    pub stream_id: Identifier,
    /// The first stream's spool file.
    pub spool_path: PathBuf,
    pub policy_hash: String,
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    /// Stops accepting, drains in-flight requests (30 s at most), and ends the
    /// receipt streams with their signed close records.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.done.await.context("gateway task")?
    }
}

/// Binds the listeners and starts serving.
pub async fn start(options: GatewayOptions) -> anyhow::Result<RunningGateway> {
    let admin = options.admin;
    admin.starting("loading the config");
    let (config, credentials) = options.loader.load()?;
    let runtime = Runtime::build(config, credentials, &options.pod_labels)?;
    // Receipts record the node the key routing formula hashed.
    tollgate_evidence::DnsSubdomain::new(options.node_id.clone()).map_err(|e| {
        anyhow::anyhow!(
            "--node-id {:?} cannot go into receipts ({e}); it must be a Kubernetes node name",
            options.node_id
        )
    })?;
    let workload = Workload {
        namespace: options.pod.namespace.clone(),
        service_account: options.pod.service_account.clone(),
        pod: options.pod.pod_name.clone(),
    };
    let identity = Identity {
        namespace: workload.namespace.to_string(),
        service_account: workload.service_account.to_string(),
        pod: workload.pod.to_string(),
        node_id: options.node_id.clone(),
        pod_labels: options.pod_labels.clone(),
    };
    let certifier = Arc::new(options.certifier);
    admin.starting("obtaining the receipt key certificate");
    let first = new_stream_key(&certifier, &options.pod).await?;
    admin.starting("opening the receipt spool");
    let stream_id = first.stream_id.clone();
    let window = certificate_window(&first);
    let status = Arc::new(SpoolStatus::new(options.spool_max_bytes));
    let writer = SpoolWriter::create(&options.spool_dir, first, workload, status)?;
    let spool_path = writer.path().to_path_buf();
    let (sink, writer_task) = spawn_spool_writer(writer);
    let renewal = tokio::spawn(renew_keys(
        certifier,
        options.pod.clone(),
        sink.clone(),
        window,
    ));
    let (shipper_stop, shipper_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shipper = options.recorder.as_ref().map(|link| {
        let shipper = Shipper::new(
            options.spool_dir.clone(),
            link.url.clone(),
            link.token.clone(),
            link.tls.clone(),
        )
        .with_wake(sink.records_written());
        tokio::spawn(shipper.run(async move {
            let _ = shipper_stop_rx.await;
        }))
    });
    let (quota, lease_keeper): (Arc<dyn QuotaAuthority>, _) =
        match (options.quota, &options.recorder) {
            (QuotaSource::InProcess, _) => (Arc::new(LocalQuotaAuthority::new()), None),
            (QuotaSource::RecorderLeases, Some(link)) => {
                let leased = Arc::new(LeasedQuotaAuthority::new(
                    &link.url,
                    link.token.clone(),
                    link.tls.clone(),
                ));
                let keeper = tokio::spawn(leased.clone().maintain());
                (leased, Some(keeper))
            }
            (QuotaSource::RecorderLeases, None) => {
                bail!("quota leases need a recorder (--recorder-url)")
            }
        };
    let gateway = Arc::new(Gateway::new(
        runtime,
        quota.clone(),
        sink,
        identity,
        Metrics::new(options.metric_conventions),
    ));

    let api = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let (api_addr, admin_addr) = (api.local_addr()?, admin.local_addr());
    let policy_hash = gateway.runtime().config.policy_hash.clone();

    let reload = tokio::spawn(watch_config(
        options.loader.clone(),
        options.pod_labels.clone(),
        gateway.clone(),
    ));
    // Key health goes to the recorder, for the LLMProvider status.
    let key_reports = options.recorder.as_ref().map(|link| {
        tokio::spawn({
            let (gateway, link) = (gateway.clone(), link.clone());
            async move {
                crate::key_report::report_forever(gateway, &link.url, link.token, link.tls).await;
            }
        })
    });
    // Refused provider keys get a probe when their backoff ends.
    let key_probes = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            let mut tick = tokio::time::interval(KEY_PROBE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                crate::proxy::probe_due_keys(&gateway).await;
            }
        }
    });
    // Temporary credentials for providers that use web identity: the first
    // exchange now, then again before they expire.
    let web_identity = tokio::spawn({
        let gateway = gateway.clone();
        let token_files = options.identity_tokens.clone();
        async move {
            loop {
                let now = crate::receipts::unix_millis();
                let lacking =
                    crate::workload_identity::refresh_due(&gateway, &token_files, now).await;
                // Without credentials (a new provider, a refused exchange)
                // sooner; else at the usual pace.
                let pause = if lacking {
                    WEB_IDENTITY_RETRY
                } else {
                    WEB_IDENTITY_TICK
                };
                // A config swap or refused credentials wake it early.
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = gateway.workload_identity().woken() => {}
                }
            }
        }
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Bounded servers (tollgate_wire::server): slow, big or many clients get
    // cut off or 503, never a hang.
    let api_server = tollgate_wire::server::serve_counted(
        api,
        crate::proxy::router(gateway.clone()),
        options.limits,
        gateway.metrics.overload.clone(),
        stopped(stop_rx.clone()),
    );
    let servers = tokio::spawn(api_server);
    admin.started(gateway.clone());
    let done = tokio::spawn(async move {
        stopped(stop_rx).await;
        tracing::info!("shutting down: draining in-flight requests");
        reload.abort();
        key_probes.abort();
        if let Some(reports) = &key_reports {
            reports.abort();
        }
        web_identity.abort();
        // The probes go with the API port, as before admin was bound first.
        let (drained, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(30), servers),
            admin.shutdown()
        );
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "listener task failed"),
            Err(_) => tracing::warn!("drain timed out after 30s"),
        }
        drop(gateway);
        // The renewal task holds a sink too: stop it so the writer sees the end.
        renewal.abort();
        let _ = renewal.await;
        if let Some(keeper) = lease_keeper {
            keeper.abort();
        }
        // Hand back unused quota, reporting what was consumed.
        quota.close().await;
        writer_task.await.context("receipt writer task")??;
        // The close record is in the spool now: one last bounded shipping pass.
        let _ = shipper_stop.send(());
        if let Some(shipper) = shipper {
            let _ = shipper.await;
        }
        Ok(())
    });
    Ok(RunningGateway {
        api_addr,
        admin_addr,
        stream_id,
        spool_path,
        policy_hash,
        stop,
        done,
    })
}

/// A fresh key, certified, with a new stream id.
async fn new_stream_key(certifier: &Certifier, pod: &PodIdentity) -> anyhow::Result<StreamKey> {
    let key = ephemeral_key()?;
    let certificate = certifier.certify(&key, pod).await?;
    Ok(StreamKey {
        stream_id: Identifier::new(uuid::Uuid::now_v7().hyphenated().to_string())?,
        key,
        certificate,
    })
}

/// `not_before` and `not_after` in unix milliseconds.
fn certificate_window(stream: &StreamKey) -> (u64, u64) {
    let c = &stream.certificate.certificate;
    (c.not_before.unix_millis(), c.not_after.unix_millis())
}

/// When to renew a certificate valid over `window`: at two thirds of it,
/// which leaves the last third for requests already running under the old
/// key and for retries should the certifier be unreachable.
pub fn renewal_due(window: (u64, u64)) -> u64 {
    let (not_before, not_after) = window;
    not_before + not_after.saturating_sub(not_before) / 3 * 2
}

async fn sleep_until_unix_millis(at: u64) {
    let now = crate::receipts::unix_millis();
    if at > now {
        tokio::time::sleep(Duration::from_millis(at - now)).await;
    }
}

/// Renews the receipt key before its certificate expires, for as long as the
/// gateway runs: a new key, certified, then a new stream; the old stream is
/// closed with its signed close record just before its certificate ends.
/// Nothing is refused in between. If the certifier cannot be reached, it
/// retries with backoff; should the certificate expire first, requests are
/// refused (the spool is not accepting) until a renewal succeeds.
async fn renew_keys(
    certifier: Arc<Certifier>,
    pod: PodIdentity,
    sink: ReceiptSink,
    mut window: (u64, u64),
) {
    loop {
        sleep_until_unix_millis(renewal_due(window)).await;
        let mut backoff = Duration::from_secs(1);
        let next = loop {
            match new_stream_key(&certifier, &pod).await {
                Ok(next) => break next,
                Err(e) => {
                    let left = window.1.saturating_sub(crate::receipts::unix_millis());
                    tracing::error!(
                        error = %format!("{e:#}"),
                        seconds_left = left / 1000,
                        "renewing the receipt key certificate failed; retrying (requests are refused once it expires)"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let previous = window;
        window = certificate_window(&next);
        sink.renew(next);
        // Shortly before the old certificate ends, so its close record falls
        // inside it: the time admission under it stopped too.
        sleep_until_unix_millis(admit_until(previous.0, previous.1)).await;
        sink.close_previous();
    }
}

/// Where the pod identity, config and key certificate come from.
struct Sources {
    pod: PodIdentity,
    pod_labels: BTreeMap<String, String>,
    loader: Arc<dyn ConfigLoader>,
    certifier: Certifier,
    control: Option<Arc<ControlClient>>,
}

fn pod_identity(
    namespace: &str,
    service_account: &str,
    name: &str,
    uid: &str,
) -> anyhow::Result<PodIdentity> {
    Ok(PodIdentity {
        namespace: DnsLabel::new(namespace.to_string()).context("pod namespace")?,
        service_account: DnsSubdomain::new(service_account.to_string())
            .context("pod serviceAccount")?,
        pod_name: DnsSubdomain::new(name.to_string()).context("pod name")?,
        pod_uid: PodUid::new(uid.to_string()).context("pod uid")?,
    })
}

fn required<'a>(value: &'a Option<String>, flag: &str) -> anyhow::Result<&'a str> {
    value
        .as_deref()
        .with_context(|| format!("{flag} is required without --control-url"))
}

/// Reads a PEM CA bundle into a TLS client config.
fn client_tls(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    match ca_file {
        Some(path) => tollgate_wire::client::roots_from_pem_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        None => tollgate_wire::client::public_roots().map_err(|e| anyhow::anyhow!("{e}")),
    }
}

async fn sources(args: &RunArgs, admin: &AdminServer) -> anyhow::Result<Sources> {
    if let Some(url) = &args.control_url {
        let token_file = args
            .token_file
            .clone()
            .context("--token-file is required with --control-url")?;
        let client = Arc::new(ControlClient::new(
            url,
            Arc::new(FileToken::new(token_file)),
            client_tls(args.control_ca_file.as_deref())?,
        )?);
        eprintln!("tollgate-gateway: fetching config from {url}");
        admin.starting(format!("fetching the config from {url}"));
        let bootstrap = client
            .first_fetch(|problem| {
                admin.starting(format!("waiting for the control endpoint {url}: {problem}"));
            })
            .await;
        let pod = pod_identity(
            &bootstrap.pod.namespace,
            &bootstrap.pod.service_account,
            &bootstrap.pod.name,
            &bootstrap.pod.uid,
        )?;
        return Ok(Sources {
            pod,
            pod_labels: bootstrap.pod.labels,
            loader: client.clone(),
            certifier: Certifier::Control {
                client: client.clone(),
                lifetime: args.key_certificate_lifetime,
            },
            control: Some(client),
        });
    }
    let config = args
        .config
        .clone()
        .context("--config or --control-url is required")?;
    let ca_key_file = args
        .ca_key_file
        .as_deref()
        .context("--ca-key-file is required without --control-url")?;
    Ok(Sources {
        pod: pod_identity(
            required(&args.namespace, "--namespace")?,
            required(&args.service_account, "--service-account")?,
            required(&args.pod_name, "--pod-name")?,
            required(&args.pod_uid, "--pod-uid")?,
        )?,
        pod_labels: args.pod_labels.iter().cloned().collect(),
        loader: Arc::new(FileConfig {
            config,
            credentials_dir: args.credentials_dir.clone(),
            caller_key: args
                .caller_key_file
                .as_deref()
                .map(read_caller_key)
                .transpose()?,
        }),
        certifier: Certifier::LocalCa {
            key: Box::new(read_signing_key(ca_key_file)?),
            lifetime: args.key_certificate_lifetime,
        },
        control: None,
    })
}

/// Runs the gateway from flags until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    tollgate_wire::server::raise_open_file_limit();
    let admin = AdminServer::bind(args.admin_listen).await?;
    let sources = sources(&args, &admin).await?;
    let recorder = match &args.recorder_url {
        Some(url) => {
            let token: Arc<dyn TokenSource> = match &args.recorder_token_file {
                Some(path) => Arc::new(FileToken::new(path.clone())),
                None => bail!("--recorder-url needs --recorder-token-file"),
            };
            let ca = args
                .recorder_ca_file
                .as_deref()
                .or(args.control_ca_file.as_deref());
            Some(RecorderLink {
                url: url.clone(),
                token,
                tls: client_tls(ca)?,
            })
        }
        None => None,
    };
    let options = GatewayOptions {
        loader: sources.loader,
        listen: args.listen,
        admin,
        spool_dir: args.spool_dir.clone(),
        spool_max_bytes: args.spool_max_bytes,
        pod: sources.pod,
        pod_labels: sources.pod_labels,
        node_id: args.node_id.clone(),
        certifier: sources.certifier,
        limits: args.server_limits(),
        quota: if recorder.is_some() {
            QuotaSource::RecorderLeases
        } else {
            QuotaSource::InProcess
        },
        recorder,
        metric_conventions: Conventions::from_env(),
        identity_tokens: crate::workload_identity::TokenFiles {
            aws: args.aws_web_identity_token_file.clone(),
            gcp: args.gcp_identity_token_file.clone(),
            azure: args.azure_identity_token_file.clone(),
        },
    };
    let watcher = sources.control.map(|client| tokio::spawn(client.watch()));
    let running = start(options).await?;
    eprintln!(
        "tollgate-gateway: listening api={} admin={} policy={} stream={} threads={} spool={}",
        running.api_addr,
        running.admin_addr,
        running.policy_hash,
        running.stream_id,
        // The runtime's own count, so a pod's log shows what its annotation got.
        tokio::runtime::Handle::current().metrics().num_workers(),
        running.spool_path.display()
    );
    wait_for_signal().await;
    let stream_id = running.stream_id.clone();
    running.shutdown().await?;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    eprintln!("tollgate-gateway: stream {stream_id} closed");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Polls the loader's fingerprint once a second and swaps in a new runtime
/// when it changes. A bad new config is logged and ignored: the gateway keeps
/// serving the last good one.
async fn watch_config(
    loader: Arc<dyn ConfigLoader>,
    labels: BTreeMap<String, String>,
    gateway: Arc<Gateway>,
) {
    let mut last = loader.fingerprint();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let current = loader.fingerprint();
        if current == last {
            continue;
        }
        last = current;
        match loader
            .load()
            .and_then(|(config, credentials)| Ok(Runtime::build(config, credentials, &labels)?))
        {
            Ok(runtime) => {
                let hash = runtime.config.policy_hash.clone();
                gateway.swap_runtime(runtime);
                tracing::info!(policy = %hash, "config reloaded");
                eprintln!("tollgate-gateway: config reloaded policy={hash}");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "config reload refused; keeping the last good config")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_bounds_come_from_flags_with_the_documented_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let base = [
            "gw",
            "--config",
            "c.json",
            "--spool-dir",
            "s",
            "--ca-key-file",
            "k",
        ];
        let defaults = Cli::try_parse_from(base).unwrap().run.server_limits();
        assert_eq!(defaults, ServerLimits::GATEWAY);
        let mut args = base.to_vec();
        args.extend([
            "--max-connections",
            "9",
            "--max-requests-in-flight",
            "3",
            "--header-read-timeout",
            "2s",
            "--body-idle-timeout",
            "1m",
        ]);
        let set = Cli::try_parse_from(args).unwrap().run.server_limits();
        assert_eq!(
            (
                set.max_connections,
                set.max_in_flight,
                set.header_read_timeout,
                set.body_idle_timeout
            ),
            (9, 3, Duration::from_secs(2), Duration::from_secs(60))
        );
        assert!(Cli::try_parse_from([&base[..], &["--max-connections", "0"]].concat()).is_err());
        assert!(
            Cli::try_parse_from([&base[..], &["--header-read-timeout", "0s"]].concat()).is_err()
        );
        // One request thread unless told otherwise, and at least one.
        assert_eq!(Cli::try_parse_from(base).unwrap().run.worker_threads, 1);
        let threads = |n: &'static str| {
            Cli::try_parse_from([&base[..], &["--worker-threads", n]].concat())
                .map(|cli| cli.run.worker_threads)
        };
        assert_eq!(threads("4").unwrap(), 4);
        assert!(threads("0").is_err());
        assert!(threads("65").is_err());
    }

    #[tokio::test]
    async fn startup_answers_what_a_starting_gateway_waits_for() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", admin.local_addr());
        let client = tollgate_wire::client::HttpClient::new(
            tollgate_wire::client::public_roots().unwrap(),
            Duration::from_secs(5),
        );
        let get = |path: &'static str| {
            let (client, url) = (client.clone(), format!("{base}{path}"));
            async move {
                let r = client
                    .send(http::Method::GET, &url, None, None, 4096)
                    .await
                    .unwrap();
                (
                    r.status.as_u16(),
                    String::from_utf8(r.body.to_vec()).unwrap(),
                )
            }
        };
        assert_eq!(get("/live").await, (200, "ok\n".into()));
        assert_eq!(get("/startup").await, (503, "starting: starting\n".into()));

        // A control endpoint that refuses connections: the gateway keeps
        // trying, and /startup says so.
        let token = std::env::temp_dir().join(format!("tollgate-startup-{}", std::process::id()));
        std::fs::write(&token, "token").unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("https://{closed}");
        let args = Cli::try_parse_from([
            "gw",
            "--control-url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--spool-dir",
            "s",
        ])
        .unwrap()
        .run;
        let waited = tokio::time::timeout(Duration::from_millis(800), sources(&args, &admin)).await;
        assert!(waited.is_err(), "no config can come from {url}");
        for path in ["/startup", "/ready", "/metrics"] {
            let (status, text) = get(path).await;
            assert_eq!(status, 503, "{path}: {text}");
            assert!(
                text.contains(&format!("waiting for the control endpoint {url}: ")),
                "{path}: {text}"
            );
            assert!(
                !text.contains("token"),
                "it got as far as connecting: {text}"
            );
        }
        assert_eq!(get("/live").await.0, 200, "alive while it waits");
        let _ = std::fs::remove_file(&token);
        let addr = admin.local_addr();
        admin.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port closes at shutdown"
        );
    }

    #[test]
    fn lifetimes_parse_with_a_unit_and_a_floor() {
        assert_eq!(parse_lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_lifetime("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_lifetime("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(
            parse_lifetime("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        for bad in [
            "",
            "24",
            "h",
            "4s",
            "1.5h",
            "10y",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewal_leaves_a_third_for_requests_under_the_old_key() {
        let day = 86_400_000;
        assert_eq!(renewal_due((0, day)), day / 3 * 2);
        assert_eq!(renewal_due((1_000, 7_000)), 5_000);
        // The old stream closes just before its certificate ends, never after.
        assert_eq!(admit_until(0, day), day - 5_000);
        assert_eq!(admit_until(1_000, 7_000), 6_400);
        assert!(admit_until(0, 6_000) > renewal_due((0, 6_000)));
    }
}

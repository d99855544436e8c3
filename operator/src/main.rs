//! `tollgate-operator`: parses flags, connects, and runs
//! [`tollgate_operator::runtime::run`] until SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;
use tollgate_operator::runtime::{
    CertificateSource, OperatorSettings, parse_duration, run, url_host,
};
use tollgate_operator::tls::Lifetimes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertMode {
    /// The operator's own CA (Secret `tollgate-webhook-ca`), rotated with overlap.
    SelfSigned,
    /// tls.crt/tls.key/ca.crt from --webhook-cert-dir, reloaded on change.
    CertManager,
}

/// The Tollgate operator: webhooks, the gateway control endpoint, and the
/// controllers (on the elected leader).
#[derive(Debug, Parser)]
#[command(name = "tollgate-operator", version)]
struct Args {
    /// Out of cluster: the kubeconfig to use. Without it, the in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The operator namespace (Secrets, the receipt CA, the webhook CA).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tollgate-system")]
    namespace: String,
    /// Where the webhooks listen (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_listen: SocketAddr,
    /// Out of cluster: the URL the API server calls the webhooks at. The
    /// operator then writes its own webhook configurations.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Appended to the webhook configuration names (test suites sharing a cluster).
    #[arg(long, default_value = "", hide = true)]
    webhook_configuration_suffix: String,
    /// Where the gateway control endpoint listens (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    control_listen: SocketAddr,
    /// The control endpoint URL written into injected gateways.
    #[arg(long)]
    control_url: Option<String>,
    /// /live, /ready and /metrics (plain HTTP). Default: 0.0.0.0:8080 in
    /// cluster, 127.0.0.1:8080 out of cluster.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The gateway image injected into pods.
    #[arg(long, default_value = concat!("tollgate/gateway:", env!("CARGO_PKG_VERSION")))]
    gateway_image: String,
    /// The recorder's base URL, for gateways and quota status.
    #[arg(long)]
    recorder_url: Option<String>,
    /// CA bundle (PEM) of the recorder's serving certificate. It is appended to
    /// the `tollgate-control-ca` ConfigMap, which gateways use for both the
    /// control endpoint and the recorder.
    #[arg(long, env = "TOLLGATE_RECORDER_CA_FILE")]
    recorder_ca_file: Option<std::path::PathBuf>,
    /// Cluster DNS resolvers pods may reach (repeatable).
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: Vec<IpAddr>,
    /// Namespace of the leader election Lease. Default: --namespace.
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease. Default: POD_NAME, else the hostname.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, value_enum, default_value = "self-signed")]
    webhook_cert_mode: CertMode,
    /// cert-manager mode: directory holding tls.crt, tls.key and ca.crt.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
    /// Lifetime of the operator's CA.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    ca_validity: Duration,
    /// Lifetime of serving certificates.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    cert_validity: Duration,
    /// How long a new CA is only trusted (in caBundles) before it signs.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    ca_propagation_delay: Duration,
    /// Cap on concurrent long-polls of the control endpoint.
    #[arg(long, default_value_t = tollgate_operator::control::DEFAULT_MAX_WAITERS)]
    max_long_polls: usize,
    /// Rotate the receipt CA once its key has signed this long (`0s`: never).
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    receipt_ca_rotation_period: Duration,
    /// How long a new receipt CA key is published in its TrustAnchor before
    /// it signs anything, so recorders and auditors trust it first.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    receipt_ca_publish_lead: Duration,
    /// The control endpoint's bounds (--max-connections,
    /// --max-requests-in-flight, --header-read-timeout, --body-idle-timeout);
    /// the defaults make room for --max-long-polls. Webhooks and metrics keep
    /// theirs.
    #[command(flatten)]
    control_limits: tollgate_wire::server::LimitFlags,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context("loading the in-cluster config")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn settings(args: Args) -> Result<OperatorSettings> {
    let in_cluster = args.kubeconfig.is_none();
    if args.ca_propagation_delay >= args.ca_validity / 3 {
        bail!("--ca-propagation-delay must be shorter than a third of --ca-validity");
    }
    let certificates = match (args.webhook_cert_mode, args.webhook_cert_dir) {
        (CertMode::SelfSigned, _) => CertificateSource::SelfSigned(Lifetimes {
            ca_validity: args.ca_validity,
            cert_validity: args.cert_validity,
            propagation_delay: args.ca_propagation_delay,
        }),
        (CertMode::CertManager, Some(dir)) => CertificateSource::Files(dir),
        (CertMode::CertManager, None) => {
            bail!("--webhook-cert-mode cert-manager needs --webhook-cert-dir")
        }
    };
    let mut extra_names = Vec::new();
    if !in_cluster {
        extra_names.extend(args.webhook_url.as_deref().and_then(url_host));
        extra_names.push(args.control_listen.ip().to_string());
        extra_names.push(args.webhook_listen.ip().to_string());
    }
    let control_url = args.control_url.unwrap_or_else(|| {
        if in_cluster {
            format!(
                "https://tollgate-operator.{}.svc:{}",
                args.namespace,
                args.control_listen.port()
            )
        } else {
            format!("https://{}", args.control_listen)
        }
    });
    extra_names.extend(url_host(&control_url).filter(|_| !in_cluster));
    let metrics_listen = args.metrics_listen.unwrap_or_else(|| {
        let ip: IpAddr = if in_cluster {
            [0, 0, 0, 0].into()
        } else {
            [127, 0, 0, 1].into()
        };
        SocketAddr::new(ip, 8080)
    });
    let identity = args
        .identity
        .filter(|i| !i.is_empty())
        .or_else(hostname)
        .context("no --identity, POD_NAME or hostname for leader election")?;
    Ok(OperatorSettings {
        leader_election_namespace: args
            .leader_election_namespace
            .unwrap_or_else(|| args.namespace.clone()),
        namespace: args.namespace,
        webhook_listen: args.webhook_listen,
        control_listen: args.control_listen,
        metrics_listen,
        webhook_url: args.webhook_url,
        webhook_name_suffix: args.webhook_configuration_suffix,
        control_url,
        gateway_image: args.gateway_image,
        recorder_url: args.recorder_url,
        recorder_ca_pem: match &args.recorder_ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --recorder-ca-file {}", path.display()))?,
            ),
            None => None,
        },
        cluster_dns: args.cluster_dns,
        identity,
        certificates,
        extra_names,
        max_waiters: args.max_long_polls,
        control_limits: args.control_limits,
        receipt_ca_rotation: tollgate_operator::receipt_ca::RotationPolicy {
            rotate_after_ms: Some(millis(args.receipt_ca_rotation_period)).filter(|ms| *ms > 0),
            publish_lead_ms: millis(args.receipt_ca_publish_lead),
            max_certificate_ms: tollgate_operator::control::document::CERTIFICATE_VALIDITY_MILLIS,
        },
    })
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tollgate_wire::server::raise_open_file_limit();
    let args = Args::parse();
    let kubeconfig = args.kubeconfig.clone();
    let settings = settings(args)?;
    let client = kube_client(kubeconfig.as_ref()).await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        if let Err(e) = shutdown_signal().await {
            tracing::error!(error = %e, "signal handling");
        }
        let _ = shutdown_tx.send(true);
    });
    run(client, settings, shutdown_rx).await
}

//! `kubectl tollgate local`: the embedded default. A recorder on SQLite and a
//! gateway in one process, configured from the same YAML manifests a cluster
//! would get, compiled by the same code the operator runs. Provider keys come
//! from Secret manifests in the directory, whose values may name environment
//! variables (`${OPENAI_API_KEY}`) so real keys stay out of files.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tollgate_crds::quota::{DEFAULT_WARNING_PERCENT, QuotaLimit, QuotaSubjects};
use tollgate_crds::quota_status::QuotaScope;
use tollgate_evidence::{
    DnsLabel, DnsSubdomain, KeyRole, PodIdentity, PodUid, PublicKey, SigningKey,
};
use tollgate_gateway::credentials::Credentials;
use tollgate_gateway::run::{Certifier, ConfigLoader, GatewayOptions, QuotaSource, RecorderLink};
use tollgate_recorder::dashboard::{QuotaCatalog, QuotaDefinition};
use tollgate_recorder::identity::{LOCAL_TOKEN_FILE, load_or_create_key, load_or_create_token};
use tollgate_recorder::server::ServeOptions;
use tollgate_wire::caller::CallerKey;
use tollgate_wire::client::FileToken;
use tollgate_wire::config::GatewayConfig;

use crate::compile::{ManifestObjects, create_private_dir, parse_labels};

/// The trust anchor auditors verify local bundles against.
pub const TRUST_ANCHOR_FILE: &str = "trust-anchor.yaml";
/// The local receipt CA key that certifies the gateway's ephemeral keys.
pub const RECEIPT_CA_KEY_FILE: &str = "receipt-ca.key";

/// The key end-user ids are hashed under (local mode keeps its own; a
/// cluster's operator keeps the cluster's).
pub const CALLER_KEY_FILE: &str = "caller.key";

/// Flags of `local`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Directory of manifests (LLMProvider, EgressPolicy, quotas, TrustAnchor,
    /// Secret), read recursively and reloaded when they change.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Where the recorder keeps its SQLite database, keys, token and the spool.
    #[arg(long, default_value = "tollgate-data")]
    pub data_dir: PathBuf,
    /// The gateway's API listener (OPENAI_BASE_URL / ANTHROPIC_BASE_URL).
    #[arg(long, default_value = "127.0.0.1:15080")]
    pub listen: SocketAddr,
    /// The gateway's admin listener: /live, /startup, /ready, /metrics, /keys.
    #[arg(long, default_value = "127.0.0.1:15081")]
    pub admin_listen: SocketAddr,
    /// The recorder's listener (loopback only).
    #[arg(long, default_value = "127.0.0.1:15090")]
    pub recorder_listen: SocketAddr,
    /// The namespace the manifests are for; namespaced objects without one
    /// are taken to be in it, and receipts carry it.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// A label of the pretend pod, KEY=VALUE (picks the EgressPolicy and quota subjects).
    #[arg(long = "pod-label")]
    pub pod_labels: Vec<String>,
    /// How long each receipt key certificate is valid (`30s`, `10m`, `24h`,
    /// `365d`); the gateway renews its key at two thirds of it, without a
    /// restart.
    #[arg(long, default_value = "365d", value_parser = tollgate_gateway::run::parse_lifetime)]
    pub key_certificate_lifetime: std::time::Duration,
}

/// Loads the manifests on every change: compile, then resolve keys.
#[derive(Debug)]
struct ManifestLoader {
    dir: PathBuf,
    namespace: String,
    caller_key: Option<CallerKey>,
}

impl ConfigLoader for ManifestLoader {
    fn load(&self) -> anyhow::Result<(GatewayConfig, Credentials)> {
        let objects = ManifestObjects::read(&self.dir, &self.namespace)?;
        let compiled = objects.compile(&self.namespace, &BTreeMap::new());
        if let Some(first) = compiled.problems.first() {
            let rest = compiled.problems.len() - 1;
            bail!(
                "{}: {}: {}{}",
                first.object,
                first.reason,
                first.message,
                if rest > 0 {
                    format!(" (and {rest} more problem(s))")
                } else {
                    String::new()
                }
            );
        }
        let credentials =
            credentials_for(&objects, &compiled.config)?.with_caller_key(self.caller_key.clone());
        Ok((compiled.config, credentials))
    }

    fn fingerprint(&self) -> Vec<u8> {
        let mut hasher = Sha256::new();
        fingerprint_dir(&self.dir, &mut hasher);
        hasher.finalize().to_vec()
    }
}

/// The quotas of the manifests that apply to the local namespace (as the
/// gateway's compiled config has them), for the dashboard's burn-downs. Read
/// again on every call, so edits show at once.
#[derive(Debug)]
struct ManifestQuotas {
    dir: PathBuf,
    namespace: String,
}

impl QuotaCatalog for ManifestQuotas {
    fn quotas(&self) -> Result<Vec<QuotaDefinition>, String> {
        let objects =
            ManifestObjects::read(&self.dir, &self.namespace).map_err(|e| format!("{e:#}"))?;
        let compiled = objects.compile(&self.namespace, &BTreeMap::new());
        let definition =
            |kind,
             namespace: Option<String>,
             name: Option<String>,
             spec: (&QuotaSubjects, &Vec<QuotaLimit>, Option<u8>)| {
                let name = name.unwrap_or_default();
                let id = format!("{}/{name}", namespace.as_deref().unwrap_or("cluster"));
                let (subjects, limits, warning_percent) = spec;
                compiled
                    .config
                    .quotas
                    .iter()
                    .any(|q| q.id == id)
                    .then(|| QuotaDefinition {
                        kind,
                        namespace,
                        name,
                        scope: QuotaScope {
                            namespaces: [self.namespace.clone()].into(),
                            service_accounts: subjects.service_accounts.clone(),
                        },
                        limits: limits.clone(),
                        warning_percent: warning_percent.unwrap_or(DEFAULT_WARNING_PERCENT),
                    })
            };
        let namespaced = objects.quotas.iter().filter_map(|q| {
            definition(
                "EgressQuota",
                q.metadata.namespace.clone(),
                q.metadata.name.clone(),
                (&q.spec.subjects, &q.spec.limits, q.spec.warning_percent),
            )
        });
        let cluster = objects.cluster_quotas.iter().filter_map(|q| {
            definition(
                "ClusterEgressQuota",
                None,
                q.metadata.name.clone(),
                (&q.spec.subjects, &q.spec.limits, q.spec.warning_percent),
            )
        });
        Ok(namespaced.chain(cluster).collect())
    }
}

/// The provider keys `config` needs, from the Secret manifests (with `${NAME}`
/// values read from the environment).
pub fn credentials_for(
    objects: &ManifestObjects,
    config: &GatewayConfig,
) -> anyhow::Result<Credentials> {
    let secrets = secret_values(objects, &|name| std::env::var(name).ok())?;
    Ok(Credentials::from_secrets(&secrets, config)?)
}

/// Paths, sizes and modification times of every file under `dir`: a cheap
/// change detector polled once a second.
fn fingerprint_dir(dir: &Path, hasher: &mut Sha256) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            fingerprint_dir(&path, hasher);
            continue;
        }
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(meta.len().to_be_bytes());
        if let Ok(modified) = meta.modified()
            && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
        {
            hasher.update(since.as_nanos().to_be_bytes());
        }
    }
}

/// Every Secret's keys as text. A value that is exactly `${NAME}` is read from
/// the environment variable NAME, which must be set: real keys never need to
/// be written into a manifest.
fn secret_values(
    objects: &ManifestObjects,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for secret in &objects.secrets {
        let name = secret
            .metadata
            .name
            .clone()
            .context("a Secret has no name")?;
        let values = out.entry(name.clone()).or_default();
        for (key, value) in secret.data.iter().flatten() {
            let text = String::from_utf8(value.0.clone())
                .map_err(|_| anyhow::anyhow!("Secret {name}: key {key:?} is not UTF-8"))?;
            values.insert(key.clone(), text);
        }
        for (key, value) in secret.string_data.iter().flatten() {
            values.insert(key.clone(), value.clone());
        }
        for (key, value) in values.iter_mut() {
            if let Some(var) = env_reference(value) {
                *value = env(var).with_context(|| {
                    format!("Secret {name}: key {key:?} names ${{{var}}}, which is not set")
                })?;
            }
        }
    }
    Ok(out)
}

/// `NAME` when `value` is exactly `${NAME}` with a plain variable name.
fn env_reference(value: &str) -> Option<&str> {
    let name = value.trim().strip_prefix("${")?.strip_suffix('}')?;
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    plain.then_some(name)
}

/// One TrustAnchor holding the local receipt CA (certifies gateway keys) and
/// the recorder key (signs checkpoints): everything `verify` needs.
pub fn trust_anchor_yaml(receipt_ca: &PublicKey, recorder: &PublicKey) -> String {
    let key = |public: &PublicKey, role: KeyRole| {
        let role = match role {
            KeyRole::ReceiptCa => "receiptCA",
            KeyRole::Recorder => "recorder",
        };
        format!(
            "  - keyId: \"{}\"\n    publicKey: \"{}\"\n    role: {role}\n    notBefore: \"1970-01-01T00:00:00Z\"\n    state: active\n",
            public.key_id(),
            public.to_base64(),
        )
    };
    format!(
        "# Written by `kubectl tollgate local`: the keys a bundle exported from this\n# data directory verifies against.\napiVersion: tollgate.dev/v1alpha1\nkind: TrustAnchor\nmetadata:\n  name: tollgate-local\nspec:\n  receiptKeys:\n{}{}",
        key(receipt_ca, KeyRole::ReceiptCa),
        key(recorder, KeyRole::Recorder),
    )
}

fn local_pod(namespace: &str) -> anyhow::Result<PodIdentity> {
    Ok(PodIdentity {
        namespace: DnsLabel::new(namespace.to_string())
            .with_context(|| format!("--namespace {namespace:?} is not a DNS label"))?,
        service_account: DnsSubdomain::new("local".to_string())?,
        pod_name: DnsSubdomain::new("tollgate-local".to_string())?,
        pod_uid: PodUid::new(uuid::Uuid::now_v7().hyphenated().to_string())?,
    })
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    load_or_create_key(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The caller key at `path`, created on first use: 32 random bytes as 64 hex
/// digits in a 0600 file, the same form as the local token, so one user keeps
/// one `caller_hash` across restarts.
fn load_caller_key(path: &Path) -> anyhow::Result<CallerKey> {
    let text =
        load_or_create_token(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    CallerKey::from_hex(&text).with_context(|| format!("{}", path.display()))
}

/// Runs local mode until Ctrl-C or SIGTERM.
pub fn run(args: &LocalArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // Warnings and errors (a stream the recorder refuses, a failing spool)
    // go to stderr; RUST_LOG can ask for more.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, out))
}

async fn serve(args: &LocalArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() || !args.recorder_listen.ip().is_loopback() {
        bail!("local mode listens on loopback only (--listen, --recorder-listen)");
    }
    let mut loader = ManifestLoader {
        dir: args.manifests.clone(),
        namespace: args.namespace.clone(),
        caller_key: None,
    };
    // Check the manifests before touching the data directory.
    let (config, _) = loader
        .load()
        .with_context(|| format!("{}: not a working configuration", args.manifests.display()))?;

    let data = &args.data_dir;
    create_private_dir(data)?;
    loader.caller_key = Some(load_caller_key(&data.join(CALLER_KEY_FILE))?);
    let loader = Arc::new(loader);
    let receipt_ca = load_key(&data.join(RECEIPT_CA_KEY_FILE))?;
    let recorder_key = load_key(&data.join(tollgate_recorder::identity::KEY_FILE))?;
    let anchor_path = data.join(TRUST_ANCHOR_FILE);
    std::fs::write(
        &anchor_path,
        trust_anchor_yaml(
            &PublicKey::of_signing_key(&receipt_ca),
            &PublicKey::of_signing_key(&recorder_key),
        ),
    )
    .with_context(|| format!("writing {}", anchor_path.display()))?;

    let (stop_recorder, recorder_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut recorder_options = ServeOptions::local(data.clone(), args.recorder_listen);
    recorder_options.trust_anchors = vec![anchor_path.clone()];
    recorder_options.quota_catalog = Some(Arc::new(ManifestQuotas {
        dir: args.manifests.clone(),
        namespace: args.namespace.clone(),
    }));
    let recorder = tollgate_recorder::server::start(recorder_options, async move {
        let _ = recorder_stopped.await;
    })
    .await
    .context("starting the recorder")?;
    let recorder_url = format!("http://{}", recorder.local_addr);

    let gateway = tollgate_gateway::run::start(GatewayOptions {
        loader,
        listen: args.listen,
        admin: tollgate_gateway::admin::AdminServer::bind(args.admin_listen).await?,
        spool_dir: data.join("spool"),
        spool_max_bytes: 64 * 1024 * 1024,
        pod: local_pod(&args.namespace)?,
        pod_labels: parse_labels(&args.pod_labels)?,
        node_id: "local".into(),
        limits: tollgate_wire::server::ServerLimits::GATEWAY,
        certifier: Certifier::LocalCa {
            key: Box::new(receipt_ca),
            lifetime: args.key_certificate_lifetime,
        },
        // Local mode is one gateway: the in-process authority, same semantics.
        quota: QuotaSource::InProcess,
        recorder: Some(RecorderLink {
            url: recorder_url.clone(),
            token: Arc::new(FileToken::new(data.join(LOCAL_TOKEN_FILE))),
            tls: tollgate_wire::client::public_roots().map_err(|e| anyhow::anyhow!("{e}"))?,
        }),
        metric_conventions: tollgate_gateway::genai_metrics::Conventions::from_env(),
        // Local mode has no ServiceAccount; providers with workload
        // identity fail closed here.
        identity_tokens: tollgate_gateway::workload_identity::TokenFiles {
            aws: tollgate_gateway::run::DEFAULT_AWS_TOKEN_FILE.into(),
            gcp: tollgate_gateway::run::DEFAULT_GCP_TOKEN_FILE.into(),
            azure: tollgate_gateway::run::DEFAULT_AZURE_TOKEN_FILE.into(),
        },
    })
    .await
    .context("starting the gateway")?;

    let lanes: Vec<String> = config
        .providers
        .iter()
        .map(|p| format!("{} ({:?})", p.name, p.api))
        .collect();
    let api = gateway.api_addr;
    writeln!(
        out,
        "tollgate local: gateway  http://{api}  policy {}",
        gateway.policy_hash
    )?;
    writeln!(out, "tollgate local: providers {}", lanes.join(", "))?;
    writeln!(
        out,
        "tollgate local: recorder {recorder_url}  (SQLite {})",
        data.join("recorder.db").display()
    )?;
    writeln!(
        out,
        "tollgate local: trust anchor {}",
        anchor_path.display()
    )?;
    let token = tollgate_recorder::identity::load_or_create_token(&data.join(LOCAL_TOKEN_FILE))
        .context("reading the recorder's local token")?;
    writeln!(
        out,
        "tollgate local: dashboard {}",
        dashboard_url(&recorder_url, &token)
    )?;
    writeln!(out, "export OPENAI_BASE_URL=http://{api}/v1")?;
    writeln!(out, "export ANTHROPIC_BASE_URL=http://{api}")?;
    writeln!(
        out,
        "tollgate local: ready; Ctrl-C stops and closes the receipt stream"
    )?;
    out.flush()?;

    wait_for_signal().await;
    let stream = gateway.stream_id.clone();
    gateway.shutdown().await.context("stopping the gateway")?;
    let _ = stop_recorder.send(());
    let _ = recorder.handle.await;
    writeln!(
        out,
        "tollgate local: stopped; receipt stream {stream} closed"
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The dashboard's address with the recorder's local token in the fragment,
/// which browsers never send to a server; the page moves it out of the address
/// bar into the tab's session storage.
pub fn dashboard_url(recorder_url: &str, token: &str) -> String {
    format!("{recorder_url}/dashboard/#token={token}")
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_are_exact_and_plain() {
        assert_eq!(env_reference("${OPENAI_API_KEY}"), Some("OPENAI_API_KEY"));
        assert_eq!(env_reference(" ${K_1} "), Some("K_1"));
        assert_eq!(env_reference("sk-${K}"), None);
        assert_eq!(env_reference("${}"), None);
        assert_eq!(env_reference("${1A}"), None);
        assert_eq!(env_reference("${A-B}"), None);
        assert_eq!(env_reference("sk-plain"), None);
    }

    fn objects_with_secret(value: &str) -> ManifestObjects {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "openai-keys"}, "stringData": {"key-a": value}}),
        )
        .unwrap();
        ManifestObjects {
            secrets: vec![secret],
            ..ManifestObjects::default()
        }
    }

    #[test]
    fn secret_values_resolve_env_references_and_name_missing_ones() {
        let objects = objects_with_secret("${TG_TEST_KEY}");
        let env = |name: &str| (name == "TG_TEST_KEY").then(|| "sk-from-env".to_string());
        let values = secret_values(&objects, &env).unwrap();
        assert_eq!(values["openai-keys"]["key-a"], "sk-from-env");

        let none = |_: &str| None;
        let err = secret_values(&objects, &none).unwrap_err();
        assert!(err.to_string().contains("TG_TEST_KEY"), "{err}");

        let literal = objects_with_secret("sk-literal");
        assert_eq!(
            secret_values(&literal, &none).unwrap()["openai-keys"]["key-a"],
            "sk-literal"
        );
    }

    #[test]
    fn the_trust_anchor_holds_both_keys_and_parses() {
        let ca = SigningKey::from_bytes(&[1; 32]);
        let rec = SigningKey::from_bytes(&[2; 32]);
        let yaml = trust_anchor_yaml(
            &PublicKey::of_signing_key(&ca),
            &PublicKey::of_signing_key(&rec),
        );
        let anchor: tollgate_crds::TrustAnchor = serde_saphyr::from_str(&yaml).unwrap();
        let keys = &anchor.spec.receipt_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0].public_key,
            PublicKey::of_signing_key(&ca).to_base64()
        );
        assert_eq!(
            keys[1].public_key,
            PublicKey::of_signing_key(&rec).to_base64()
        );
    }

    #[test]
    fn fingerprints_change_when_a_manifest_changes() {
        let dir = std::env::temp_dir().join(format!("tg-local-fp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.yaml"), "a: 1\n").unwrap();
        let loader = ManifestLoader {
            dir: dir.clone(),
            namespace: "default".into(),
            caller_key: None,
        };
        let before = loader.fingerprint();
        assert_eq!(before, loader.fingerprint());
        std::fs::write(dir.join("sub/a.yaml"), "a: 12\n").unwrap();
        assert_ne!(before, loader.fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `kubectl tollgate inject -f FILE`: offline injection, like
//! `istioctl kube-inject`. Pods and the pod templates of workloads get
//! exactly what the operator's mutating webhook would add, by the same code
//! (`tollgate_admission`); other objects pass through unchanged.

use std::io::{Read as _, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;
use tollgate_admission::view::PolicySummary;
use tollgate_admission::workload::{pod_template, set_pod_template};
use tollgate_admission::{InjectionSettings, NamespaceView, inject};
use tollgate_crds::manifest::MAX_MANIFEST_FILE_BYTES;

/// Installation flags shared by `inject` and `lint`.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallationArgs {
    /// The gateway image (also used for the init-network container).
    #[arg(long, default_value = concat!("tollgate/gateway:v", env!("CARGO_PKG_VERSION")))]
    pub gateway_image: String,
    /// The operator's namespace: objects there are never injected.
    #[arg(long, default_value = "tollgate-system")]
    pub operator_namespace: String,
    /// The control endpoint URL; defaults to the operator Service.
    #[arg(long)]
    pub control_url: Option<String>,
    /// The recorder URL gateways ship receipts to.
    #[arg(long)]
    pub recorder_url: Option<String>,
    /// A cluster DNS resolver; repeatable.
    #[arg(long = "cluster-dns", default_value = "10.96.0.10")]
    pub cluster_dns: Vec<IpAddr>,
    /// Namespace for objects that name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

impl InstallationArgs {
    pub fn settings(&self) -> InjectionSettings {
        InjectionSettings {
            gateway_image: self.gateway_image.clone(),
            operator_namespace: self.operator_namespace.clone(),
            control_url: self.control_url.clone().unwrap_or_else(|| {
                format!(
                    "https://tollgate-operator.{}.svc:9443",
                    self.operator_namespace
                )
            }),
            recorder_url: self.recorder_url.clone(),
            cluster_dns: self.cluster_dns.clone(),
        }
    }
}

/// Flags of `inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The manifest file (YAML, several documents allowed); `-` reads stdin.
    #[arg(long, short = 'f')]
    pub filename: PathBuf,
    #[command(flatten)]
    pub installation: InstallationArgs,
}

/// One YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(default)
    }
}

/// Reads a file (or stdin for `-`) into its non-empty YAML documents.
/// `List` objects are flattened into their items.
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Document>> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_MANIFEST_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .context("reading stdin")?;
        text
    } else {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if size > MAX_MANIFEST_FILE_BYTES {
            bail!(
                "{}: {size} bytes is over the {MAX_MANIFEST_FILE_BYTES}-byte limit",
                path.display()
            );
        }
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    if text.len() as u64 > MAX_MANIFEST_FILE_BYTES {
        bail!("input is over the {MAX_MANIFEST_FILE_BYTES}-byte limit");
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid YAML: {e}", path.display()))?;
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        if !doc.is_object() {
            bail!("{}: a document is not a Kubernetes object", path.display());
        }
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            for item in doc
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(Document {
                    value: item.clone(),
                });
            }
        } else {
            out.push(Document { value: doc });
        }
    }
    Ok(out)
}

/// The EgressPolicies among the documents, for the namespace view.
pub fn policies_in(
    docs: &[Document],
    default_namespace: &str,
    namespace: &str,
) -> Vec<PolicySummary> {
    let mut policies: Vec<PolicySummary> = docs
        .iter()
        .filter(|d| d.kind() == "EgressPolicy" && d.namespace_or(default_namespace) == namespace)
        .filter_map(|d| serde_json::from_value::<tollgate_crds::EgressPolicy>(d.value.clone()).ok())
        .map(|p| PolicySummary::of(&p))
        .collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    policies
}

/// Offline, every namespace is taken to be governed: that is what `inject`
/// is for.
pub fn namespace_view(
    docs: &[Document],
    default_namespace: &str,
    namespace: &str,
) -> NamespaceView {
    NamespaceView {
        name: namespace.to_string(),
        governed: true,
        policies: policies_in(docs, default_namespace, namespace),
    }
}

/// Injects one document; returns it unchanged when it is neither a pod nor
/// a workload, or injection does not apply.
pub fn inject_document(
    doc: &Document,
    docs: &[Document],
    installation: &InstallationArgs,
) -> anyhow::Result<Value> {
    let settings = installation.settings();
    let namespace = doc.namespace_or(&installation.namespace).to_string();
    let ns = namespace_view(docs, &installation.namespace, &namespace);
    let what = format!("{}/{}", doc.kind(), doc.name());
    if doc.kind() == "Pod" {
        let pod: Pod = serde_json::from_value(doc.value.clone())
            .with_context(|| format!("{what} is malformed"))?;
        let injected = inject(&pod, &ns, &settings).with_context(|| format!("injecting {what}"))?;
        let mut value = doc.value.clone();
        json_patch::patch(&mut value, &injected.patch)
            .with_context(|| format!("patching {what}"))?;
        return Ok(value);
    }
    let Some(template) = pod_template(&doc.value) else {
        return Ok(doc.value.clone());
    };
    let mut template = template.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let mut meta = template.metadata.take().unwrap_or_default();
    let mut spec = template.spec.take().unwrap_or_else(PodSpec::default);
    if tollgate_admission::inject::decide(&meta, &ns, &settings)
        == tollgate_admission::inject::Decision::Inject
    {
        tollgate_admission::inject::inject_spec(&mut meta, &mut spec, &ns, &settings)
            .with_context(|| format!("injecting {what}"))?;
    }
    template.metadata = Some(meta);
    template.spec = Some(spec);
    let mut value = doc.value.clone();
    set_pod_template(&mut value, &template).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(value)
}

/// Runs `inject`.
pub fn run(args: &InjectArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let docs = read_documents(&args.filename)?;
    let mut first = true;
    for doc in &docs {
        let injected = inject_document(doc, &docs, &args.installation)?;
        if !first {
            writeln!(out, "---")?;
        }
        first = false;
        let yaml = serde_saphyr::to_string(&injected).context("writing YAML")?;
        write!(out, "{yaml}")?;
        if !yaml.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

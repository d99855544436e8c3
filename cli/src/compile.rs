//! `kubectl tollgate compile`: the gateway config a namespace would get, from
//! manifests, compiled by the same code the operator runs. Also writes
//! provider keys from Secret manifests into a credentials directory, for
//! running `tollgate-gateway run` by hand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use tollgate_crds::compile::{ClusterObjects, Compiled, compile_namespace_config};
use tollgate_crds::manifest::{Manifest, read_manifest_dir};

/// Flags of `compile`.
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Directory of manifests (YAML or JSON), read recursively.
    #[arg(long)]
    pub manifests: PathBuf,
    /// The namespace to compile for; namespaced objects without a namespace
    /// are taken to be in it.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// A label of the namespace, KEY=VALUE (picks ClusterEgressQuotas); repeatable.
    #[arg(long = "namespace-label")]
    pub namespace_labels: Vec<String>,
    /// Write the config here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Also write provider keys from Secret manifests to DIR/<secret>/<key> (mode 0600).
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
}

/// The objects in a manifest directory, with namespaced ones defaulted to `namespace`.
#[derive(Debug, Default)]
pub struct ManifestObjects {
    pub providers: Vec<tollgate_crds::LLMProvider>,
    pub policies: Vec<tollgate_crds::EgressPolicy>,
    pub quotas: Vec<tollgate_crds::EgressQuota>,
    pub cluster_quotas: Vec<tollgate_crds::ClusterEgressQuota>,
    pub trust_anchors: Vec<tollgate_crds::TrustAnchor>,
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
}

impl ManifestObjects {
    /// Reads `dir` and sorts its objects by kind.
    pub fn read(dir: &Path, namespace: &str) -> anyhow::Result<Self> {
        let mut objects = Self::default();
        for (_, manifest) in read_manifest_dir(dir)? {
            match manifest {
                Manifest::LLMProvider(p) => objects.providers.push(*p),
                Manifest::EgressPolicy(mut p) => {
                    p.metadata
                        .namespace
                        .get_or_insert_with(|| namespace.to_string());
                    objects.policies.push(*p);
                }
                Manifest::EgressQuota(mut q) => {
                    q.metadata
                        .namespace
                        .get_or_insert_with(|| namespace.to_string());
                    objects.quotas.push(*q);
                }
                Manifest::ClusterEgressQuota(q) => objects.cluster_quotas.push(*q),
                Manifest::TrustAnchor(a) => objects.trust_anchors.push(*a),
                Manifest::Secret(s) => objects.secrets.push(*s),
                Manifest::RecorderConfig(_) | Manifest::Other { .. } => {}
            }
        }
        Ok(objects)
    }

    /// Compiles the namespace's config.
    pub fn compile(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Compiled {
        let view = ClusterObjects {
            providers: &self.providers,
            policies: &self.policies,
            quotas: &self.quotas,
            cluster_quotas: &self.cluster_quotas,
            trust_anchors: &self.trust_anchors,
        };
        compile_namespace_config(namespace, labels, view)
    }

    /// Writes every key of every Secret to `dir/<secret>/<key>`, readable by
    /// the owner only.
    pub fn write_credentials(&self, dir: &Path) -> anyhow::Result<usize> {
        let mut written = 0;
        for secret in &self.secrets {
            let name = secret
                .metadata
                .name
                .clone()
                .context("a Secret has no name")?;
            let secret_dir = dir.join(&name);
            create_private_dir(&secret_dir)?;
            let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, v) in secret.data.iter().flatten() {
                values.insert(k.clone(), v.0.clone());
            }
            for (k, v) in secret.string_data.iter().flatten() {
                values.insert(k.clone(), v.clone().into_bytes());
            }
            for (key, value) in values {
                if key.contains('/') || key.starts_with('.') {
                    bail!("Secret {name}: key {key:?} is not a plain file name");
                }
                write_private_file(&secret_dir.join(&key), &value)?;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// Creates `dir` (and parents), readable by the owner only.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Parses `KEY=VALUE` labels.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label {l:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Runs `compile`. Problems are printed to stderr; any problem exits 1.
pub fn run(args: &CompileArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let labels = parse_labels(&args.namespace_labels)?;
    let objects = ManifestObjects::read(&args.manifests, &args.namespace)?;
    let compiled = objects.compile(&args.namespace, &labels);
    for p in &compiled.problems {
        eprintln!("compile: {}: {}: {}", p.object, p.reason, p.message);
    }
    if !compiled.problems.is_empty() {
        // A gateway may be watching the output: never hand it a degraded config.
        eprintln!("compile: not writing a config with problems");
        return Ok(ExitCode::FAILURE);
    }
    let json = serde_json::to_string_pretty(&compiled.config)? + "\n";
    match &args.output {
        Some(path) => write_atomically(path, json.as_bytes())?,
        None => out.write_all(json.as_bytes())?,
    }
    if let Some(dir) = &args.credentials_dir {
        let n = objects.write_credentials(dir)?;
        eprintln!("compile: wrote {n} key(s) under {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes through a temporary file and a rename, so a reader (a gateway
/// watching the file) sees the old config or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_compiles_without_problems() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let mut out = Vec::new();
        let args = CompileArgs {
            manifests: dir,
            namespace: "demo".into(),
            namespace_labels: vec![],
            output: None,
            credentials_dir: None,
        };
        assert_eq!(run(&args, &mut out).unwrap(), ExitCode::SUCCESS);
        let config: tollgate_wire::config::GatewayConfig = serde_json::from_slice(&out).unwrap();
        assert_eq!(config.namespace, "demo");
        assert_eq!(config.providers[0].name, "dry-run");
    }

    #[test]
    fn labels_need_an_equals_sign() {
        assert!(parse_labels(&["a=b".into()]).is_ok());
        assert!(parse_labels(&["ab".into()]).is_err());
    }
}

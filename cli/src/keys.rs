//! `kubectl tollgate keys`: the cluster's trust anchors as one YAML file an auditor
//! keeps and later hands to `kubectl tollgate verify --trust-anchor`. It holds the
//! receipt CA keys of every `TrustAnchor` in the cluster and the recorder's own
//! checkpoint key (served through the API server), and nothing else: no status,
//! no server-side metadata, no upstream TLS settings.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::api::{Api, ListParams};
use tollgate_crds::{TrustAnchor, TrustAnchorSpec};

/// Flags of `keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// Write the YAML here (mode 0644) instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// The auditor's copy of one anchor: its name and receipt keys only.
pub fn auditor_copy(anchor: &TrustAnchor) -> Option<TrustAnchor> {
    if anchor.spec.receipt_keys.is_empty() {
        return None;
    }
    let name = anchor.metadata.name.clone().unwrap_or_default();
    let mut copy = TrustAnchor::new(
        &name,
        TrustAnchorSpec {
            receipt_keys: anchor.spec.receipt_keys.clone(),
            upstream: Vec::new(),
        },
    );
    copy.status = None;
    Some(copy)
}

/// Joins anchors and the recorder's anchor YAML into one multi-document file.
pub fn render(anchors: &[TrustAnchor], recorder_anchor_yaml: &str) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for anchor in anchors.iter().filter_map(auditor_copy) {
        docs.push(serde_saphyr::to_string(&anchor).context("writing a TrustAnchor as YAML")?);
    }
    if !recorder_anchor_yaml.trim().is_empty() {
        docs.push(recorder_anchor_yaml.trim_end().to_string() + "\n");
    }
    if docs.is_empty() {
        bail!("the cluster has no TrustAnchor with receipt keys and the recorder named no key");
    }
    Ok(docs.join("---\n"))
}

async fn fetch() -> anyhow::Result<String> {
    let client = crate::cluster::client().await?;
    let anchors = Api::<TrustAnchor>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing TrustAnchors")?
        .items;
    let path = format!("{}/recorderkeys", crate::cluster::API_BASE);
    let recorder = crate::cluster::get(&client, &path).await?;
    render(&anchors, &recorder)
}

/// Runs `keys`.
pub fn run(args: &KeysArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let yaml = crate::usage::runtime()?.block_on(fetch())?;
    match &args.output {
        None => out.write_all(yaml.as_bytes())?,
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("writing {}", path.display()))?;
            writeln!(out, "wrote {}", path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::manifest::{Manifest, parse_manifests};

    const CA: &str = r#"apiVersion: tollgate.dev/v1alpha1
kind: TrustAnchor
metadata:
  name: tollgate-receipt-ca
  resourceVersion: "42"
  uid: 0d5c2e3a-0000-4000-8000-000000000000
spec:
  receiptKeys:
  - keyId: "sha256:AAAA"
    publicKey: "BBBB"
    role: receiptCA
    notBefore: "2025-01-01T00:00:00.000Z"
    state: active
"#;

    #[test]
    fn the_auditor_copy_keeps_only_names_and_receipt_keys() {
        let anchors: Vec<TrustAnchor> = parse_manifests("t", CA)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                Manifest::TrustAnchor(a) => Some(*a),
                _ => None,
            })
            .collect();
        let upstream_only = TrustAnchor::new(
            "upstream",
            TrustAnchorSpec {
                receipt_keys: Vec::new(),
                upstream: Vec::new(),
            },
        );
        let recorder = "apiVersion: tollgate.dev/v1alpha1\nkind: TrustAnchor\nmetadata:\n  name: recorder\nspec:\n  receiptKeys: []\n";
        let yaml = render(&[anchors[0].clone(), upstream_only], recorder).unwrap();
        assert!(!yaml.contains("resourceVersion"), "{yaml}");
        assert!(!yaml.contains("uid:"), "{yaml}");
        assert!(!yaml.contains("name: upstream"), "{yaml}");
        let back = parse_manifests("t", &yaml).unwrap();
        assert_eq!(back.len(), 2, "{yaml}");
        assert!(render(&[], "").is_err());
    }
}

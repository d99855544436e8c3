//! Reading Kubernetes YAML manifests into typed Tollgate objects. Used by the
//! example tests, `kubectl-tollgate local` and `lint`.
//!
//! Parsing is pure (`parse_manifests`); `read_manifest_dir` is the thin I/O
//! shell with bounded reads.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    API_VERSION, ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, RecorderConfig,
    TrustAnchor,
};

/// Largest manifest file read, in bytes.
pub const MAX_MANIFEST_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most files read from one directory tree.
pub const MAX_MANIFEST_FILES: usize = 1_000;
/// Most YAML documents in one file.
pub const MAX_DOCUMENTS_PER_FILE: usize = 1_000;

/// One object from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    LLMProvider(Box<LLMProvider>),
    EgressPolicy(Box<EgressPolicy>),
    EgressQuota(Box<EgressQuota>),
    ClusterEgressQuota(Box<ClusterEgressQuota>),
    TrustAnchor(Box<TrustAnchor>),
    RecorderConfig(Box<RecorderConfig>),
    /// A core Secret, for provider credentials in local mode.
    Secret(Box<Secret>),
    /// Any other kind: kept so callers can say what they ignored.
    Other {
        api_version: String,
        kind: String,
        name: String,
    },
}

impl Manifest {
    /// `kind` as written in the manifest.
    pub fn kind(&self) -> &str {
        match self {
            Manifest::LLMProvider(_) => "LLMProvider",
            Manifest::EgressPolicy(_) => "EgressPolicy",
            Manifest::EgressQuota(_) => "EgressQuota",
            Manifest::ClusterEgressQuota(_) => "ClusterEgressQuota",
            Manifest::TrustAnchor(_) => "TrustAnchor",
            Manifest::RecorderConfig(_) => "RecorderConfig",
            Manifest::Secret(_) => "Secret",
            Manifest::Other { kind, .. } => kind,
        }
    }
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: document {index}: {message}")]
    Document {
        source_name: String,
        index: usize,
        message: String,
    },
    #[error("{source_name}: more than {MAX_DOCUMENTS_PER_FILE} documents")]
    TooManyDocuments { source_name: String },
    #[error(
        "{path}: {size} bytes is over the {MAX_MANIFEST_FILE_BYTES}-byte limit for a manifest file"
    )]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("{path}: more than {MAX_MANIFEST_FILES} manifest files")]
    TooManyFiles { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses every YAML document in `text`. Empty documents are skipped.
/// `source_name` names the input in errors.
pub fn parse_manifests(source_name: &str, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    if docs.len() > MAX_DOCUMENTS_PER_FILE {
        return Err(ManifestError::TooManyDocuments {
            source_name: source_name.to_string(),
        });
    }
    docs.into_iter()
        .enumerate()
        .filter(|(_, doc)| !doc.is_null())
        .map(|(index, doc)| {
            parse_document(doc).map_err(|message| ManifestError::Document {
                source_name: source_name.to_string(),
                index,
                message,
            })
        })
        .collect()
}

fn parse_document(doc: Value) -> Result<Manifest, String> {
    let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
    let api_version = field("apiVersion").ok_or("missing apiVersion")?;
    let kind = field("kind").ok_or("missing kind")?;
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if api_version == "v1" && kind == "Secret" {
        // Serde's messages can quote the offending value, and a Secret's values
        // are keys: report the shape of the problem only.
        return serde_json::from_value::<Secret>(doc)
            .map(|s| Manifest::Secret(Box::new(s)))
            .map_err(|_| {
                format!("Secret {name:?} is malformed (details withheld: Secrets hold keys)")
            });
    }
    if api_version != API_VERSION {
        return Ok(Manifest::Other {
            api_version,
            kind,
            name,
        });
    }
    let typed = match kind.as_str() {
        "LLMProvider" => Manifest::LLMProvider(typed(doc, &kind, &name)?),
        "EgressPolicy" => Manifest::EgressPolicy(typed(doc, &kind, &name)?),
        "EgressQuota" => Manifest::EgressQuota(typed(doc, &kind, &name)?),
        "ClusterEgressQuota" => Manifest::ClusterEgressQuota(typed(doc, &kind, &name)?),
        "TrustAnchor" => Manifest::TrustAnchor(typed(doc, &kind, &name)?),
        "RecorderConfig" => Manifest::RecorderConfig(typed(doc, &kind, &name)?),
        _ => return Err(format!("unknown kind {kind:?} in {API_VERSION}")),
    };
    Ok(typed)
}

fn typed<T: DeserializeOwned>(doc: Value, kind: &str, name: &str) -> Result<Box<T>, String> {
    serde_json::from_value(doc)
        .map(Box::new)
        .map_err(|e| format!("{kind} {name:?}: {e}"))
}

/// Reads every `.yaml`, `.yml` and `.json` file under `dir` (recursively, in
/// path order) and parses it. Reads are bounded in size and count.
pub fn read_manifest_dir(dir: &Path) -> Result<Vec<(PathBuf, Manifest)>, ManifestError> {
    let mut files = Vec::new();
    collect_manifest_files(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        for manifest in read_manifest_file(&path)? {
            out.push((path.clone(), manifest));
        }
    }
    Ok(out)
}

/// Reads and parses one manifest file, refusing files over the size limit.
pub fn read_manifest_file(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_MANIFEST_FILE_BYTES {
        return Err(ManifestError::FileTooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_manifests(&path.display().to_string(), &text)
}

fn collect_manifest_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_manifest_files(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            if files.len() >= MAX_MANIFEST_FILES {
                return Err(ManifestError::TooManyFiles {
                    path: dir.to_path_buf(),
                });
            }
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDER: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: LLMProvider\nmetadata:\n  name: dry\nspec:\n  api: dryRun\n  models:\n  - name: m\n";

    #[test]
    fn parses_multi_document_yaml_and_skips_empty_documents() {
        let text = format!(
            "---\n{PROVIDER}---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
        );
        let objects = parse_manifests("t.yaml", &text).unwrap();
        assert_eq!(objects.len(), 2);
        let Manifest::LLMProvider(p) = &objects[0] else {
            panic!("expected a provider")
        };
        assert_eq!(p.spec.models[0].name, "m");
        assert_eq!(
            p.spec.timeouts.connect_millis, 5_000,
            "serde defaults apply"
        );
        assert_eq!(
            objects[1],
            Manifest::Other {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "x".into()
            }
        );
    }

    #[test]
    fn rejects_unknown_tollgate_kind_with_location() {
        let err = parse_manifests(
            "f.yaml",
            "apiVersion: tollgate.dev/v1alpha1\nkind: Nope\nmetadata: {name: a}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml: document 0: unknown kind \"Nope\" in tollgate.dev/v1alpha1"
        );
    }

    #[test]
    fn rejects_bad_enum_value() {
        let bad = PROVIDER.replace("dryRun", "palm");
        let err = parse_manifests("f.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains("unknown variant `palm`"), "{err}");
    }

    #[test]
    fn secret_errors_never_echo_values() {
        let text =
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: k\nstringData: sk-live-very-secret\n";
        let err = parse_manifests("s.yaml", text).unwrap_err().to_string();
        assert!(!err.contains("sk-live"), "{err}");
        assert!(err.contains("details withheld"), "{err}");
    }

    #[test]
    fn rejects_invalid_yaml_and_missing_kind() {
        assert!(matches!(
            parse_manifests("f", "a: [1, 2"),
            Err(ManifestError::Yaml { .. })
        ));
        let err = parse_manifests("f", "apiVersion: v1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing kind"), "{err}");
    }
}

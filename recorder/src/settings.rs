//! Recorder settings: the `RecorderConfig` custom resource (read from a YAML file,
//! or its defaults) turned into the plain numbers the recorder runs on, plus the
//! fixed bounds stated in `docs/recorder.md`.

use std::path::Path;

use tollgate_crds::manifest::{Manifest, read_manifest_file};
use tollgate_crds::recorder_config::{CheckpointSink, SinkType, StorageType};
use tollgate_crds::{RecorderConfig, RecorderConfigSpec};

/// Most envelopes one bundle export may hold (the verifier's default bound).
pub const MAX_EXPORT_ENVELOPES: u64 = 2_000_000;
/// Most segments one bundle export may hold (the verifier's default bound).
pub const MAX_EXPORT_SEGMENTS: u64 = 100_000;
/// Largest serialized bundle the recorder returns (the verifier's default bound).
pub const MAX_EXPORT_BYTES: u64 = 256 * 1024 * 1024;
/// Most rows a usage answer holds; more are refused with a hint to narrow the query.
pub const MAX_USAGE_ROWS: usize = 10_000;
/// Most warnings listed in a usage answer; more are counted.
pub const MAX_USAGE_WARNINGS: usize = 100;
/// Longest lease a caller may ask for.
pub const MAX_LEASE_TTL_SECONDS: u64 = 300;
/// Lease length when the caller names none.
pub const DEFAULT_LEASE_TTL_SECONDS: u64 = 60;
/// Largest lease request/renew/return body.
pub const MAX_LEASE_BODY_BYTES: usize = 64 * 1024;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] tollgate_crds::manifest::ManifestError),
    /// The file holds no RecorderConfig, or more than one.
    #[error("{0}")]
    Invalid(String),
}

/// Where a checkpoint copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Append one JSON line per checkpoint to this file.
    File(std::path::PathBuf),
    /// POST each checkpoint as JSON to this URL.
    Http(String),
}

/// A named checkpoint sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// The sink's name (a bounded metric label: at most 8 sinks).
    pub name: String,
    /// Where to.
    pub target: SinkTarget,
}

impl SinkSettings {
    /// What the store records a sink's progress under: its name and target, so
    /// a sink pointed somewhere new starts from nothing.
    pub fn progress_key(&self) -> String {
        match &self.target {
            SinkTarget::File(path) => format!("{} file:{}", self.name, path.display()),
            SinkTarget::Http(url) => format!("{} http:{url}", self.name),
        }
    }
}

/// What the recorder runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Seal the open segment once it holds this many envelopes.
    pub seal_max_envelopes: u64,
    /// Seal the open segment once it is this old (milliseconds).
    pub seal_max_age_ms: u64,
    /// Most envelopes in one ingest batch.
    pub max_batch_receipts: usize,
    /// Largest ingest body in bytes.
    pub max_body_bytes: usize,
    /// Checkpoint sinks.
    pub sinks: Vec<SinkSettings>,
    /// Delete sealed segments older than this (milliseconds), once every sink
    /// holds a checkpoint covering them; `None` keeps everything.
    pub retention_ms: Option<u64>,
    /// Storage backend named by the config.
    pub storage: StorageType,
    /// SQLite path named by the config, if any.
    pub sqlite_path: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_spec(&RecorderConfigSpec {
            storage: Default::default(),
            sealing: Default::default(),
            retention: None,
            ingest: Default::default(),
            checkpoint_sinks: Vec::new(),
        })
        .unwrap_or_else(|_| Self {
            seal_max_envelopes: 10_000,
            seal_max_age_ms: 300_000,
            max_batch_receipts: 1_000,
            max_body_bytes: 16 * 1024 * 1024,
            sinks: Vec::new(),
            retention_ms: None,
            storage: StorageType::Sqlite,
            sqlite_path: None,
        })
    }
}

impl Settings {
    /// Converts a `RecorderConfig` spec.
    pub fn from_spec(spec: &RecorderConfigSpec) -> Result<Self, SettingsError> {
        let sinks = spec
            .checkpoint_sinks
            .iter()
            .map(sink_settings)
            .collect::<Result<Vec<_>, _>>()?;
        if sinks.len() > 8 {
            return Err(SettingsError::Invalid(
                "at most 8 checkpoint sinks are allowed".into(),
            ));
        }
        Ok(Self {
            seal_max_envelopes: u64::from(spec.sealing.max_envelopes.max(1)),
            seal_max_age_ms: u64::from(spec.sealing.max_age_seconds.max(1)) * 1_000,
            max_batch_receipts: usize::try_from(spec.ingest.max_batch_receipts.max(1))
                .unwrap_or(1_000),
            max_body_bytes: usize::try_from(spec.ingest.max_body_bytes.max(65_536))
                .unwrap_or(16 * 1024 * 1024),
            sinks,
            retention_ms: spec
                .retention
                .as_ref()
                .map(|r| u64::from(r.sealed_segment_days.max(1)) * 86_400_000),
            storage: spec.storage.type_,
            sqlite_path: spec.storage.sqlite.as_ref().map(|s| s.path.clone()),
        })
    }

    /// Reads the one `RecorderConfig` in a YAML file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let configs: Vec<RecorderConfig> = read_manifest_file(path)?
            .into_iter()
            .filter_map(|m| match m {
                Manifest::RecorderConfig(c) => Some(*c),
                _ => None,
            })
            .collect();
        match configs.as_slice() {
            [one] => Self::from_spec(&one.spec),
            [] => Err(SettingsError::Invalid(format!(
                "{}: no RecorderConfig found",
                path.display()
            ))),
            _ => Err(SettingsError::Invalid(format!(
                "{}: more than one RecorderConfig (it is a singleton named default)",
                path.display()
            ))),
        }
    }
}

fn sink_settings(sink: &CheckpointSink) -> Result<SinkSettings, SettingsError> {
    let target = match (sink.type_, &sink.path, &sink.url) {
        (SinkType::File, Some(path), None) => SinkTarget::File(path.into()),
        (SinkType::Http, None, Some(url)) => {
            if !(url.starts_with("https://") || is_loopback_http(url)) {
                return Err(SettingsError::Invalid(format!(
                    "checkpoint sink {}: url must use https unless its host is loopback",
                    sink.name
                )));
            }
            SinkTarget::Http(url.clone())
        }
        _ => {
            return Err(SettingsError::Invalid(format!(
                "checkpoint sink {}: a file sink needs path, an http sink needs url",
                sink.name
            )));
        }
    };
    Ok(SinkSettings {
        name: sink.name.clone(),
        target,
    })
}

fn is_loopback_http(url: &str) -> bool {
    ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| {
            url.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_crd_defaults() {
        let s = Settings::default();
        assert_eq!(s.seal_max_envelopes, 10_000);
        assert_eq!(s.seal_max_age_ms, 300_000);
        assert_eq!(s.max_batch_receipts, 1_000);
        assert_eq!(s.max_body_bytes, 16 * 1024 * 1024);
        assert!(s.sinks.is_empty());
    }

    #[test]
    fn reads_a_recorder_config_file() {
        let dir = std::env::temp_dir().join(format!("tg-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rc.yaml");
        std::fs::write(
            &path,
            "apiVersion: tollgate.dev/v1alpha1\nkind: RecorderConfig\nmetadata:\n  name: default\nspec:\n  sealing:\n    maxEnvelopes: 5\n    maxAgeSeconds: 2\n  ingest:\n    maxBatchReceipts: 10\n  checkpointSinks:\n  - name: f\n    type: file\n    path: /tmp/x.jsonl\n  - name: h\n    type: http\n    url: http://127.0.0.1:9/cp\n",
        )
        .unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!((s.seal_max_envelopes, s.seal_max_age_ms), (5, 2_000));
        assert_eq!(s.max_batch_receipts, 10);
        assert_eq!(s.sinks.len(), 2);
        assert_eq!(s.sinks[0].target, SinkTarget::File("/tmp/x.jsonl".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_http_sinks_only() {
        assert!(is_loopback_http("http://127.0.0.1:8080/x"));
        assert!(is_loopback_http("http://localhost"));
        assert!(!is_loopback_http("http://localhost.evil.com/"));
        assert!(!is_loopback_http("http://10.0.0.1/"));
    }
}

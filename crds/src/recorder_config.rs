//! `RecorderConfig`: the singleton (named `default`) that configures the
//! recorder's storage, segment sealing, retention, ingest limits and
//! checkpoint sinks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name the one `RecorderConfig` must have.
pub const SINGLETON_NAME: &str = "default";

/// Configuration of the cluster recorder. There is exactly one, named `default`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "RecorderConfig",
    plural = "recorderconfigs",
    shortname = "tgrc",
    category = "tollgate",
    status = "RecorderConfigStatus",
    derive = "PartialEq",
    doc = "Configuration of the cluster recorder: storage, sealing, retention, ingest limits and checkpoint sinks. A singleton named default.",
    validation = Rule::new("self.metadata.name == 'default'")
        .message("RecorderConfig is a singleton: its name must be 'default'"),
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.storage.type"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RecorderConfigSpec {
    /// Where receipts, segments and quota counters live.
    #[serde(default)]
    pub storage: Storage,

    /// When the open segment is sealed into a signed checkpoint.
    #[serde(default)]
    pub sealing: Sealing,

    /// How long sealed segments are kept. Absent keeps them forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// Bounds on receipt batch ingestion.
    #[serde(default)]
    pub ingest: IngestLimits,

    /// Places outside the recorder that receive a copy of every checkpoint, so
    /// that deleting the newest rows is detectable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub checkpoint_sinks: Vec<CheckpointSink>,
}

/// The storage backend.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum StorageType {
    #[default]
    Sqlite,
    Postgres,
}

/// Storage settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'sqlite' ? !has(self.postgres) : (has(self.postgres) && !has(self.sqlite))")
        .message("storage.type selects one backend: type sqlite takes an optional sqlite section, type postgres requires a postgres section, and the other section must be absent"),
)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// `sqlite` (the default, one replica) or `postgres` (shared by replicas).
    #[serde(rename = "type", default)]
    pub type_: StorageType,
    /// SQLite settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteStorage>,
    /// PostgreSQL settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStorage>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            type_: StorageType::Sqlite,
            sqlite: None,
            postgres: None,
        }
    }
}

/// SQLite settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SqliteStorage {
    /// Path of the database file inside the recorder's volume.
    #[serde(default = "default_sqlite_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

fn default_sqlite_path() -> String {
    "/var/lib/tollgate/recorder.db".into()
}

/// PostgreSQL settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStorage {
    /// A Secret in the recorder's namespace holding the connection URL.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Sealing thresholds: whichever comes first.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Sealing {
    /// Seal once the open segment holds this many envelopes.
    #[serde(default = "default_max_envelopes")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_envelopes: u32,
    /// Seal once the open segment's first envelope is this old.
    #[serde(default = "default_max_age_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_age_seconds: u32,
}

impl Default for Sealing {
    fn default() -> Self {
        Self {
            max_envelopes: default_max_envelopes(),
            max_age_seconds: default_max_age_seconds(),
        }
    }
}

fn default_max_envelopes() -> u32 {
    10_000
}
fn default_max_age_seconds() -> u32 {
    300
}

/// Retention of sealed segments.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Delete the envelopes of sealed segments older than this many days, once
    /// every checkpoint sink holds a checkpoint covering them (never without a
    /// sink). Checkpoints are kept; later exports start after them.
    #[schemars(range(min = 1, max = 36500))]
    pub sealed_segment_days: u32,
}

/// Ingestion bounds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngestLimits {
    /// Most receipts in one batch.
    #[serde(default = "default_max_batch_receipts")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_batch_receipts: u32,
    /// Largest batch body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 65536, max = 67108864))]
    pub max_body_bytes: u32,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch_receipts: default_max_batch_receipts(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

fn default_max_batch_receipts() -> u32 {
    1_000
}
fn default_max_body_bytes() -> u32 {
    16 * 1024 * 1024
}

/// Kinds of checkpoint sinks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SinkType {
    // Appends each checkpoint as a JSON line to a file.
    File,
    // POSTs each checkpoint as JSON to a URL.
    Http,
}

/// A copy of every checkpoint, kept outside the recorder.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'file' ? (has(self.path) && !has(self.url)) : (has(self.url) && !has(self.path))")
        .message("a file sink needs path (and no url); an http sink needs url (and no path)"),
    validation = Rule::new(r"!has(self.url) || self.url.startsWith('https://') || self.url.matches('^http://(127\\.0\\.0\\.1|localhost|\\[::1\\])(:[0-9]+)?(/.*)?$')")
        .message("a sink url must use https unless its host is loopback"),
)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSink {
    /// A name for the sink, unique in the list.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// `file` or `http`.
    #[serde(rename = "type")]
    pub type_: SinkType,
    /// For `file`: the path to append to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// For `http`: the URL to POST to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
}

/// Observed state of the `RecorderConfig`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecorderConfigStatus {
    /// `Ready` and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

//! `TrustAnchor`: the public keys auditors and recorders trust for receipts and
//! checkpoints, and the CA bundles and SPKI pins gateways enforce upstream.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Trusted keys for evidence, and trusted certificates for upstream TLS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "TrustAnchor",
    plural = "trustanchors",
    shortname = "tga",
    category = "tollgate",
    status = "TrustAnchorStatus",
    derive = "PartialEq",
    doc = "Trusted public keys for receipts and checkpoints, and trusted CA bundles and SPKI pins for upstream TLS.",
    printcolumn(
        name = "Active Keys",
        type_ = "integer",
        json_path = ".status.activeKeys"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("size(self.receiptKeys) + size(self.upstream) > 0")
        .message("a TrustAnchor must carry at least one receipt key or one upstream entry"),
)]
#[serde(rename_all = "camelCase")]
pub struct TrustAnchorSpec {
    /// Ed25519 public keys: receipt CA keys that sign gateway key certificates,
    /// and recorder keys that sign checkpoints.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["keyId".into()]))]
    pub receipt_keys: Vec<ReceiptKey>,

    /// Upstream hosts with the CA bundle and SPKI pins to enforce on them.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["host".into()]))]
    pub upstream: Vec<UpstreamTrust>,
}

/// What a trusted key may sign.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum KeyRole {
    // Signs gateway key certificates.
    #[default]
    ReceiptCA,
    // Signs segment checkpoints.
    Recorder,
}

/// The lifecycle state of a trusted key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    #[default]
    Active,
    Retired,
    Revoked,
}

/// One trusted Ed25519 public key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.notAfter) || timestamp(self.notBefore) < timestamp(self.notAfter)")
        .message("notBefore must be earlier than notAfter"),
)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptKey {
    /// Lowercase hex SHA-256 of the 32 raw public key bytes.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub key_id: String,

    /// The 32 raw Ed25519 public key bytes, standard base64.
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{43}=$"))]
    pub public_key: String,

    /// `receiptCA` keys sign gateway key certificates; `recorder` keys sign checkpoints.
    #[serde(default)]
    pub role: KeyRole,

    /// Start of validity (RFC 3339). Signatures dated earlier are rejected.
    #[schemars(extend("format" = "date-time"))]
    pub not_before: String,

    /// End of validity (RFC 3339). Absent means no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub not_after: Option<String>,

    /// `active` keys sign; `retired` keys no longer sign but still verify what
    /// they signed while active; `revoked` keys verify nothing.
    #[serde(default)]
    pub state: KeyState,
}

/// TLS trust for one upstream host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.caBundle) || size(self.spkiPins) > 0")
        .message("an upstream entry needs a caBundle or at least one spkiPin"),
)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTrust {
    /// The exact hostname this entry applies to.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// PEM CA certificates that replace the system roots for this host (at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    #[x_kube(
        validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')")
            .message("caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)"),
    )]
    pub ca_bundle: Option<String>,

    /// Standard-base64 SHA-256 digests of the SubjectPublicKeyInfo of an
    /// acceptable certificate in the chain. If any pin is set, one must match.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 44)))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9+/]{43}=$'))")
            .message("spkiPins must be base64-encoded SHA-256 digests: 44 characters ending in '='"),
    )]
    pub spki_pins: Vec<String>,
}

/// Observed state of a `TrustAnchor`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrustAnchorStatus {
    /// `Ready` and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Keys in state `active` whose validity window contains now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_keys: Option<u32>,
}

//! Tollgate's custom resources (`tollgate.dev/v1alpha1`) and the generators that
//! turn them into CRD YAML and the CRD reference docs.
//!
//! How the kinds link:
//! - an [`EgressPolicy`] (namespaced) allows models of one or more [`LLMProvider`]s
//!   (cluster-scoped) by name;
//! - an [`LLMProvider`] names a Secret in the operator namespace for its keys and,
//!   optionally, a [`TrustAnchor`] for upstream CA bundles and SPKI pins;
//! - [`EgressQuota`] (namespaced) and [`ClusterEgressQuota`] (cluster-scoped, with a
//!   namespace selector) cap tokens, requests and cost per window;
//! - [`TrustAnchor`]s also carry the receipt CA and recorder public keys that the
//!   offline verifier trusts;
//! - the one [`RecorderConfig`], named `default`, configures storage and sealing.
//!
//! Cross-object problems (a missing provider, a missing Secret key) are reported by
//! the operator as status conditions, never as admission denials.
#![forbid(unsafe_code)]
// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

pub mod compile;
pub mod conditions;
pub mod generate;
pub mod manifest;
pub mod policy;
pub mod provider;
pub mod quota;
pub mod quota_status;
pub mod recorder_config;
pub mod reference;
pub mod trust;

pub use policy::{EgressPolicy, EgressPolicySpec};
pub use provider::{LLMProvider, LLMProviderSpec};
pub use quota::{ClusterEgressQuota, ClusterEgressQuotaSpec, EgressQuota, EgressQuotaSpec};
pub use recorder_config::{RecorderConfig, RecorderConfigSpec};
pub use trust::{TrustAnchor, TrustAnchorSpec};

/// The API group of every Tollgate kind.
pub const GROUP: &str = "tollgate.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as it appears in manifests.
pub const API_VERSION: &str = "tollgate.dev/v1alpha1";
/// The kubectl category that lists every Tollgate object: `kubectl get tollgate`.
pub const CATEGORY: &str = "tollgate";

/// The Kubernetes minor version whose OpenAPI the workspace compiles against.
/// It must match the `k8s-openapi` feature and `e2e/versions.env`; a test checks.
pub const KUBERNETES_MINOR: u32 = 34;

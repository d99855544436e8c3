//! The Tollgate gateway sidecar: the governed data plane in front of LLM
//! providers, and `init-network`, the traffic rules that make it the only way out.
//!
//! This crate must never link the kube client: the gateway gets everything it
//! needs from the operator's control endpoint or a local config directory.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod api_error;
pub mod aws_signing;
pub mod caller;
pub mod control;
pub mod credentials;
pub mod dry_run;
pub mod egress_rules;
pub mod entra_identity;
pub mod eventstream;
pub mod genai_metrics;
pub mod google_identity;
pub mod guards;
pub mod init_network;
pub mod key_health;
pub mod key_report;
pub mod proxy;
pub mod quota;
pub mod quota_lease;
pub mod receipts;
pub mod run;
pub mod shipper;
pub mod signer;
pub mod sse;
pub mod upstream;
pub mod web_identity;
pub mod workload_identity;

//! Everything a Tollgate gateway and the control plane exchange, and nothing
//! else: no Kubernetes client, no database, no server.
//!
//! - [`config`]: the compiled gateway config the operator (or
//!   `kubectl tollgate local`) produces and the gateway runs on, its policy hash,
//!   and the small enums and prices the custom resources share with it;
//! - [`control`]: the operator's control endpoint documents;
//! - [`caller`]: the cluster's caller key and the end-user hash it makes;
//! - [`quota_math`] and [`lease`]: quota arithmetic and the recorder's lease API;
//! - [`ingest`]: the recorder's receipt ingest answers;
//! - [`key_health`]: provider key health, from gateways through the recorder
//!   to the operator;
//! - [`problem`]: the one problem+json error body;
//! - [`client`]: the small HTTPS client and bearer-token sources both sides use.
//!
//! The gateway depends on this crate and `tollgate-evidence` only; the
//! `tollgate-crds`, recorder and operator crates depend on it. The `schema`
//! feature (enabled by `tollgate-crds`) derives JSON schemas for the types that
//! appear in custom resources. [`server`] is the bounded accept loop every
//! Tollgate server runs. `make deps-check` proves the gateway's tree and
//! binary hold no kube, k8s-openapi, schemars, rusqlite or tokio-postgres.
#![forbid(unsafe_code)]

pub mod caller;
pub mod client;
pub mod config;
pub mod control;
pub mod ingest;
pub mod key_health;
pub mod lease;
pub mod pricing;
pub mod problem;
pub mod quota_math;
pub mod secret;
pub mod server;
pub mod time_zone;

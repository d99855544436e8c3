//! The Tollgate operator: controllers, config compilation, the gateway control
//! endpoint, admission webhooks and their certificates.
//!
//! - [`cache`]: the one reflector per kind that everything below reads.
//! - [`webhooks`]: serves the pure rules of `tollgate_admission` over HTTPS and
//!   registers the webhook configurations.
//! - [`control`]: the HTTPS endpoint gateways fetch config, credentials and
//!   key certificates from.
//! - [`controllers`]: status, conditions and Events for the six kinds.
//! - [`leader`]: leader election with a Lease.
//! - [`tls`], [`registration`]: serving certificates, CA rotation, and the
//!   `caBundle`s and ConfigMaps that carry the CA to clients.
//! - [`receipt_ca`]: the key that signs gateway key certificates;
//!   [`cluster_secrets`]: it and the caller key, created once per cluster.
//! - [`runtime`], [`serve`]: the process: listeners, probes, wiring;
//!   [`failures`]: the failure counter in `/metrics`.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cluster_secrets;
pub mod control;
pub mod controllers;
pub mod failures;
pub mod leader;
pub mod receipt_ca;
pub mod registration;
pub mod runtime;
pub mod serve;
pub mod tls;
pub mod webhooks;

//! The Tollgate recorder: verified receipt ingestion, storage, segment sealing,
//! the cluster quota authority, usage queries and bundle export.
//!
//! How the pieces link, from a gateway's spool to an auditor:
//!
//! 1. A gateway's [`shipper`] tails its spool and POSTs batches of envelopes with
//!    their key certificate to `POST /v1/receipts` ([`http`]).
//! 2. [`ingest`] verifies each batch before anything is stored (pure): the
//!    certificate against the trust roots ([`trust`]), each envelope's hash,
//!    signature, certificate window and workload, then the stream chain against
//!    what is already stored.
//! 3. [`recorder::Recorder`] appends accepted envelopes to the open segment of the
//!    log ([`log`], over the evidence `LogWriter`) inside one storage transaction
//!    ([`store`]: SQLite or PostgreSQL), seals on count or age, signs checkpoints
//!    with the recorder key ([`identity`]) and pushes them to [`sinks`].
//! 4. [`quota`] grants, renews and returns leases atomically (no over-grant).
//! 5. [`usage`] aggregates stored receipts; [`export`] builds evidence bundles.
//!
//! With `default-features = false` the crate is only the gateway side (the
//! [`shipper`], the HTTP [`client`], wire types and the [`testkit`]): no kube
//! client, no SQLite, no PostgreSQL.
//!
//! Everything that decides is a pure function with unit tests; storage, HTTP and
//! clocks sit at the edges. Receipts hold no prompts, completions or keys, and
//! nothing here logs request bodies.
#![forbid(unsafe_code)]

// Gateway side and shared (no kube client, no database).
pub mod client;
pub mod clock;
pub mod error;
pub mod identity;
pub mod ingest;
pub mod lease_wire;
pub mod log;
pub mod settings;
pub mod shipper;
pub mod testkit;
pub mod trust;

// The server (feature `server`, on by default).
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod export;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod quota;
#[cfg(feature = "server")]
pub mod recorder;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sinks;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod usage;

pub use error::{Problem, RecorderError};
pub use ingest::StreamStatus;
#[cfg(feature = "server")]
pub use recorder::Recorder;
pub use shipper::{ShipReport, Shipper, ShipperError};

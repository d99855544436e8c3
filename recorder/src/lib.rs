//! The Tollgate recorder: verified receipt ingestion, storage, segment sealing,
//! the cluster quota authority, usage queries and bundle export.
//!
//! How the pieces link, from a gateway's spool to an auditor:
//!
//! 1. A gateway's shipper (in `tollgate-gateway`) tails its spool and POSTs
//!    batches of envelopes with their key certificate to `POST /v1/receipts`
//!    ([`http`]). The wire types both sides read are in `tollgate-wire`.
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
//! 6. [`retention`] deletes old sealed segments once a checkpoint sink holds them.
//!
//! Everything that decides is a pure function with unit tests; storage, HTTP and
//! clocks sit at the edges. Receipts hold no prompts, completions or keys, and
//! nothing here logs request bodies.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod key_health;
pub mod log;
pub mod metrics;
pub mod quota;
pub mod recorder;
pub mod retention;
pub mod server;
pub mod settings;
pub mod sinks;
pub mod store;
pub mod trust;
pub mod usage;

pub use error::RecorderError;
pub use ingest::StreamStatus;
pub use recorder::Recorder;
pub use tollgate_wire::problem::Problem;

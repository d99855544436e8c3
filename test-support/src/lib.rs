//! Test support shared by the workspace's tests and benches, and never linked
//! into a shipped binary:
//!
//! - [`fixtures`]: deterministic evidence (a certified gateway key, receipts,
//!   chained streams, ingest batches and matching trust roots);
//! - [`process`]: the workspace's own binaries as child processes: find them
//!   where cargo built them (tests never run `cargo build`) and start them,
//!   waiting for the line that says where they listen.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod process;

//! The Tollgate recorder: verified receipt ingestion, storage, sealing, quota authority.
//!
//! Not built yet; see issue "Recorder".
#![forbid(unsafe_code)]

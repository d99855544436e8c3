//! The Tollgate operator: controllers, config compilation, control endpoint and webhooks.
//!
//! Not built yet; see issues "Operator" and "Admission".
#![forbid(unsafe_code)]

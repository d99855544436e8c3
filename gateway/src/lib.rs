//! The Tollgate gateway sidecar: the governed data plane in front of LLM providers.
//!
//! Not built yet; see issue "Gateway sidecar". This crate must never link the kube client.
#![forbid(unsafe_code)]

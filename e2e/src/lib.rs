//! Helpers for the end-to-end suites, which run against the real
//! kube-apiserver and etcd that `e2e/cluster.sh` starts on loopback.
//!
//! Run them with `e2e/run.sh`. It starts the control plane, exports
//! `KUBECONFIG` and `TOLLGATE_KUBECTL`, runs `cargo test -p tollgate-e2e` and
//! tears everything down. Without `KUBECONFIG` every suite fails with a
//! message saying so; none is skipped silently.
//!
//! - [`cluster`]: connecting, with a guard against non-loopback servers.
//! - [`namespace`]: a temporary namespace per test, with `accepts`/`rejects`.
//! - [`objects`]: server-side apply of arbitrary manifests via discovery.
//! - [`manifests`]: reading YAML files from the repository.
//! - [`crds`]: installing the generated CRDs and waiting until Established.
//! - [`kubectl`]: running the kubectl built for the same Kubernetes version.
//! - [`webhook`]: admission webhook configurations that call `https://127.0.0.1`.
//! - [`operator`]: running the real `tollgate-operator` binary, and HTTPS to it.
//! - [`retry`]: waiting for effects the API server applies asynchronously.

pub mod cluster;
pub mod crds;
pub mod kubectl;
pub mod manifests;
pub mod namespace;
pub mod objects;
pub mod operator;
pub mod retry;
pub mod webhook;

pub use cluster::{client, repo_root};
pub use kubectl::Kubectl;
pub use namespace::TestNamespace;
pub use retry::eventually;

/// The field manager for every write the suites make.
pub const FIELD_MANAGER: &str = "tollgate-e2e";

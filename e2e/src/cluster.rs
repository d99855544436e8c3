//! Finding and connecting to the control plane that `e2e/cluster.sh` runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// What to do when the environment does not point at a cluster.
pub const RUN_HINT: &str = "run the suites with e2e/run.sh, or start a cluster with \
     `e2e/cluster.sh up && eval \"$(e2e/cluster.sh env)\"` first";

/// The repository root (the parent of `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The kubeconfig from `KUBECONFIG`. Errors, never skips, when it is unset.
pub fn kubeconfig_path() -> Result<PathBuf> {
    let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
        let why = if in_ci() {
            " (CI is set: a missing control plane is a failure, not a skip)"
        } else {
            ""
        };
        bail!("KUBECONFIG is not set{why}: {RUN_HINT}");
    };
    let path = PathBuf::from(value);
    if !path.is_file() {
        bail!(
            "KUBECONFIG={} does not exist (is the cluster down?): {RUN_HINT}",
            path.display()
        );
    }
    Ok(path)
}

/// True for the hosts `e2e/cluster.sh` serves on: loopback, or the test node's
/// own addresses in 198.18.0.0/15 (the benchmarking range; `up --with-node`).
pub fn is_test_cluster_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => {
                v4.is_loopback() || (v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18)
            }
            std::net::IpAddr::V6(v6) => v6.is_loopback(),
        })
}

/// A client for the e2e cluster. The suites install CRDs and webhooks
/// cluster-wide, so a kubeconfig that points anywhere but loopback is refused.
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path()?;
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    let host = config.cluster_url.host().unwrap_or_default();
    if !is_test_cluster_host(host) {
        bail!(
            "refusing to run the e2e suites against {}: they install CRDs and webhooks \
             cluster-wide and only ever target the cluster of e2e/cluster.sh (loopback or 198.18.0.0/15)",
            config.cluster_url
        );
    }
    Client::try_from(config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cluster_hosts() {
        for host in [
            "127.0.0.1",
            "localhost",
            "[::1]",
            "::1",
            "127.0.0.2",
            "198.18.0.1",
            "198.19.255.1",
        ] {
            assert!(is_test_cluster_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "example.com",
            "0.0.0.0",
            "",
            "198.20.0.1",
            "198.17.0.1",
            "192.168.0.1",
        ] {
            assert!(!is_test_cluster_host(host), "{host}");
        }
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("e2e/cluster.sh").is_file());
    }
}

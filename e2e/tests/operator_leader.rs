#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Leader election between two real `tollgate-operator` processes: one holds
//! the Lease and the other waits; SIGKILL the leader and the other takes the
//! Lease within the lease duration plus a retry period, and its controllers
//! then reconcile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::operator::{OperatorArgs, OperatorProcess};
use tollgate_e2e::{TestNamespace, client, eventually};

const LEASE: &str = "tollgate-operator-leader";
/// The operator's defaults (operator/src/leader.rs).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Polling and process start-up jitter.
const SLACK: Duration = Duration::from_secs(3);

async fn holder(client: &Client, ns: &str) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn wait_holder(client: &Client, ns: &str, want: &str, timeout: Duration) -> Result<()> {
    eventually(timeout, || async {
        let now = holder(client, ns).await?;
        ensure!(
            now.as_deref() == Some(want),
            "Lease holder is {now:?}, want {want}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn e2e_leader_failover() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "leader").await?;

    let a_name = unique_name("leader-a");
    let b_name = unique_name("leader-b");
    let mut a = OperatorProcess::start(&OperatorArgs {
        identity: Some(a_name.clone()),
        ..OperatorArgs::new(ns.name())
    })
    .await?;
    wait_holder(&client, ns.name(), &a_name, Duration::from_secs(30))
        .await
        .with_context(|| a.log_tail(20))?;

    let b = OperatorProcess::start(&OperatorArgs {
        identity: Some(b_name.clone()),
        ..OperatorArgs::new(ns.name())
    })
    .await?;
    // The standby does not take a Lease that is being renewed.
    let watch_until = Instant::now() + LEASE_DURATION / 2 + RETRY_PERIOD;
    while Instant::now() < watch_until {
        let now = holder(&client, ns.name()).await?;
        ensure!(
            now.as_deref() == Some(a_name.as_str()),
            "the standby took the Lease from a live leader: holder {now:?}\n{}",
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    a.kill()?;
    let killed = Instant::now();
    let bound = LEASE_DURATION + RETRY_PERIOD + SLACK;
    loop {
        if holder(&client, ns.name()).await?.as_deref() == Some(b_name.as_str()) {
            break;
        }
        if killed.elapsed() > bound {
            bail!(
                "the standby did not take the Lease within {bound:?} of the leader's death:\n{}",
                b.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = killed.elapsed();
    ensure!(
        took >= LEASE_DURATION.saturating_sub(RETRY_PERIOD + SLACK),
        "the standby took the Lease after {took:?}, before it could have expired"
    );

    // The new leader's controllers run: a new object gets its status.
    let provider = unique_name("leader-prov");
    ns.accepts(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "LLMProvider",
        "metadata": {"name": provider},
        "spec": {"api": "dryRun", "models": [{"name": "fake"}]},
    }))
    .await?;
    let gvk = GroupVersionKind::gvk("tollgate.dev", "v1alpha1", "LLMProvider");
    let providers: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    eventually(Duration::from_secs(60), || async {
        let obj = providers.get(&provider).await?;
        let ready = obj.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        ensure!(ready["status"] == "True", "Ready: {ready}");
        Ok(())
    })
    .await
    .with_context(|| b.log_tail(30))?;

    drop(b);
    ns.delete().await?;
    Ok(())
}

//! What the dashboard asks the recorder beyond usage: each quota's burn-down
//! from a catalog of quotas, scoped to what the caller may read, and the newest
//! checkpoint with its signature checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use tollgate_crds::quota::QuotaLimit;
use tollgate_crds::quota_status::QuotaScope;
use tollgate_recorder::auth::Caller;
use tollgate_recorder::dashboard::{
    NO_CATALOG, QuotaCatalog, QuotaDefinition, QuotasAnswer, quota_burn_down,
};
use tollgate_recorder::error::RecorderError;
use tollgate_recorder::recorder::Recorder;
use tollgate_test_support::fixtures::Gateway;

#[derive(Debug)]
struct Quotas(Vec<QuotaDefinition>);

impl QuotaCatalog for Quotas {
    fn quotas(&self) -> Result<Vec<QuotaDefinition>, String> {
        Ok(self.0.clone())
    }
}

/// A limit over the last 48 hours (the test clock is a day after the receipts).
fn rolling(tokens: Option<u64>, requests: Option<u64>, models: &[&str]) -> QuotaLimit {
    QuotaLimit {
        time_zone: None,
        name: "two-days".into(),
        window: None,
        rolling: Some("48h".into()),
        tokens,
        requests,
        cost_micro_usd: None,
        models: models.iter().map(|m| (*m).to_string()).collect(),
        providers: vec![],
    }
}

fn quota(
    kind: &'static str,
    namespace: Option<&str>,
    namespaces: &[&str],
    limit: QuotaLimit,
) -> QuotaDefinition {
    QuotaDefinition {
        kind,
        namespace: namespace.map(str::to_string),
        name: "budget".into(),
        scope: QuotaScope {
            namespaces: namespaces.iter().map(|n| (*n).to_string()).collect(),
            service_accounts: vec![],
        },
        limits: vec![limit],
        warning_percent: 80,
    }
}

/// Gateway 1 (team-1) shipped 4 receipts, gateway 2 (team-2) 3. Token counts
/// per receipt i: 110 + 2i.
async fn recorder_with_receipts() -> std::sync::Arc<Recorder> {
    let (rec, _clock) = common::recorder(common::sqlite("dashboard"), common::settings(100)).await;
    for (n, receipts) in [(1, 4), (2, 3)] {
        let gw = Gateway::new(n).unwrap();
        let batch = gw.batch_json(&gw.stream(receipts, false).unwrap()).unwrap();
        let r = rec.ingest(&batch, &Caller::Local).await.unwrap();
        assert_eq!(r.accepted, receipts);
    }
    rec
}

fn catalog() -> std::sync::Arc<dyn QuotaCatalog> {
    std::sync::Arc::new(Quotas(vec![
        quota(
            "EgressQuota",
            Some("team-1"),
            &["team-1"],
            rolling(Some(10_000), None, &[]),
        ),
        quota(
            "EgressQuota",
            Some("team-2"),
            &["team-2"],
            rolling(None, Some(2), &[]),
        ),
        quota(
            "ClusterEgressQuota",
            None,
            &["team-1", "team-2"],
            rolling(Some(1_000), None, &["gpt-4o-mini"]),
        ),
    ]))
}

fn names(answer: &QuotasAnswer) -> Vec<String> {
    answer
        .quotas
        .iter()
        .map(|q| format!("{}/{}", q.namespace.as_deref().unwrap_or("cluster"), q.name))
        .collect()
}

#[tokio::test]
async fn each_quota_burns_down_by_its_window_and_subjects() {
    let rec = recorder_with_receipts().await;
    let answer = quota_burn_down(&rec, Some(catalog()), None, &Caller::Local)
        .await
        .unwrap();
    // By kind, namespace and name.
    assert_eq!(
        names(&answer),
        ["cluster/budget", "team-1/budget", "team-2/budget"]
    );
    let [cluster, team1, team2] = &answer.quotas[..] else {
        panic!("{answer:?}")
    };
    let status = |q: &tollgate_recorder::dashboard::QuotaView| q.limits[0].status.clone();
    // team-1: 110 + 112 + 114 + 116 tokens of 10 000.
    assert_eq!(status(team1).used.tokens, Some(452));
    assert_eq!(status(team1).remaining.tokens, Some(9_548));
    assert_eq!(status(team1).used_percent, Some(4));
    assert_eq!(status(team1).used.requests, None, "requests are not capped");
    // team-2: 3 requests of 2, past the cap.
    assert_eq!(status(team2).used.requests, Some(3));
    assert_eq!(status(team2).remaining.requests, Some(0));
    assert_eq!(status(team2).used_percent, Some(150));
    // The cluster quota counts gpt-4o-mini (odd receipts) in both namespaces:
    // team-1's i = 1, 3 (112 + 116) and team-2's i = 1 (112).
    assert_eq!(status(cluster).used.tokens, Some(340));
    // Rolling windows neither reset nor forecast.
    assert_eq!(status(team1).reset_at, None);
    assert_eq!(status(team1).exhausts_at, None);
    assert_eq!(answer.unavailable, None);

    let one = quota_burn_down(&rec, Some(catalog()), Some("team-2"), &Caller::Local)
        .await
        .unwrap();
    assert_eq!(names(&one), ["team-2/budget"]);
}

#[tokio::test]
async fn a_caller_sees_only_the_quotas_whose_usage_it_may_read() {
    let rec = recorder_with_receipts().await;
    let alice = Caller::Reader {
        name: "alice".into(),
        namespaces: Some(["team-1".to_string()].into()),
    };
    let answer = quota_burn_down(&rec, Some(catalog()), None, &alice)
        .await
        .unwrap();
    assert_eq!(
        names(&answer),
        ["team-1/budget"],
        "no team-2, no cluster quota"
    );
    // Even a quota with no usage to read (no window) is checked first.
    let mut windowless = rolling(Some(1), None, &[]);
    windowless.rolling = None;
    let hidden: std::sync::Arc<dyn QuotaCatalog> = std::sync::Arc::new(Quotas(vec![quota(
        "EgressQuota",
        Some("team-2"),
        &["team-2"],
        windowless,
    )]));
    let answer = quota_burn_down(&rec, Some(hidden), None, &alice)
        .await
        .unwrap();
    assert!(answer.quotas.is_empty(), "{answer:?}");
    let refused = quota_burn_down(&rec, Some(catalog()), Some("team-2"), &alice).await;
    assert!(
        matches!(refused, Err(RecorderError::Forbidden(_))),
        "{refused:?}"
    );
    // A gateway's ServiceAccount reads its own namespace.
    let gateway = Caller::ServiceAccount {
        namespace: "team-1".into(),
        name: "sa-1".into(),
        pod: None,
    };
    let own = quota_burn_down(&rec, Some(catalog()), Some("team-1"), &gateway)
        .await
        .unwrap();
    assert_eq!(own.quotas[0].limits[0].status.used.tokens, Some(452));
    // Without a catalog (a recorder in a cluster) the answer says why it is empty.
    let none = quota_burn_down(&rec, None, None, &Caller::Local)
        .await
        .unwrap();
    assert!(none.quotas.is_empty());
    assert_eq!(none.unavailable.as_deref(), Some(NO_CATALOG));
}

#[tokio::test]
async fn the_newest_checkpoint_is_shown_with_its_signature_checked() {
    let rec = recorder_with_receipts().await;
    assert_eq!(rec.latest_checkpoint().await.unwrap().checkpoint, None);
    rec.seal_now().await.unwrap().expect("a segment to seal");
    let view = rec.latest_checkpoint().await.unwrap().checkpoint.unwrap();
    assert_eq!((view.segment, view.size), (0, 7));
    assert_eq!(view.signature_verified, Some(true));
    assert_eq!(view.origin, rec.origin().to_string());
    assert_eq!(view.key_id, rec.public_key().key_id().to_string());
    assert!(view.sinks.is_empty());
}

//! The usage dashboard: one page, its script and stylesheet, and the charting
//! library (uPlot, vendored under `dashboard/vendor/uplot`), compiled into the
//! binary so the page works offline and with no CDN. The page holds no data: it
//! reads the usage API with the caller's own token, so it shows exactly what
//! that caller may read. `kubectl tollgate dashboard` serves the same bytes
//! from its local proxy.
//!
//! Beside the assets, the two answers the page needs that the usage API does
//! not give: each quota's burn-down ([`quota_burn_down`], computed from a
//! [`QuotaCatalog`] with the operator's arithmetic) and the newest checkpoint
//! ([`CheckpointView`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use serde::Serialize;
use tollgate_crds::quota::{LimitStatus, QuotaLimit};
use tollgate_crds::quota_status::{self, QuotaScope, UsageRow, WindowNow};

use crate::auth::Caller;
use crate::error::RecorderError;
use crate::recorder::Recorder;
use crate::usage::{Cursor, GroupKey, Page, UsageQuery, UsageReport};

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The page's files by name under `/dashboard/` (`""` is the page itself).
const ASSETS: [(&str, Asset); 5] = [
    (
        "",
        Asset {
            content_type: "text/html; charset=utf-8",
            bytes: include_bytes!("../dashboard/index.html"),
        },
    ),
    (
        "dashboard.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            bytes: include_bytes!("../dashboard/dashboard.js"),
        },
    ),
    (
        "dashboard.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            bytes: include_bytes!("../dashboard/dashboard.css"),
        },
    ),
    (
        "uPlot.iife.min.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            bytes: include_bytes!("../dashboard/vendor/uplot/uPlot.iife.min.js"),
        },
    ),
    (
        "uPlot.min.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            bytes: include_bytes!("../dashboard/vendor/uplot/uPlot.min.css"),
        },
    ),
];

/// The file `name` of the page (`""` or `index.html`: the page).
pub fn asset(name: &str) -> Option<Asset> {
    let name = if name == "index.html" { "" } else { name };
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// What the page may load and talk to: its own files and its own origin's
/// API, nothing inline, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers every dashboard file is served with, besides its type.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// A quota as the dashboard shows it: its limits from the spec and the
/// subjects its usage is counted for.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaDefinition {
    /// `EgressQuota` or `ClusterEgressQuota`.
    pub kind: &'static str,
    /// An EgressQuota's namespace.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Whose usage it counts.
    pub scope: QuotaScope,
    /// Its limits.
    pub limits: Vec<QuotaLimit>,
    /// Its warning level (percent of a cap).
    pub warning_percent: u8,
}

/// Where the recorder learns which quotas exist. `kubectl tollgate local`
/// gives its manifests; a recorder in a cluster has none (there the operator
/// writes each quota's status, and `kubectl tollgate dashboard` reads it).
pub trait QuotaCatalog: Send + Sync + Debug {
    /// The quotas now.
    fn quotas(&self) -> Result<Vec<QuotaDefinition>, String>;
}

/// One limit's spec and status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitView {
    /// The limit as the quota defines it.
    pub spec: QuotaLimit,
    /// Used, remaining, reset and forecast now.
    pub status: LimitStatus,
}

/// One quota's burn-down.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    /// `EgressQuota` or `ClusterEgressQuota`.
    pub kind: &'static str,
    /// An EgressQuota's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its warning level.
    pub warning_percent: u8,
    /// Its limits with their status.
    pub limits: Vec<LimitView>,
}

/// The answer of `GET /dashboard/api/quotas`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotasAnswer {
    /// The quotas the caller may see, by kind, namespace and name.
    pub quotas: Vec<QuotaView>,
    /// Why no quotas can be shown here, when none can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Why a recorder without a catalog shows no quotas.
pub const NO_CATALOG: &str = "this recorder does not know the quota objects; \
     kubectl tollgate dashboard reads their status from the cluster";

/// Each quota's burn-down from its current windows' usage, for the quotas in
/// `namespace` (every namespace: `None`). Asked for one namespace, a caller
/// who may not read its usage is refused; asked for every namespace, the
/// quotas whose usage it may not read are left out. Cluster quotas span
/// namespaces: they are shown to callers who may read every namespace only.
pub async fn quota_burn_down(
    recorder: &Recorder,
    catalog: Option<Arc<dyn QuotaCatalog>>,
    namespace: Option<&str>,
    caller: &Caller,
) -> Result<QuotasAnswer, RecorderError> {
    let Some(catalog) = catalog else {
        return Ok(QuotasAnswer {
            quotas: Vec::new(),
            unavailable: Some(NO_CATALOG.into()),
        });
    };
    if let Some(ns) = namespace {
        recorder.check_usage_read(caller, Some(ns))?;
    }
    // A catalog may read files: off the async threads.
    let quotas = tokio::task::spawn_blocking(move || catalog.quotas())
        .await
        .map_err(|e| RecorderError::Internal(format!("reading the quotas: {e}")))?
        .map_err(|why| RecorderError::Unavailable(format!("reading the quotas: {why}")))?;
    let now_ms = recorder.now_ms();
    let now = now_ms / 1000;
    let mut answers: HashMap<(Option<String>, u64), Vec<UsageRow>> = HashMap::new();
    let mut out = Vec::new();
    for quota in quotas {
        let query_namespace = quota.namespace.clone();
        if namespace.is_some() && query_namespace.as_deref() != namespace {
            continue;
        }
        // Checked per quota, before anything of it is shown.
        match recorder.check_usage_read(caller, query_namespace.as_deref()) {
            Ok(()) => {}
            Err(RecorderError::Forbidden(_)) => continue,
            Err(e) => return Err(e),
        }
        let mut limits = Vec::new();
        for limit in &quota.limits {
            let Some((start, reset_at)) = quota_status::window_of(limit, now) else {
                continue;
            };
            let key = (query_namespace.clone(), start);
            if !answers.contains_key(&key) {
                let rows = window_rows(recorder, &key, now_ms, caller).await?;
                answers.insert(key.clone(), rows);
            }
            let used = quota_status::used_by_limit(limit, &quota.scope, &answers[&key]);
            limits.push(LimitView {
                spec: limit.clone(),
                status: quota_status::limit_status(
                    limit,
                    used,
                    WindowNow {
                        start,
                        reset_at,
                        now,
                    },
                ),
            });
        }
        out.push(QuotaView {
            kind: quota.kind,
            namespace: quota.namespace,
            name: quota.name,
            warning_percent: quota.warning_percent,
            limits,
        });
    }
    out.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Ok(QuotasAnswer {
        quotas: out,
        unavailable: None,
    })
}

/// Most pages read for one window's usage.
const MAX_WINDOW_PAGES: usize = 100;

/// Every row of one window's usage by namespace, serviceAccount, provider and
/// model, asked as `caller` (so its read rights apply).
async fn window_rows(
    recorder: &Recorder,
    (namespace, start): &(Option<String>, u64),
    now_ms: u64,
    caller: &Caller,
) -> Result<Vec<UsageRow>, RecorderError> {
    let mut query = UsageQuery {
        since_ms: start.saturating_mul(1000),
        until_ms: now_ms.saturating_add(1),
        namespace: namespace.clone(),
        group_by: vec![
            GroupKey::Namespace,
            GroupKey::ServiceAccount,
            GroupKey::Provider,
            GroupKey::Model,
        ],
        bucket: None,
        page: Page::default(),
    };
    let mut rows = Vec::new();
    for _ in 0..MAX_WINDOW_PAGES {
        let report = recorder.usage(&query, caller).await?;
        rows.extend(quota_rows(&report));
        let Some(next) = report.next_cursor else {
            return Ok(rows);
        };
        let cursor = Cursor::decode(&next)?;
        query.page.after = Some(cursor.after);
        query.page.snapshot = Some(cursor.snapshot);
    }
    Err(RecorderError::TooLarge {
        what: "usage pages of one quota window",
        limit: MAX_WINDOW_PAGES as u64,
    })
}

/// The usage rows in the form the quota arithmetic reads.
fn quota_rows(report: &UsageReport) -> impl Iterator<Item = UsageRow> + '_ {
    report.rows.iter().map(|r| UsageRow {
        namespace: r.namespace.clone(),
        service_account: r.service_account.clone(),
        provider: r.provider.clone(),
        model: r.model.clone(),
        requests: r.totals.requests,
        input_tokens: r.totals.input_tokens,
        output_tokens: r.totals.output_tokens,
        cost_micro_usd: r.totals.cost_micro_usd,
    })
}

/// The newest signed checkpoint, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointView {
    /// The log's name.
    pub origin: String,
    /// The sealed segment it was issued for.
    pub segment: u64,
    /// Envelopes the log held then.
    pub size: u64,
    /// Its Merkle root.
    pub root: String,
    /// When it was signed (RFC 3339).
    pub issued_at: String,
    /// The recorder key that signed it.
    pub key_id: String,
    /// Whether its signature verified with the recorder's key just now;
    /// `None` when another key signed it (before a key rotation).
    pub signature_verified: Option<bool>,
    /// The checkpoint sinks, with the largest log size each holds.
    pub sinks: Vec<SinkProgress>,
}

/// How far a checkpoint sink has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkProgress {
    /// The sink's name.
    pub name: String,
    /// The largest log size whose checkpoint it holds.
    pub size: u64,
}

/// The answer of `GET /v1/checkpoint`: the newest checkpoint, if any segment
/// was sealed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointAnswer {
    /// The newest checkpoint.
    pub checkpoint: Option<CheckpointView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_unknown_names_are_not() {
        let page = asset("").unwrap();
        assert!(page.content_type.starts_with("text/html"));
        assert_eq!(asset("index.html"), Some(page));
        let text = std::str::from_utf8(page.bytes).unwrap();
        for (name, a) in ASSETS.iter().filter(|(n, _)| !n.is_empty()) {
            assert!(
                text.contains(&format!("\"{name}\"")),
                "the page loads {name}"
            );
            assert!(!a.bytes.is_empty());
        }
        for bad in [
            "../Cargo.toml",
            "dashboard.js/",
            "x.js",
            "vendor/uplot/LICENSE",
        ] {
            assert_eq!(asset(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        let text = std::str::from_utf8(asset("").unwrap().bytes).unwrap();
        assert!(!text.contains("http://") && !text.contains("https://"));
        assert!(!text.contains("<script>"), "inline scripts break the CSP");
        assert!(!text.contains("style=\""), "inline styles break the CSP");
        let script = std::str::from_utf8(asset("dashboard.js").unwrap().bytes).unwrap();
        assert!(
            !script.contains("innerHTML"),
            "text goes in as text, never as HTML"
        );
        assert!(!script.contains("eval("));
    }

    /// The vendored library is the release `scripts/vendor-uplot.sh` pins.
    #[test]
    fn the_vendored_chart_library_matches_its_pinned_hashes() {
        use sha2::{Digest, Sha256};
        let script = include_str!("../../scripts/vendor-uplot.sh");
        for (name, file) in [
            ("uPlot.iife.min.js", asset("uPlot.iife.min.js").unwrap()),
            ("uPlot.min.css", asset("uPlot.min.css").unwrap()),
        ] {
            let hash = hex::encode(Sha256::digest(file.bytes));
            assert!(
                script.contains(&format!("{hash}  {name}")),
                "{name} is not the pinned release (sha256 {hash}); run scripts/vendor-uplot.sh"
            );
        }
    }
}

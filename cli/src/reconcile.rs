//! `kubectl tollgate reconcile`: compares the receipts in an evidence bundle with
//! a provider's usage export and prints a deterministic JSON report. Exit 0 only
//! when every receipt and every export record is accounted for within tolerance;
//! 1 on any mismatch or unmatched record; 2 on input errors.
//!
//! The bundle is verified first (`--trust-anchor`, as `verify` does; open
//! streams are accepted, as from a running cluster): a bundle that does not
//! verify is not reconciled (exit 1). `--no-verify` skips that, and the report
//! says so. `--since`/`--until` (RFC 3339) reconcile one window: receipts that
//! started in it, export requests dated in it (undated ones are kept), and
//! export buckets that lie wholly inside it, so a window should follow the
//! export's bucket edges.
//!
//! Which receipts count: those a provider bills, i.e. allowed requests that went
//! upstream (`upstream` present) on the live lane (`--include-dry-run` adds the
//! dry-run lane, for tests and demos). Refusals, provider errors and attempts
//! given up for another provider are not billed and not reconciled.
//! A receipt's time is `[started_at, completed_at]`, its model `model_served`
//! (else `model_requested`), its usage `usage.input_tokens` (cached included) and
//! `usage.output_tokens`.
//!
//! Export shapes read (`--format`), field by field; everything else is ignored:
//! - `openai`: a JSON object with a `data` array (or a bare array). An element
//!   with `"object": "bucket"` is an Usage API bucket
//!   (`/v1/organization/usage/completions`, best with `group_by=model`):
//!   `start_time`, `end_time` (unix seconds) and `results[]` with `model` (null
//!   means every model), `input_tokens`, `output_tokens`, `num_model_requests`.
//!   Any other element is one request (a stored chat completion or a response
//!   object): `id`, `model`, `created` or `created_at` (unix seconds), and
//!   `usage.prompt_tokens` or `usage.input_tokens`, `usage.completion_tokens` or
//!   `usage.output_tokens`.
//! - `anthropic`: a JSON object with a `data` array (or a bare array). An element
//!   with `starting_at`/`ending_at` (RFC 3339) is a Usage Report bucket
//!   (`/v1/organizations/usage_report/messages`, best with `group_by[]=model`):
//!   `results[]` with `model`, `uncached_input_tokens`,
//!   `cache_read_input_tokens`, `cache_creation.ephemeral_5m_input_tokens`,
//!   `cache_creation.ephemeral_1h_input_tokens` (input is their sum) and
//!   `output_tokens`; the report has no request counts. Any other element is a
//!   Message object: `id`, `model`, `usage.input_tokens` +
//!   `usage.cache_read_input_tokens` + `usage.cache_creation_input_tokens`,
//!   `usage.output_tokens` (messages carry no time; the time check is skipped).
//! - `csv`: a header line `provider_request_id,model,timestamp,input_tokens,output_tokens`
//!   then one request per line; `provider_request_id` may be empty; `timestamp`
//!   is RFC 3339 or unix seconds.
//!
//! Matching (pure, [`reconcile`]): first by provider request id; then requests
//! without an id by model and time (closest unmatched receipt within the time
//! tolerance whose usage is within tolerance); then buckets, against the sum of the
//! remaining receipts of their model (or every model) that started in the bucket.
//! A pair whose model, time or usage disagrees is reported as mismatched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use tollgate_evidence::{
    Bundle, Decision, Lane, Timestamp, VerificationReport, VerifyOptions, verify_bundle,
};

/// Largest export file read.
const MAX_EXPORT_BYTES: u64 = 256 * 1024 * 1024;
/// Largest bundle read.
const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// OpenAI usage buckets or request objects.
    Openai,
    /// Anthropic usage report buckets or Message objects.
    Anthropic,
    /// `provider_request_id,model,timestamp,input_tokens,output_tokens`.
    Csv,
}

/// Flags of `reconcile`.
#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    /// The evidence bundle; it is verified first against `--trust-anchor`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// TrustAnchor YAML or JSON to verify the bundle against (repeatable:
    /// the receipt CA and the recorder key).
    #[arg(long = "trust-anchor", required_unless_present = "no_verify")]
    pub trust_anchor: Vec<PathBuf>,
    /// Reconcile without verifying the bundle (the report says so).
    #[arg(long, conflicts_with = "trust_anchor")]
    pub no_verify: bool,
    /// Only receipts that started at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_instant)]
    pub since: Option<Timestamp>,
    /// ... and before this time (RFC 3339).
    #[arg(long, value_parser = parse_instant)]
    pub until: Option<Timestamp>,
    /// The provider's usage export.
    #[arg(long)]
    pub export: PathBuf,
    /// The export's format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Largest allowed distance between a receipt and an export time, in seconds.
    #[arg(long, default_value_t = 300)]
    pub time_tolerance_seconds: u64,
    /// Allowed absolute token difference per quantity.
    #[arg(long, default_value_t = 0)]
    pub token_tolerance: u64,
    /// Allowed token difference per quantity, in percent of the larger value.
    #[arg(long, default_value_t = 0)]
    pub token_tolerance_percent: u64,
    /// Also reconcile dry-run receipts (tests and demos).
    #[arg(long)]
    pub include_dry_run: bool,
}

/// Tolerances used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tolerances {
    /// Seconds.
    pub time_seconds: u64,
    /// Tokens, absolute.
    pub tokens_absolute: u64,
    /// Tokens, percent of the larger value.
    pub tokens_percent: u64,
}

impl Tolerances {
    fn tokens_ok(&self, a: u64, b: u64) -> bool {
        let diff = a.abs_diff(b);
        let pct = (u128::from(a.max(b)) * u128::from(self.tokens_percent)).div_ceil(100);
        diff <= self.tokens_absolute || u128::from(diff) <= pct
    }
}

/// A receipt, as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptUse {
    /// Receipt id.
    pub receipt_id: String,
    /// Provider request id.
    pub provider_request_id: Option<String>,
    /// Model.
    pub model: String,
    /// `started_at` (ms).
    pub started_ms: u64,
    /// `completed_at` (ms).
    pub completed_ms: u64,
    /// Input and output tokens, if known.
    pub usage: Option<(u64, u64)>,
    /// The cost the gateway charged, micro-USD.
    pub cost_micro_usd: u64,
    /// Which prices made it, if the receipt says.
    pub pricing: Option<PricingUse>,
}

/// A receipt's `pricing`: its price table's hash, the service tier the
/// provider reported, and whether long-context prices applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PricingUse {
    pub table_sha256: String,
    pub service_tier: Option<String>,
    pub long_context: bool,
}

/// What the reconciled receipts cost, by model and by the prices that made
/// the cost: `kubectl tollgate prices` prints each table's hash, so every
/// cost traces to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostByPrice {
    pub model: String,
    /// SHA-256 of the price table; absent for receipts of gateways that did
    /// not record it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    pub long_context: bool,
    pub receipts: usize,
    pub cost_micro_usd: u64,
}

/// Receipts' cost grouped by model and prices, in a stable order.
pub fn costs_by_price(receipts: &[ReceiptUse]) -> Vec<CostByPrice> {
    let mut groups: BTreeMap<(&str, Option<&PricingUse>), (usize, u64)> = BTreeMap::new();
    for r in receipts {
        let group = groups.entry((&r.model, r.pricing.as_ref())).or_default();
        group.0 += 1;
        group.1 = group.1.saturating_add(r.cost_micro_usd);
    }
    groups
        .into_iter()
        .map(|((model, pricing), (receipts, cost))| CostByPrice {
            model: model.to_string(),
            table_sha256: pricing.map(|p| p.table_sha256.clone()),
            service_tier: pricing.and_then(|p| p.service_tier.clone()),
            long_context: pricing.is_some_and(|p| p.long_context),
            receipts,
            cost_micro_usd: cost,
        })
        .collect()
}

/// One request in an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    /// Position in the export.
    pub index: usize,
    /// Provider request id.
    pub provider_request_id: Option<String>,
    /// Model.
    pub model: String,
    /// When (ms), if the export says.
    pub at_ms: Option<u64>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// An aggregate bucket in an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBucket {
    /// Position in the export (bucket, result).
    pub index: (usize, usize),
    /// `[start, end)` (ms).
    pub start_ms: u64,
    /// End.
    pub end_ms: u64,
    /// Model; `None` means every model.
    pub model: Option<String>,
    /// Requests, if the export counts them.
    pub requests: Option<u64>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// A parsed export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// Per-request records.
    pub requests: Vec<ExportRequest>,
    /// Aggregate buckets.
    pub buckets: Vec<ExportBucket>,
}

/// A matched pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matched {
    /// Receipt id.
    pub receipt_id: String,
    /// Export index.
    pub export_index: usize,
    /// `provider_request_id` or `model_time_usage`.
    pub matched_by: &'static str,
}

/// A pair (or bucket) that disagrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// Receipt ids concerned.
    pub receipt_ids: Vec<String>,
    /// Export position: `"3"` for a request, `"2.0"` for bucket 2, result 0.
    pub export_index: String,
    /// What disagrees.
    pub problems: Vec<String>,
}

/// A receipt nothing in the export accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmatchedReceipt {
    /// Receipt id.
    pub receipt_id: String,
    /// Provider request id.
    pub provider_request_id: Option<String>,
    /// Model.
    pub model: String,
    /// `started_at`.
    pub started_at: String,
}

/// An export record no receipt accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmatchedExport {
    /// Export position.
    pub export_index: String,
    /// Provider request id.
    pub provider_request_id: Option<String>,
    /// Model.
    pub model: Option<String>,
}

/// Counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Receipts reconciled.
    pub receipts: usize,
    /// Export requests.
    pub export_requests: usize,
    /// Export buckets.
    pub export_buckets: usize,
    /// Matched requests.
    pub matched: usize,
    /// Receipts accounted for by matching buckets.
    pub matched_in_buckets: usize,
    /// Mismatches.
    pub mismatched: usize,
    /// Unmatched receipts.
    pub unmatched_receipts: usize,
    /// Unmatched export records.
    pub unmatched_export: usize,
}

/// The window reconciled, `[since, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Unix ms.
    #[serde(serialize_with = "as_rfc3339")]
    pub since_ms: u64,
    /// Unix ms.
    #[serde(serialize_with = "as_rfc3339")]
    pub until_ms: u64,
}

fn as_rfc3339<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

impl Window {
    fn holds(&self, ms: u64) -> bool {
        self.since_ms <= ms && ms < self.until_ms
    }

    /// The receipts that started in the window; the export requests of those
    /// receipts (by provider request id, whatever their export time), then
    /// those no receipt names that are dated in it (undated ones kept); and
    /// the buckets wholly inside it. Pure.
    pub fn apply(&self, receipts: Vec<ReceiptUse>, export: Export) -> (Vec<ReceiptUse>, Export) {
        let (inside, outside): (Vec<ReceiptUse>, Vec<ReceiptUse>) =
            receipts.into_iter().partition(|r| self.holds(r.started_ms));
        let ids = |receipts: &[ReceiptUse]| -> BTreeSet<String> {
            receipts
                .iter()
                .filter_map(|r| r.provider_request_id.clone())
                .collect()
        };
        let (ids_inside, ids_outside) = (ids(&inside), ids(&outside));
        let export = Export {
            requests: export
                .requests
                .into_iter()
                .filter(|e| match &e.provider_request_id {
                    Some(id) if ids_inside.contains(id) => true,
                    Some(id) if ids_outside.contains(id) => false,
                    _ => e.at_ms.is_none_or(|at| self.holds(at)),
                })
                .collect(),
            buckets: export
                .buckets
                .into_iter()
                .filter(|b| self.since_ms <= b.start_ms && b.end_ms <= self.until_ms)
                .collect(),
        };
        (inside, export)
    }
}

fn parse_instant(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text).map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `tollgate.dev/reconcile-report`.
    pub format: &'static str,
    /// 1.
    pub format_version: u32,
    /// `verified`, `verified_with_open_streams` or `not_verified` (`--no-verify`).
    pub bundle: &'static str,
    /// The window, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The export's format.
    pub export_format: ExportFormat,
    /// `pass` or `fail`.
    pub verdict: &'static str,
    /// Tolerances used.
    pub tolerances: Tolerances,
    /// Counts.
    pub summary: Summary,
    /// Matched requests, by receipt id.
    pub matched: Vec<Matched>,
    /// Disagreements.
    pub mismatched: Vec<Mismatch>,
    /// Receipts without export record.
    pub unmatched_receipts: Vec<UnmatchedReceipt>,
    /// Export records without receipt.
    pub unmatched_export: Vec<UnmatchedExport>,
    /// The receipts' cost by model and the prices that made it.
    pub costs: Vec<CostByPrice>,
}

fn rfc3339(ms: u64) -> String {
    Timestamp::from_unix_millis(ms).map_or_else(|_| ms.to_string(), Timestamp::to_canonical_string)
}

/// The receipts of a bundle that went upstream (live lane, or dry-run too).
pub fn receipts_of(bundle: &Bundle, include_dry_run: bool) -> Vec<ReceiptUse> {
    bundle
        .segments
        .iter()
        .flat_map(|s| &s.envelopes)
        .filter_map(|e| e.receipt())
        .map(|r| &r.body)
        // What a provider bills: allowed requests. Not refusals (some carry
        // the provider's side: a redirect, a timeout after sending), provider
        // errors, or attempts given up for another provider.
        .filter(|b| b.verdict.decision == Decision::Allow)
        .filter(|b| b.upstream.is_some() && (include_dry_run || b.lane == Lane::Live))
        .map(|b| ReceiptUse {
            receipt_id: b.id.as_str().to_string(),
            provider_request_id: b
                .upstream
                .as_ref()
                .and_then(|u| u.provider_request_id.as_ref())
                .map(|i| i.as_str().to_string()),
            model: b
                .model_served
                .as_ref()
                .or(b.model_requested.as_ref())
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            started_ms: b.started_at.unix_millis(),
            completed_ms: b.completed_at.unix_millis(),
            usage: b
                .usage
                .map(|u| (u.input_tokens.get(), u.output_tokens.get())),
            cost_micro_usd: b.cost_micro_usd.get(),
            pricing: b.pricing.as_ref().map(|p| PricingUse {
                table_sha256: p.table_sha256.to_string(),
                service_tier: p.service_tier.as_ref().map(|t| t.as_str().to_string()),
                long_context: p.long_context,
            }),
        })
        .collect()
}

fn u(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.as_str().map(str::to_string)
}

fn elements(doc: &Value) -> anyhow::Result<&Vec<Value>> {
    match doc {
        Value::Array(a) => Ok(a),
        Value::Object(o) => match o.get("data") {
            Some(Value::Array(a)) => Ok(a),
            _ => bail!("expected an object with a \"data\" array, or an array"),
        },
        _ => bail!("expected an object with a \"data\" array, or an array"),
    }
}

fn rfc3339_ms(v: &Value, key: &str) -> anyhow::Result<u64> {
    let text = s(v, key).with_context(|| format!("{key} is missing"))?;
    Ok(Timestamp::parse_rfc3339(&text)
        .with_context(|| format!("{key} {text:?} is not RFC 3339"))?
        .unix_millis())
}

/// Parses an OpenAI export document.
pub fn parse_openai(doc: &Value) -> anyhow::Result<Export> {
    let mut export = Export::default();
    for (i, e) in elements(doc)?.iter().enumerate() {
        let ctx = || format!("data[{i}]");
        if e.get("object").and_then(Value::as_str) == Some("bucket") {
            let start = u(e, &["start_time"]).with_context(|| format!("{}: start_time", ctx()))?;
            let end = u(e, &["end_time"]).with_context(|| format!("{}: end_time", ctx()))?;
            let results = e
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (j, r) in results.iter().enumerate() {
                export.buckets.push(ExportBucket {
                    index: (i, j),
                    start_ms: start.saturating_mul(1_000),
                    end_ms: end.saturating_mul(1_000),
                    model: s(r, "model"),
                    requests: u(r, &["num_model_requests"]),
                    input_tokens: u(r, &["input_tokens"]).unwrap_or(0),
                    output_tokens: u(r, &["output_tokens"]).unwrap_or(0),
                });
            }
        } else {
            let created = u(e, &["created"]).or_else(|| u(e, &["created_at"]));
            export.requests.push(ExportRequest {
                index: i,
                provider_request_id: s(e, "id"),
                model: s(e, "model").with_context(|| format!("{}: model", ctx()))?,
                at_ms: created.map(|c| c.saturating_mul(1_000)),
                input_tokens: u(e, &["usage", "prompt_tokens"])
                    .or_else(|| u(e, &["usage", "input_tokens"]))
                    .with_context(|| format!("{}: usage.prompt_tokens", ctx()))?,
                output_tokens: u(e, &["usage", "completion_tokens"])
                    .or_else(|| u(e, &["usage", "output_tokens"]))
                    .with_context(|| format!("{}: usage.completion_tokens", ctx()))?,
            });
        }
    }
    Ok(export)
}

/// Parses an Anthropic export document.
pub fn parse_anthropic(doc: &Value) -> anyhow::Result<Export> {
    let mut export = Export::default();
    for (i, e) in elements(doc)?.iter().enumerate() {
        let ctx = || format!("data[{i}]");
        if e.get("starting_at").is_some() {
            let start = rfc3339_ms(e, "starting_at").with_context(ctx)?;
            let end = rfc3339_ms(e, "ending_at").with_context(ctx)?;
            let results = e
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (j, r) in results.iter().enumerate() {
                let input = [
                    u(r, &["uncached_input_tokens"]),
                    u(r, &["cache_read_input_tokens"]),
                    u(r, &["cache_creation", "ephemeral_5m_input_tokens"]),
                    u(r, &["cache_creation", "ephemeral_1h_input_tokens"]),
                ]
                .into_iter()
                .flatten()
                .sum();
                export.buckets.push(ExportBucket {
                    index: (i, j),
                    start_ms: start,
                    end_ms: end,
                    model: s(r, "model"),
                    requests: None,
                    input_tokens: input,
                    output_tokens: u(r, &["output_tokens"]).unwrap_or(0),
                });
            }
        } else {
            let input = u(e, &["usage", "input_tokens"])
                .with_context(|| format!("{}: usage.input_tokens", ctx()))?
                + u(e, &["usage", "cache_read_input_tokens"]).unwrap_or(0)
                + u(e, &["usage", "cache_creation_input_tokens"]).unwrap_or(0);
            export.requests.push(ExportRequest {
                index: i,
                provider_request_id: s(e, "id"),
                model: s(e, "model").with_context(|| format!("{}: model", ctx()))?,
                at_ms: None,
                input_tokens: input,
                output_tokens: u(e, &["usage", "output_tokens"])
                    .with_context(|| format!("{}: usage.output_tokens", ctx()))?,
            });
        }
    }
    Ok(export)
}

/// The CSV header.
pub const CSV_HEADER: &str = "provider_request_id,model,timestamp,input_tokens,output_tokens";

/// Parses the normalized CSV.
pub fn parse_csv(text: &str) -> anyhow::Result<Export> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().trim();
    if header != CSV_HEADER {
        bail!("the first line must be exactly {CSV_HEADER}");
    }
    let mut export = Export::default();
    for (i, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [id, model, time, input, output] = fields.as_slice() else {
            bail!("line {}: expected 5 fields", i + 2);
        };
        let at_ms = match time.parse::<u64>() {
            Ok(secs) => secs.saturating_mul(1_000),
            Err(_) => Timestamp::parse_rfc3339(time)
                .with_context(|| format!("line {}: timestamp {time:?}", i + 2))?
                .unix_millis(),
        };
        export.requests.push(ExportRequest {
            index: i,
            provider_request_id: (!id.is_empty()).then(|| id.to_string()),
            model: model.to_string(),
            at_ms: Some(at_ms),
            input_tokens: input
                .parse()
                .with_context(|| format!("line {}: input_tokens", i + 2))?,
            output_tokens: output
                .parse()
                .with_context(|| format!("line {}: output_tokens", i + 2))?,
        });
    }
    Ok(export)
}

fn pair_problems(r: &ReceiptUse, e: &ExportRequest, tol: &Tolerances) -> Vec<String> {
    let mut problems = Vec::new();
    if r.model != e.model {
        problems.push(format!("model: receipt {}, export {}", r.model, e.model));
    }
    if let Some(at) = e.at_ms {
        let slack = tol.time_seconds.saturating_mul(1_000);
        if at + slack < r.started_ms || at > r.completed_ms.saturating_add(slack) {
            problems.push(format!(
                "time: export {} is outside the receipt's {} to {} by more than {}s",
                rfc3339(at),
                rfc3339(r.started_ms),
                rfc3339(r.completed_ms),
                tol.time_seconds
            ));
        }
    }
    match r.usage {
        None => problems.push("usage: the receipt has no usage".into()),
        Some((input, output)) => {
            if !tol.tokens_ok(input, e.input_tokens) {
                problems.push(format!(
                    "input_tokens: receipt {input}, export {}",
                    e.input_tokens
                ));
            }
            if !tol.tokens_ok(output, e.output_tokens) {
                problems.push(format!(
                    "output_tokens: receipt {output}, export {}",
                    e.output_tokens
                ));
            }
        }
    }
    problems
}

/// Reconciles receipts with an export. Pure and deterministic.
pub fn reconcile(
    receipts: &[ReceiptUse],
    export: &Export,
    format: ExportFormat,
    tol: Tolerances,
) -> Report {
    let mut matched = Vec::new();
    let mut mismatched = Vec::new();
    let mut used_receipts: BTreeSet<usize> = BTreeSet::new();
    let mut used_export: BTreeSet<usize> = BTreeSet::new();
    // 1. By provider request id.
    let mut by_id: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in receipts.iter().enumerate() {
        if let Some(id) = &r.provider_request_id {
            by_id.entry(id.as_str()).or_default().push(i);
        }
    }
    for (k, e) in export.requests.iter().enumerate() {
        let Some(id) = &e.provider_request_id else {
            continue;
        };
        let Some(&ri) = by_id
            .get(id.as_str())
            .and_then(|v| v.iter().find(|i| !used_receipts.contains(i)))
        else {
            continue;
        };
        used_receipts.insert(ri);
        used_export.insert(k);
        let r = &receipts[ri];
        let problems = pair_problems(r, e, &tol);
        if problems.is_empty() {
            matched.push(Matched {
                receipt_id: r.receipt_id.clone(),
                export_index: e.index,
                matched_by: "provider_request_id",
            });
        } else {
            mismatched.push(Mismatch {
                receipt_ids: vec![r.receipt_id.clone()],
                export_index: e.index.to_string(),
                problems,
            });
        }
    }
    // 2. Requests without a matching id: model, time and usage, closest in time.
    for (k, e) in export.requests.iter().enumerate() {
        if used_export.contains(&k) {
            continue;
        }
        let Some(at) = e.at_ms else { continue };
        let best = receipts
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                !used_receipts.contains(i)
                    && (e.provider_request_id.is_none() || r.provider_request_id.is_none())
                    && pair_problems(r, e, &tol).is_empty()
            })
            .min_by_key(|(i, r)| (r.started_ms.abs_diff(at), *i));
        if let Some((ri, r)) = best {
            used_receipts.insert(ri);
            used_export.insert(k);
            matched.push(Matched {
                receipt_id: r.receipt_id.clone(),
                export_index: e.index,
                matched_by: "model_time_usage",
            });
        }
    }
    // 3. Buckets, against the remaining receipts of their model and time.
    let mut matched_in_buckets = 0;
    let mut unmatched_export = Vec::new();
    for b in &export.buckets {
        let members: Vec<usize> = receipts
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                !used_receipts.contains(i)
                    && r.started_ms >= b.start_ms
                    && r.started_ms < b.end_ms
                    && b.model.as_ref().is_none_or(|m| *m == r.model)
            })
            .map(|(i, _)| i)
            .collect();
        let (input, output) = members.iter().fold((0u64, 0u64), |(a, b), i| {
            let (x, y) = receipts[*i].usage.unwrap_or((0, 0));
            (a + x, b + y)
        });
        let index = format!("{}.{}", b.index.0, b.index.1);
        if members.is_empty()
            && (b.input_tokens > 0 || b.output_tokens > 0 || b.requests.unwrap_or(0) > 0)
        {
            unmatched_export.push(UnmatchedExport {
                export_index: index,
                provider_request_id: None,
                model: b.model.clone(),
            });
            continue;
        }
        let mut problems = Vec::new();
        if let Some(n) = b.requests
            && n != members.len() as u64
        {
            problems.push(format!("requests: receipts {}, export {n}", members.len()));
        }
        if members.iter().any(|i| receipts[*i].usage.is_none()) {
            problems.push("usage: a receipt in the bucket has no usage".into());
        }
        if !tol.tokens_ok(input, b.input_tokens) {
            problems.push(format!(
                "input_tokens: receipts {input}, export {}",
                b.input_tokens
            ));
        }
        if !tol.tokens_ok(output, b.output_tokens) {
            problems.push(format!(
                "output_tokens: receipts {output}, export {}",
                b.output_tokens
            ));
        }
        used_receipts.extend(members.iter().copied());
        if problems.is_empty() {
            matched_in_buckets += members.len();
        } else {
            mismatched.push(Mismatch {
                receipt_ids: members
                    .iter()
                    .map(|i| receipts[*i].receipt_id.clone())
                    .collect(),
                export_index: index,
                problems,
            });
        }
    }
    let unmatched_receipts: Vec<UnmatchedReceipt> = receipts
        .iter()
        .enumerate()
        .filter(|(i, _)| !used_receipts.contains(i))
        .map(|(_, r)| UnmatchedReceipt {
            receipt_id: r.receipt_id.clone(),
            provider_request_id: r.provider_request_id.clone(),
            model: r.model.clone(),
            started_at: rfc3339(r.started_ms),
        })
        .collect();
    unmatched_export.extend(
        export
            .requests
            .iter()
            .enumerate()
            .filter(|(k, _)| !used_export.contains(k))
            .map(|(_, e)| UnmatchedExport {
                export_index: e.index.to_string(),
                provider_request_id: e.provider_request_id.clone(),
                model: Some(e.model.clone()),
            }),
    );
    matched.sort_by(|a, b| a.receipt_id.cmp(&b.receipt_id));
    mismatched.sort_by(|a, b| {
        a.receipt_ids
            .cmp(&b.receipt_ids)
            .then(a.export_index.cmp(&b.export_index))
    });
    let mut unmatched_receipts = unmatched_receipts;
    unmatched_receipts.sort_by(|a, b| a.receipt_id.cmp(&b.receipt_id));
    let pass =
        mismatched.is_empty() && unmatched_receipts.is_empty() && unmatched_export.is_empty();
    Report {
        format: "tollgate.dev/reconcile-report",
        format_version: 1,
        bundle: "not_verified",
        window: None,
        export_format: format,
        verdict: if pass { "pass" } else { "fail" },
        tolerances: tol,
        summary: Summary {
            receipts: receipts.len(),
            export_requests: export.requests.len(),
            export_buckets: export.buckets.len(),
            matched: matched.len(),
            matched_in_buckets,
            mismatched: mismatched.len(),
            unmatched_receipts: unmatched_receipts.len(),
            unmatched_export: unmatched_export.len(),
        },
        matched,
        mismatched,
        unmatched_receipts,
        unmatched_export,
        costs: costs_by_price(receipts),
    }
}

/// `verified` or `verified_with_open_streams` when the bundle may be
/// reconciled; `None` when it failed verification.
fn verification_outcome(report: &VerificationReport) -> Option<&'static str> {
    if report.passed() {
        Some("verified")
    } else if report.passed_but_open_streams() {
        Some("verified_with_open_streams")
    } else {
        None
    }
}

fn read_limited(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    if len > limit {
        bail!(
            "{} is {len} bytes, over the {limit}-byte limit",
            path.display()
        );
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Runs `reconcile`.
pub fn run(args: &ReconcileArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let window = match (args.since, args.until) {
        (None, None) => None,
        (since, until) => {
            let since_ms = since.map_or(0, Timestamp::unix_millis);
            let until_ms = until.map_or(Timestamp::MAX_UNIX_MILLIS, Timestamp::unix_millis);
            if since_ms >= until_ms {
                bail!("--since must be before --until");
            }
            Some(Window { since_ms, until_ms })
        }
    };
    let trust = crate::verify::load_trust_roots(&args.trust_anchor)?;
    let bundle_bytes = read_limited(&args.bundle, MAX_BUNDLE_BYTES)?;
    let verified = match trust {
        None => "not_verified",
        Some(trust) => {
            let options = VerifyOptions {
                trust: Some(trust),
                ..VerifyOptions::default()
            };
            let verification = verify_bundle(&bundle_bytes, &options);
            match verification_outcome(&verification) {
                Some(outcome) => outcome,
                None => {
                    let findings: Vec<_> = verification.findings().take(20).collect();
                    let refused = serde_json::json!({
                        "format": "tollgate.dev/reconcile-report",
                        "format_version": 1,
                        "verdict": "fail",
                        "bundle": "failed_verification",
                        "verification": {"verdict": verification.verdict, "findings": findings},
                    });
                    serde_json::to_writer_pretty(&mut *out, &refused)?;
                    writeln!(out)?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let bundle: Bundle = tollgate_evidence::strict_json::from_slice(&bundle_bytes)
        .with_context(|| format!("{} is not an evidence bundle", args.bundle.display()))?;
    let export_bytes = read_limited(&args.export, MAX_EXPORT_BYTES)?;
    let export = match args.format {
        ExportFormat::Csv => {
            parse_csv(std::str::from_utf8(&export_bytes).context("the CSV export is not UTF-8")?)
        }
        ExportFormat::Openai | ExportFormat::Anthropic => {
            let doc: Value = serde_json::from_slice(&export_bytes)
                .with_context(|| format!("{} is not JSON", args.export.display()))?;
            if args.format == ExportFormat::Openai {
                parse_openai(&doc)
            } else {
                parse_anthropic(&doc)
            }
        }
    }
    .with_context(|| format!("reading {}", args.export.display()))?;
    let receipts = receipts_of(&bundle, args.include_dry_run);
    let (receipts, export) = match &window {
        Some(window) => window.apply(receipts, export),
        None => (receipts, export),
    };
    let mut report = reconcile(
        &receipts,
        &export,
        args.format,
        Tolerances {
            time_seconds: args.time_tolerance_seconds,
            tokens_absolute: args.token_tolerance,
            tokens_percent: args.token_tolerance_percent,
        },
    );
    report.bundle = verified;
    report.window = window;
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)?;
    Ok(if report.verdict == "pass" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_740_787_200_000;

    fn receipt(n: u64, id: Option<&str>, model: &str, input: u64, output: u64) -> ReceiptUse {
        ReceiptUse {
            receipt_id: format!("r{n}"),
            provider_request_id: id.map(str::to_string),
            model: model.into(),
            started_ms: T + n * 1_000,
            completed_ms: T + n * 1_000 + 500,
            usage: Some((input, output)),
            cost_micro_usd: input + output,
            pricing: None,
        }
    }

    #[test]
    fn costs_are_grouped_by_the_price_table_and_tier_that_made_them() {
        let priced = |n, tier: Option<&str>, long| {
            let mut r = receipt(n, None, "gpt-5", 10, 5);
            r.pricing = Some(PricingUse {
                table_sha256: "ab".repeat(32),
                service_tier: tier.map(str::to_string),
                long_context: long,
            });
            r
        };
        let receipts = vec![
            priced(1, Some("flex"), false),
            priced(2, Some("flex"), false),
            priced(3, None, true),
            receipt(4, None, "gpt-5", 1, 1),
        ];
        let costs = costs_by_price(&receipts);
        let rows: Vec<_> = costs
            .iter()
            .map(|c| {
                (
                    c.service_tier.as_deref(),
                    c.long_context,
                    c.receipts,
                    c.cost_micro_usd,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (None, false, 1, 2),
                (None, true, 1, 15),
                (Some("flex"), false, 2, 30)
            ]
        );
        assert_eq!(
            costs[0].table_sha256, None,
            "an older receipt names no table"
        );
        assert_eq!(
            costs[2].table_sha256.as_deref(),
            Some("ab".repeat(32).as_str())
        );
    }

    fn strict() -> Tolerances {
        Tolerances {
            time_seconds: 60,
            tokens_absolute: 0,
            tokens_percent: 0,
        }
    }

    #[test]
    fn a_window_keeps_what_started_in_it_and_buckets_wholly_inside() {
        let receipts = vec![
            receipt(1, None, "m", 1, 1),
            receipt(5, None, "m", 1, 1),
            receipt(9, None, "m", 1, 1),
            // Started inside, logged by the provider just after the window.
            receipt(7, Some("late-log"), "m", 1, 1),
            // Started before, undated in the export.
            receipt(2, Some("early"), "m", 1, 1),
        ];
        let request = |index, at_ms| ExportRequest {
            index,
            provider_request_id: None,
            model: "m".into(),
            at_ms,
            input_tokens: 1,
            output_tokens: 1,
        };
        let bucket = |start_ms, end_ms| ExportBucket {
            index: (0, 0),
            start_ms,
            end_ms,
            model: None,
            requests: None,
            input_tokens: 0,
            output_tokens: 0,
        };
        let export = Export {
            requests: vec![
                request(0, Some(T + 1_000)),
                request(1, Some(T + 5_000)),
                request(2, None),
                ExportRequest {
                    provider_request_id: Some("late-log".into()),
                    ..request(3, Some(T + 8_500))
                },
                ExportRequest {
                    provider_request_id: Some("early".into()),
                    ..request(4, None)
                },
            ],
            buckets: vec![bucket(T + 4_000, T + 6_000), bucket(T, T + 10_000)],
        };
        let window = Window {
            since_ms: T + 4_000,
            until_ms: T + 8_000,
        };
        let (receipts, export) = window.apply(receipts, export);
        assert_eq!(
            receipts
                .iter()
                .map(|r| r.receipt_id.as_str())
                .collect::<Vec<_>>(),
            ["r5", "r7"]
        );
        assert_eq!(
            export.requests.iter().map(|e| e.index).collect::<Vec<_>>(),
            [1, 2, 3],
            "dated in the window or undated, and the rows of receipts in the window \
             by id; never the rows of receipts outside it"
        );
        assert_eq!(export.buckets.len(), 1, "the straddling bucket is left out");
        assert_eq!(export.buckets[0].start_ms, T + 4_000);
    }

    #[test]
    fn openai_requests_match_by_id_and_a_falsified_row_fails() {
        let receipts = [
            receipt(1, Some("chatcmpl-1"), "gpt-4o", 10, 5),
            receipt(2, Some("chatcmpl-2"), "gpt-4o", 20, 6),
        ];
        let doc = serde_json::json!({"object": "list", "data": [
            {"id": "chatcmpl-1", "object": "chat.completion", "created": (T / 1000) + 1, "model": "gpt-4o",
             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}},
            {"id": "chatcmpl-2", "object": "chat.completion", "created": (T / 1000) + 2, "model": "gpt-4o",
             "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}},
        ]});
        let export = parse_openai(&doc).unwrap();
        let report = reconcile(&receipts, &export, ExportFormat::Openai, strict());
        assert_eq!(report.verdict, "pass", "{report:?}");
        assert_eq!(report.summary.matched, 2);

        let mut falsified = doc.clone();
        falsified["data"][1]["usage"]["completion_tokens"] = 60.into();
        let report = reconcile(
            &receipts,
            &parse_openai(&falsified).unwrap(),
            ExportFormat::Openai,
            strict(),
        );
        assert_eq!(report.verdict, "fail");
        assert_eq!(report.mismatched.len(), 1);
        assert_eq!(report.mismatched[0].receipt_ids, ["r2"]);
        assert!(report.mismatched[0].problems[0].starts_with("output_tokens"));
    }

    #[test]
    fn tolerances_allow_small_differences() {
        let receipts = [receipt(1, Some("a"), "m", 1_000, 100)];
        let export = parse_csv(&format!("{CSV_HEADER}\na,m,{},1010,100\n", T / 1000 + 1)).unwrap();
        assert_eq!(
            reconcile(&receipts, &export, ExportFormat::Csv, strict()).verdict,
            "fail"
        );
        let loose = Tolerances {
            tokens_percent: 1,
            ..strict()
        };
        assert_eq!(
            reconcile(&receipts, &export, ExportFormat::Csv, loose).verdict,
            "pass"
        );
    }

    #[test]
    fn unmatched_records_on_either_side_fail() {
        let receipts = [
            receipt(1, Some("a"), "m", 1, 1),
            receipt(2, None, "m", 2, 2),
        ];
        let csv = format!(
            "{CSV_HEADER}\na,m,{},1,1\n,m,{},2,2\nzzz,m,{},3,3\n",
            T / 1000 + 1,
            T / 1000 + 2,
            T / 1000 + 9
        );
        let report = reconcile(
            &receipts,
            &parse_csv(&csv).unwrap(),
            ExportFormat::Csv,
            strict(),
        );
        assert_eq!(report.summary.matched, 2);
        assert_eq!(report.matched[1].matched_by, "model_time_usage");
        assert_eq!(report.unmatched_export.len(), 1);
        assert_eq!(report.verdict, "fail");
    }

    #[test]
    fn buckets_compare_sums() {
        let receipts = [
            receipt(1, None, "claude-sonnet-4", 100, 10),
            receipt(2, None, "claude-sonnet-4", 50, 5),
        ];
        let doc = serde_json::json!({"data": [{
            "starting_at": "2025-03-01T00:00:00Z", "ending_at": "2025-03-01T01:00:00Z",
            "results": [{"model": "claude-sonnet-4", "uncached_input_tokens": 100, "cache_read_input_tokens": 50,
                         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                         "output_tokens": 15}]
        }], "has_more": false});
        let export = parse_anthropic(&doc).unwrap();
        let report = reconcile(&receipts, &export, ExportFormat::Anthropic, strict());
        assert_eq!(report.verdict, "pass", "{report:?}");
        assert_eq!(report.summary.matched_in_buckets, 2);

        let usage = serde_json::json!({"object": "page", "data": [{
            "object": "bucket", "start_time": T / 1000, "end_time": T / 1000 + 3600,
            "results": [{"object": "organization.usage.completions.result", "model": "claude-sonnet-4",
                         "input_tokens": 150, "output_tokens": 15, "num_model_requests": 3}]}]});
        let report = reconcile(
            &receipts,
            &parse_openai(&usage).unwrap(),
            ExportFormat::Openai,
            strict(),
        );
        assert_eq!(report.verdict, "fail");
        assert!(report.mismatched[0].problems[0].starts_with("requests"));
    }

    #[test]
    fn the_csv_header_is_checked() {
        assert!(parse_csv("id,model\n").is_err());
    }
}

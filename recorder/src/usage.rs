//! Usage queries: who used what. Storage returns [`UsageCell`]s (receipts counted
//! and summed per namespace, serviceAccount, provider, model and hour); the pure
//! [`aggregate`] groups them by any subset of those dimensions and an optional
//! hour or day bucket, and adds a grand total. Warnings name chain faults (gaps,
//! broken links) and streams still open in the range, so a total is never shown as
//! complete when the record behind it is not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_evidence::Timestamp;

use crate::error::RecorderError;
use crate::settings::{MAX_USAGE_ROWS, MAX_USAGE_WARNINGS};
use crate::store::{CellQuery, FaultRow, Store, StreamRow, UsageCell};

const HOUR_MS: u64 = 3_600_000;
/// Longest range one usage query covers
/// ([`tollgate_wire::quota_math::MAX_USAGE_RANGE_SECS`]).
pub const MAX_USAGE_RANGE_MS: u64 = tollgate_wire::quota_math::MAX_USAGE_RANGE_SECS * 1000;
/// Most faults read for a usage answer's warnings.
const MAX_FAULTS_READ: usize = 10_000;

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupKey {
    /// The workload's namespace.
    Namespace,
    /// The workload's serviceAccount.
    ServiceAccount,
    /// The provider.
    Provider,
    /// The model served (else requested).
    Model,
    /// The end user: the receipt's `caller_hash` ("" when none was named).
    Caller,
    /// The verdict's reason code: `allowed`, or why the request was refused
    /// or failed (`model_not_allowed`, `quota_exceeded`, `upstream_429`, …).
    Reason,
}

impl GroupKey {
    /// Parses `namespace`, `serviceAccount` (or `service_account`, `sa`),
    /// `provider`, `model`, `caller` or `reason`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "namespace" | "ns" => Self::Namespace,
            "serviceAccount" | "service_account" | "serviceaccount" | "sa" => Self::ServiceAccount,
            "provider" => Self::Provider,
            "model" => Self::Model,
            "caller" => Self::Caller,
            "reason" => Self::Reason,
            _ => return None,
        })
    }

    /// Parses a comma-separated list, keeping the given order and dropping repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, RecorderError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key = Self::parse(part).ok_or_else(|| {
                RecorderError::BadRequest(format!(
                    "cannot group by {part:?}: use namespace, serviceAccount, provider, model, caller, reason"
                ))
            })?;
            if !out.contains(&key) {
                out.push(key);
            }
        }
        Ok(out)
    }
}

/// A time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Bucket {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

impl Bucket {
    /// Parses `hour` or `day`.
    pub fn parse(s: &str) -> Result<Self, RecorderError> {
        match s {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            other => Err(RecorderError::BadRequest(format!(
                "bucket {other:?}: use hour or day"
            ))),
        }
    }

    fn start_ms(self, hour: u64) -> u64 {
        match self {
            Self::Hour => hour * HOUR_MS,
            Self::Day => (hour / 24) * 24 * HOUR_MS,
        }
    }
}

/// A usage query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Receipts that started at or after this (unix ms).
    pub since_ms: u64,
    /// ... and before this.
    pub until_ms: u64,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Group by these, in this order.
    pub group_by: Vec<GroupKey>,
    /// And by this bucket.
    pub bucket: Option<Bucket>,
    /// Which page of the rows.
    pub page: Page,
}

/// Counts and sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Requests (receipts).
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in micro-USD.
    pub cost_micro_usd: u64,
    /// Input tokens read from a prompt cache (part of `input_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    /// Input tokens written to a prompt cache (part of `input_tokens`).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Output tokens spent on reasoning (part of `output_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Totals {
    fn add_cell(&mut self, c: &UsageCell) {
        self.requests = self.requests.saturating_add(c.requests);
        self.input_tokens = self.input_tokens.saturating_add(c.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(c.output_tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(c.cost_micro_usd);
        self.cached_tokens = self.cached_tokens.saturating_add(c.cached_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(c.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(c.reasoning_tokens);
    }
}

/// One group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Namespace, when grouped by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// ServiceAccount, when grouped by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Provider, when grouped by it ("" when the request had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model, when grouped by it ("" when the request had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Caller hash (hex), when grouped by it ("" when the request named no
    /// end user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The verdict's reason code, when grouped by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bucket start (RFC 3339), when bucketed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<String>,
    /// The sums.
    #[serde(flatten)]
    pub totals: Totals,
}

/// Something that makes the totals incomplete or suspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// `seq_gap`, `broken_chain`, `seq_conflict`, `key_changed` or `stream_open`.
    pub code: String,
    /// The stream.
    pub stream_id: String,
    /// Its namespace.
    pub namespace: String,
    /// The envelope concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For people.
    pub message: String,
}

/// The answer to a usage query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Range start (RFC 3339).
    pub since: String,
    /// Range end (RFC 3339, exclusive).
    pub until: String,
    /// The namespace filter, if any.
    pub namespace: Option<String>,
    /// Grouping.
    pub group_by: Vec<GroupKey>,
    /// Bucket.
    pub bucket: Option<Bucket>,
    /// Groups, sorted by their keys.
    pub rows: Vec<UsageRow>,
    /// Over all rows.
    pub total: Totals,
    /// Where the next page starts: send the same parameters with
    /// `cursor` set to this. Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Faults and open streams in the range.
    pub warnings: Vec<Warning>,
    /// Warnings not listed (over the listing bound).
    pub warnings_omitted: u64,
    /// How fresh the data behind the answer is (recorders before this field
    /// send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

/// How fresh the data behind a usage answer is. Gateways ship receipts a
/// moment after each request (at most a second when idle, at once under
/// load), so the newest receipts of a running gateway may not be counted yet;
/// a gateway that cannot reach the recorder keeps them in its spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// When the recorder answered (RFC 3339).
    pub answered_at: String,
    /// The newest record of the streams active in the range (RFC 3339): a
    /// request's start (receipts, forward decisions) or a stream's close; for
    /// a range that ended in the past, it may be after `until`.
    pub newest_record_at: Option<String>,
    /// Streams in the range with no close record (running gateways, or
    /// gateways that stopped without shipping their close).
    pub open_streams: u64,
    /// Of those, the one that has shipped nothing for longest: its newest
    /// stored record. An idle gateway ships nothing; so does one that cannot
    /// reach the recorder.
    pub quietest_open_stream_since: Option<String>,
}

/// A row's sort key: its group values in `group_by` order, then its bucket
/// start. Rows are answered in this order, and a cursor names the last one
/// given.
pub type RowKey = (Vec<String>, Option<u64>);

/// Groups cells, keyed and so sorted by [`RowKey`]; and the grand total. Pure.
pub fn group(
    cells: &[UsageCell],
    group_by: &[GroupKey],
    bucket: Option<Bucket>,
) -> (BTreeMap<RowKey, Totals>, Totals) {
    let mut groups: BTreeMap<RowKey, Totals> = BTreeMap::new();
    let mut total = Totals::default();
    for cell in cells {
        let values = group_by
            .iter()
            .map(|k| match k {
                GroupKey::Namespace => cell.namespace.clone(),
                GroupKey::ServiceAccount => cell.service_account.clone(),
                GroupKey::Provider => cell.provider.clone(),
                GroupKey::Model => cell.model.clone(),
                GroupKey::Caller => cell.caller.clone(),
                GroupKey::Reason => cell.reason.clone(),
            })
            .collect();
        let bucket_start = bucket.map(|b| b.start_ms(cell.hour));
        groups
            .entry((values, bucket_start))
            .or_default()
            .add_cell(cell);
        total.add_cell(cell);
    }
    (groups, total)
}

/// The row for one group.
fn row(group_by: &[GroupKey], (values, bucket_start): RowKey, totals: Totals) -> UsageRow {
    let mut row = UsageRow {
        namespace: None,
        service_account: None,
        provider: None,
        model: None,
        caller: None,
        reason: None,
        bucket_start: bucket_start.and_then(|ms| {
            Timestamp::from_unix_millis(ms)
                .ok()
                .map(Timestamp::to_canonical_string)
        }),
        totals,
    };
    for (key, value) in group_by.iter().zip(values) {
        let slot = match key {
            GroupKey::Namespace => &mut row.namespace,
            GroupKey::ServiceAccount => &mut row.service_account,
            GroupKey::Provider => &mut row.provider,
            GroupKey::Model => &mut row.model,
            GroupKey::Caller => &mut row.caller,
            GroupKey::Reason => &mut row.reason,
        };
        *slot = Some(value);
    }
    row
}

/// Groups cells; rows sorted by group values then bucket. Pure.
pub fn aggregate(
    cells: &[UsageCell],
    group_by: &[GroupKey],
    bucket: Option<Bucket>,
) -> (Vec<UsageRow>, Totals) {
    let (groups, total) = group(cells, group_by, bucket);
    let rows = groups
        .into_iter()
        .map(|(key, totals)| row(group_by, key, totals))
        .collect();
    (rows, total)
}

/// One page of grouped rows: those after `page.after`, at most `page.size`,
/// and the key of the last one if more follow. Pure.
pub fn page_of(
    groups: BTreeMap<RowKey, Totals>,
    group_by: &[GroupKey],
    page: &Page,
) -> (Vec<UsageRow>, Option<RowKey>) {
    let mut after = groups
        .into_iter()
        .filter(|(key, _)| page.after.as_ref().is_none_or(|a| key > a))
        .peekable();
    let mut rows = Vec::new();
    let mut last = None;
    while rows.len() < page.size {
        let Some((key, totals)) = after.next() else {
            break;
        };
        last = Some(key.clone());
        rows.push(row(group_by, key, totals));
    }
    let more = after.peek().is_some();
    (rows, last.filter(|_| more))
}

/// Which page of a usage answer to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Rows per page, `1..=`[`MAX_USAGE_ROWS`].
    pub size: usize,
    /// Start after this row (from a cursor).
    pub after: Option<RowKey>,
    /// The query's fingerprint ([`query_fingerprint`]), carried in cursors.
    pub query_id: String,
    /// Count only what the log held when the first page was answered (its
    /// size then), so receipts arriving between pages do not shift them.
    pub snapshot: Option<u64>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            size: MAX_USAGE_ROWS,
            after: None,
            query_id: String::new(),
            snapshot: None,
        }
    }
}

/// Longest cursor accepted, in characters.
const MAX_CURSOR_CHARS: usize = 16 * 1024;

/// Where the next page of a usage answer starts: the query it belongs to,
/// that query's range as resolved for its first page (so relative times such
/// as `since=24h` do not move between pages), and the last row given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// [`query_fingerprint`] of the query's parameters.
    pub query: String,
    /// The range, resolved.
    pub since_ms: u64,
    /// The range's end, resolved.
    pub until_ms: u64,
    /// The last row of the page before.
    pub after: RowKey,
    /// The log's size when the first page was answered.
    pub snapshot: u64,
}

impl Cursor {
    /// URL-safe base64 of its JSON: opaque to clients.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a cursor a page answer gave out.
    pub fn decode(text: &str) -> Result<Self, RecorderError> {
        use base64::Engine as _;
        let bad = || RecorderError::BadRequest("cursor: not one this recorder gave out".into());
        if text.len() > MAX_CURSOR_CHARS {
            return Err(bad());
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

/// A fingerprint of a usage query's parameters as the client sent them
/// (`since`, `until`, `namespace`, `group_by`, `bucket`, `page_size`; not the
/// cursor), so a cursor is only taken with the query it came from. Pure.
pub fn query_fingerprint(params: &[(&str, Option<&str>)]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (name, value) in params {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        match value {
            Some(v) => {
                hasher.update([1]);
                hasher.update((v.len() as u64).to_be_bytes());
                hasher.update(v.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Warnings for faults and open streams, faults first.
pub fn warnings(faults: &[FaultRow], open: &[StreamRow]) -> Vec<Warning> {
    let mut out: Vec<Warning> = faults
        .iter()
        .map(|f| Warning {
            code: match f.fault.kind {
                crate::ingest::FaultKind::Gap => "seq_gap",
                crate::ingest::FaultKind::BrokenChain => "broken_chain",
                crate::ingest::FaultKind::Conflict => "seq_conflict",
                crate::ingest::FaultKind::KeyChanged => "key_changed",
            }
            .to_string(),
            stream_id: f.fault.stream_id.clone(),
            namespace: f.namespace.clone(),
            seq: Some(f.fault.seq),
            message: f.fault.message.clone(),
        })
        .collect();
    out.extend(open.iter().map(|s| Warning {
        code: "stream_open".into(),
        stream_id: s.stream_id.clone(),
        namespace: s.namespace.clone(),
        seq: None,
        message: format!(
            "stream has no close record (pod {}): the gateway is running, crashed, or has not shipped its tail; {} receipt(s) stored",
            s.pod,
            s.next_seq.saturating_sub(1)
        ),
    }));
    out
}

/// Answers a usage query from storage at `now_ms` (no authorization:
/// callers check it).
pub async fn report(
    store: &dyn Store,
    query: &UsageQuery,
    now_ms: u64,
) -> Result<UsageReport, RecorderError> {
    if query.since_ms >= query.until_ms {
        return Err(RecorderError::BadRequest(
            "since must be before until".into(),
        ));
    }
    if query.until_ms - query.since_ms > MAX_USAGE_RANGE_MS {
        return Err(RecorderError::BadRequest(format!(
            "a range of {} days: ask for at most {} days at a time",
            (query.until_ms - query.since_ms) / (24 * HOUR_MS),
            MAX_USAGE_RANGE_MS / (24 * HOUR_MS)
        )));
    }
    // Every page of one answer counts the same envelopes: the log as the
    // first page found it.
    let snapshot = match query.page.snapshot {
        Some(size) => size,
        None => store.meta().await?.map_or(0, |m| m.size),
    };
    let cells_query = CellQuery {
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        namespace: query.namespace.clone(),
        by_caller: query.group_by.contains(&GroupKey::Caller),
        by_reason: query.group_by.contains(&GroupKey::Reason),
        before_log_index: Some(snapshot),
    };
    let cells = store.usage_cells(&cells_query).await?;
    let (groups, total) = group(&cells, &query.group_by, query.bucket);
    let (rows, last) = page_of(groups, &query.group_by, &query.page);
    let next_cursor = last.map(|after| {
        Cursor {
            query: query.page.query_id.clone(),
            since_ms: query.since_ms,
            until_ms: query.until_ms,
            after,
            snapshot,
        }
        .encode()
    });
    let faults = store.faults(&cells_query, MAX_FAULTS_READ).await?;
    let (open, streams) = store.open_streams(&cells_query, MAX_USAGE_WARNINGS).await?;
    let mut listed = warnings(&faults, &open);
    let all = faults.len() as u64 + streams.open;
    listed.truncate(MAX_USAGE_WARNINGS);
    let omitted = all.saturating_sub(listed.len() as u64);
    let rfc = |ms: u64| {
        Timestamp::from_unix_millis(ms)
            .map(Timestamp::to_canonical_string)
            .map_err(|e| RecorderError::BadRequest(format!("time out of range: {e}")))
    };
    Ok(UsageReport {
        since: rfc(query.since_ms)?,
        until: rfc(query.until_ms.min(Timestamp::MAX_UNIX_MILLIS))?,
        namespace: query.namespace.clone(),
        group_by: query.group_by.clone(),
        bucket: query.bucket,
        rows,
        total,
        next_cursor,
        warnings: listed,
        warnings_omitted: omitted,
        freshness: Some(Freshness {
            answered_at: rfc(now_ms)?,
            newest_record_at: streams.newest_record_ms.map(rfc).transpose()?,
            open_streams: streams.open,
            quietest_open_stream_since: streams.quietest_open_record_ms.map(rfc).transpose()?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(ns: &str, model: &str, hour: u64, requests: u64) -> UsageCell {
        UsageCell {
            namespace: ns.into(),
            service_account: "sa".into(),
            provider: "openai".into(),
            model: model.into(),
            hour,
            requests,
            input_tokens: requests * 10,
            output_tokens: requests * 2,
            cost_micro_usd: requests * 100,
            cached_tokens: requests * 3,
            cache_write_tokens: requests,
            reasoning_tokens: requests,
            caller: String::new(),
            reason: "allowed".into(),
        }
    }

    #[test]
    fn groups_by_caller_hash() {
        let mut alice = cell("a", "m1", 10, 1);
        alice.caller = "aa".repeat(32);
        let mut alice_later = cell("b", "m2", 11, 2);
        alice_later.caller = "aa".repeat(32);
        let nobody = cell("a", "m1", 10, 4);
        let (rows, _) = aggregate(&[alice, alice_later, nobody], &[GroupKey::Caller], None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].caller.as_deref(), Some(""));
        assert_eq!(rows[0].totals.requests, 4);
        assert_eq!(rows[1].caller.as_deref(), Some("aa".repeat(32).as_str()));
        assert_eq!(rows[1].totals.requests, 3);
        assert_eq!(rows[1].namespace, None);
        assert_eq!(
            GroupKey::parse_list("caller").unwrap(),
            vec![GroupKey::Caller]
        );
    }

    #[test]
    fn groups_by_reason_for_refusals() {
        let mut refused = cell("a", "m1", 10, 2);
        refused.reason = "quota_exceeded".into();
        let (rows, total) = aggregate(
            &[cell("a", "m1", 10, 3), refused],
            &GroupKey::parse_list("reason").unwrap(),
            None,
        );
        let by_reason: Vec<(Option<&str>, u64)> = rows
            .iter()
            .map(|r| (r.reason.as_deref(), r.totals.requests))
            .collect();
        assert_eq!(
            by_reason,
            [(Some("allowed"), 3), (Some("quota_exceeded"), 2)]
        );
        assert_eq!(total.requests, 5);
        assert!(GroupKey::parse_list("reasons").is_err());
    }

    #[test]
    fn walking_the_pages_gives_every_row_once_in_order() {
        let cells: Vec<UsageCell> = (0..7)
            .flat_map(|h| [cell("a", "m1", h, 1), cell("b", "m2", h * 2, 2)])
            .collect();
        let keys = [GroupKey::Namespace, GroupKey::Model];
        let (whole, _) = aggregate(&cells, &keys, Some(Bucket::Hour));
        assert_eq!(whole.len(), 14);
        for size in 1..=15 {
            let mut page = Page {
                size,
                ..Page::default()
            };
            let mut walked = Vec::new();
            loop {
                let (groups, _) = group(&cells, &keys, Some(Bucket::Hour));
                let (rows, last) = page_of(groups, &keys, &page);
                assert!(rows.len() <= size);
                walked.extend(rows);
                match last {
                    Some(after) => page.after = Some(after),
                    None => break,
                }
            }
            assert_eq!(walked, whole, "page size {size}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = Cursor {
            query: query_fingerprint(&[("since", Some("24h")), ("until", None)]),
            since_ms: 1,
            until_ms: 2,
            after: (vec!["ns".into(), "é/?&=".into()], Some(3_600_000)),
            snapshot: 42,
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        for bad in ["", "!!", "e30", &"A".repeat(20_000)] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
        // The fingerprint tells a missing parameter from an empty one.
        assert_ne!(
            query_fingerprint(&[("until", None)]),
            query_fingerprint(&[("until", Some(""))])
        );
    }

    #[test]
    fn groups_and_totals() {
        let cells = [
            cell("a", "m1", 10, 1),
            cell("a", "m2", 10, 2),
            cell("b", "m1", 11, 3),
            cell("a", "m1", 35, 4),
        ];
        let (rows, total) = aggregate(&cells, &[GroupKey::Namespace], None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].namespace.as_deref(), Some("a"));
        assert_eq!(rows[0].totals.requests, 7);
        assert_eq!(rows[0].model, None);
        assert_eq!(
            total,
            Totals {
                requests: 10,
                input_tokens: 100,
                output_tokens: 20,
                cost_micro_usd: 1_000,
                cached_tokens: 30,
                cache_write_tokens: 10,
                reasoning_tokens: 10,
            }
        );
        let (rows, _) = aggregate(&cells, &[GroupKey::Model], Some(Bucket::Day));
        // m1 day 0 (hours 10, 11), m1 day 1 (hour 35), m2 day 0.
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].totals.requests, 4);
        assert_eq!(
            rows[1].bucket_start.as_deref(),
            Some("1970-01-02T00:00:00.000Z")
        );
        let (rows, total2) = aggregate(&cells, &[], None);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].totals, total2);
    }

    #[test]
    fn group_lists_parse_in_order_without_repeats() {
        assert_eq!(
            GroupKey::parse_list("model, namespace,model").unwrap(),
            vec![GroupKey::Model, GroupKey::Namespace]
        );
        assert!(GroupKey::parse_list("pod").is_err());
    }

    #[test]
    fn report_json_has_a_top_level_total() {
        let report = UsageReport {
            since: "a".into(),
            until: "b".into(),
            namespace: None,
            group_by: vec![GroupKey::ServiceAccount],
            bucket: None,
            rows: vec![],
            total: Totals::default(),
            next_cursor: None,
            warnings: vec![],
            warnings_omitted: 0,
            freshness: None,
        };
        let v = serde_json::to_value(&report).unwrap();
        for k in [
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_micro_usd",
        ] {
            assert!(v["total"].get(k).is_some(), "{k}");
        }
        assert_eq!(v["group_by"][0], "serviceAccount");
        // An answer from a recorder that predates `freshness` still reads.
        let mut old = v.clone();
        old.as_object_mut().map(|o| o.remove("freshness"));
        let read: UsageReport = serde_json::from_value(old).unwrap();
        assert_eq!(read.freshness, None);
    }
}

//! `kubectl tollgate usage`: who used what, from a local recorder's SQLite store
//! (`--local DATA_DIR`), a recorder's API (`--recorder URL --token-file FILE`), or,
//! with neither, the cluster of the kubeconfig through its API server.
//! Prints a table (groups, then a TOTAL row, then warnings) or the recorder's JSON
//! report, whose top-level `total` holds `requests`, `input_tokens`,
//! `output_tokens` and `cost_micro_usd`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tollgate_evidence::Timestamp;
use tollgate_recorder::store::sqlite::SqliteStore;
use tollgate_recorder::usage::{
    Bucket, Cursor, Freshness, GroupKey, Page, Totals, UsageQuery, UsageReport,
};
use tollgate_wire::client::{HttpClient, public_roots, roots_from_pem_file};

/// Where the data comes from (shared with `bundle export`).
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// A local recorder's data directory (reads DATA_DIR/recorder.db directly).
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "recorder")]
    pub local: Option<PathBuf>,
    /// A recorder's base URL, e.g. https://tollgate-recorder.tollgate-system.svc:8443.
    #[arg(long, value_name = "URL")]
    pub recorder: Option<String>,
    /// Bearer token file for --recorder (local mode: DATA_DIR/local-token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for an https --recorder (default: public roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Largest answer read from a recorder's usage API.
const MAX_USAGE_RESPONSE: usize = 64 * 1024 * 1024;

impl SourceArgs {
    /// The SQLite database of `--local`, which must exist.
    pub fn local_db(&self) -> anyhow::Result<Option<PathBuf>> {
        let Some(dir) = &self.local else {
            return Ok(None);
        };
        let db = dir.join("recorder.db");
        if !db.is_file() {
            bail!(
                "{} does not exist: is {} a recorder data directory?",
                db.display(),
                dir.display()
            );
        }
        Ok(Some(db))
    }

    /// A client and bearer token for `--recorder`.
    pub fn remote(&self) -> anyhow::Result<(HttpClient, String, String)> {
        let Some(url) = &self.recorder else {
            bail!("give --local DATA_DIR or --recorder URL");
        };
        let token_file = self
            .token_file
            .as_ref()
            .context("--recorder needs --token-file")?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        let tls = match &self.ca_file {
            Some(path) => roots_from_pem_file(path)?,
            None => public_roots()?,
        };
        Ok((
            HttpClient::new(tls, Duration::from_secs(300)),
            url.trim_end_matches('/').to_string(),
            token,
        ))
    }
}

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The recorder's JSON report.
    Json,
}

/// Flags of `usage`.
#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// One namespace (default: `default`, as kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Start: a duration ago (30m, 24h, 7d) or RFC 3339.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End (exclusive): a duration ago or RFC 3339; default now.
    #[arg(long)]
    pub until: Option<String>,
    /// Group by: namespace, serviceAccount, provider, model, caller, reason
    /// (comma-separated). `caller` is the receipts' `caller_hash`: the keyed
    /// hash of the end-user id the app sent, never the id. `reason` is the
    /// verdict's reason code: `allowed`, or why a request was refused or failed.
    #[arg(long, default_value = "")]
    pub by: String,
    /// Also group by time: hour or day.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A current-thread runtime for the async recorder calls.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

fn namespace(args: &UsageArgs) -> Option<String> {
    if args.all_namespaces {
        None
    } else {
        Some(args.namespace.clone().unwrap_or_else(|| "default".into()))
    }
}

/// Most pages read for one answer (each up to 10 000 rows).
const MAX_PAGES: usize = 100;

/// The whole answer: the first page, then every page its cursors lead to.
async fn fetch(args: &UsageArgs) -> anyhow::Result<UsageReport> {
    let mut report = fetch_page(args, None).await?;
    let mut pages = 1;
    while let Some(cursor) = report.next_cursor.take() {
        if pages == MAX_PAGES {
            bail!(
                "the answer has more than {} rows: narrow the range or the grouping",
                report.rows.len()
            );
        }
        let next = fetch_page(args, Some(&cursor)).await?;
        report.rows.extend(next.rows);
        report.next_cursor = next.next_cursor;
        pages += 1;
    }
    Ok(report)
}

/// One page: the first, or the one `cursor` starts.
async fn fetch_page(args: &UsageArgs, cursor: Option<&str>) -> anyhow::Result<UsageReport> {
    let ns = namespace(args);
    if let Some(db) = args.source.local_db()? {
        let now = now_ms();
        let until_ms = match &args.until {
            Some(u) => tollgate_recorder::http::parse_time(u, now)?,
            None => now,
        };
        let mut query = UsageQuery {
            since_ms: tollgate_recorder::http::parse_time(&args.since, now)?,
            until_ms,
            namespace: ns,
            group_by: GroupKey::parse_list(&args.by)?,
            bucket: args.bucket.as_deref().map(Bucket::parse).transpose()?,
            page: Page::default(),
        };
        // Later pages keep the range the first one resolved.
        if let Some(cursor) = cursor.map(Cursor::decode).transpose()? {
            (query.since_ms, query.until_ms) = (cursor.since_ms, cursor.until_ms);
            query.page.after = Some(cursor.after);
            query.page.snapshot = Some(cursor.snapshot);
        }
        let store = SqliteStore::open(&db)?;
        return Ok(tollgate_recorder::usage::report(&store, &query, now).await?);
    }
    if args.source.recorder.is_none() {
        return fetch_through_api_server(args, ns.as_deref(), cursor).await;
    }
    let (client, base, token) = args.source.remote()?;
    let mut url = format!("{base}/v1/usage?{}", query_string(args, cursor));
    if let Some(n) = &ns {
        url.push_str(&format!("&namespace={}", encode(n)));
    }
    let response = client
        .send(
            http::Method::GET,
            &url,
            Some(&token),
            None,
            MAX_USAGE_RESPONSE,
        )
        .await?;
    if !response.status.is_success() {
        bail!(
            "recorder answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    serde_json::from_slice(&response.body).context("reading the recorder's usage report")
}

/// The query string shared by both remote paths (no namespace: the API server
/// path carries it).
fn query_string(args: &UsageArgs, cursor: Option<&str>) -> String {
    let mut q = format!("since={}", encode(&args.since));
    if let Some(u) = &args.until {
        q.push_str(&format!("&until={}", encode(u)));
    }
    if !args.by.is_empty() {
        q.push_str(&format!("&group_by={}", encode(&args.by)));
    }
    if let Some(b) = &args.bucket {
        q.push_str(&format!("&bucket={}", encode(b)));
    }
    if let Some(c) = cursor {
        q.push_str(&format!("&cursor={}", encode(c)));
    }
    q
}

/// Usage through the API server's aggregation layer, as the kubeconfig's identity.
async fn fetch_through_api_server(
    args: &UsageArgs,
    namespace: Option<&str>,
    cursor: Option<&str>,
) -> anyhow::Result<UsageReport> {
    let client = crate::cluster::client().await?;
    let path = match namespace {
        Some(ns) => format!(
            "{}/namespaces/{}/usage?{}",
            crate::cluster::API_BASE,
            encode(ns),
            query_string(args, cursor)
        ),
        None => format!(
            "{}/usage?{}",
            crate::cluster::API_BASE,
            query_string(args, cursor)
        ),
    };
    let body = crate::cluster::get(&client, &path).await?;
    serde_json::from_str(&body).context("reading the recorder's usage report")
}

/// Formats micro-USD as dollars with 6 decimals.
pub fn dollars(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Renders the report as a table.
pub fn write_table(out: &mut dyn Write, report: &UsageReport) -> anyhow::Result<()> {
    let mut header: Vec<String> = report
        .group_by
        .iter()
        .map(|k| {
            match k {
                GroupKey::Namespace => "NAMESPACE",
                GroupKey::ServiceAccount => "SERVICEACCOUNT",
                GroupKey::Provider => "PROVIDER",
                GroupKey::Model => "MODEL",
                GroupKey::Caller => "CALLER",
                GroupKey::Reason => "REASON",
            }
            .to_string()
        })
        .collect();
    if report.bucket.is_some() {
        header.push("BUCKET".into());
    }
    // The token breakdowns get a column only when some row has them.
    type Part = fn(&Totals) -> u64;
    let parts: Vec<(&str, Part)> = [
        ("CACHE_READ_TOKENS", (|t: &Totals| t.cached_tokens) as Part),
        ("CACHE_WRITE_TOKENS", |t: &Totals| t.cache_write_tokens),
        ("REASONING_TOKENS", |t: &Totals| t.reasoning_tokens),
    ]
    .into_iter()
    .filter(|(_, part)| part(&report.total) > 0)
    .collect();
    header.extend(["REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS"].map(String::from));
    header.extend(parts.iter().map(|(name, _)| name.to_string()));
    header.push("COST_USD".into());
    let amounts = |t: &Totals| -> Vec<String> {
        let mut cells = vec![
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
        ];
        cells.extend(parts.iter().map(|(_, part)| part(t).to_string()));
        cells.push(dollars(t.cost_micro_usd));
        cells
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for row in &report.rows {
        let mut cells: Vec<String> = report
            .group_by
            .iter()
            .map(|k| {
                let v = match k {
                    GroupKey::Namespace => &row.namespace,
                    GroupKey::ServiceAccount => &row.service_account,
                    GroupKey::Provider => &row.provider,
                    GroupKey::Model => &row.model,
                    GroupKey::Caller => &row.caller,
                    GroupKey::Reason => &row.reason,
                };
                match v.as_deref() {
                    Some("") | None => "-".to_string(),
                    Some(s) => s.to_string(),
                }
            })
            .collect();
        if report.bucket.is_some() {
            cells.push(row.bucket_start.clone().unwrap_or_default());
        }
        cells.extend(amounts(&row.totals));
        rows.push(cells);
    }
    let totals = amounts(&report.total);
    let mut total = vec![String::new(); header.len() - totals.len()];
    if let Some(first) = total.first_mut() {
        *first = "TOTAL".into();
    }
    total.extend(totals);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .chain(std::iter::once(&total))
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(out, &header)?;
    for r in &rows {
        line(out, r)?;
    }
    if header.len() > 4 {
        line(out, &total)?;
    } else if rows.is_empty() {
        // Ungrouped, the one row is the total; with no usage there is no row.
        line(out, &total[total.len() - 4..])?;
    }
    for w in &report.warnings {
        writeln!(
            out,
            "warning: {} stream={} namespace={}{}: {}",
            w.code,
            w.stream_id,
            w.namespace,
            w.seq.map(|s| format!(" seq={s}")).unwrap_or_default(),
            w.message
        )?;
    }
    if report.warnings_omitted > 0 {
        writeln!(
            out,
            "warning: {} more warnings not listed",
            report.warnings_omitted
        )?;
    }
    for line in report.freshness.iter().flat_map(freshness_lines) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// An open stream quiet this long is worth a word (its gateway is idle, or
/// cannot reach the recorder).
const QUIET_NOTE_AFTER_MS: u64 = 5 * 60 * 1000;

/// What the table's numbers are as of, for people.
fn freshness_lines(freshness: &Freshness) -> Vec<String> {
    let ms = |t: &str| {
        Timestamp::parse_canonical(t)
            .ok()
            .map(Timestamp::unix_millis)
    };
    let answered = ms(&freshness.answered_at);
    let ago = |t: &str| {
        let (Some(now), Some(then)) = (answered, ms(t)) else {
            return String::new();
        };
        match now.saturating_sub(then) {
            0..1000 => " (under a second before this answer)".to_string(),
            ms => format!(" ({} before this answer)", human_duration(ms)),
        }
    };
    let mut lines = vec![match &freshness.newest_record_at {
        Some(newest) => format!(
            "as of {}: newest record {newest}{}; gateways ship receipts moments after each request",
            freshness.answered_at,
            ago(newest)
        ),
        None => format!("as of {}: no records in this range", freshness.answered_at),
    }];
    if let Some(quiet) = &freshness.quietest_open_stream_since {
        let quiet_ms = answered.zip(ms(quiet)).map(|(a, q)| a.saturating_sub(q));
        if quiet_ms.is_some_and(|q| q >= QUIET_NOTE_AFTER_MS) {
            lines.push(format!(
                "note: of {} open stream(s), one has shipped nothing newer than {quiet}{}: its gateway is idle, or cannot reach the recorder (receipts wait in its spool)",
                freshness.open_streams,
                ago(quiet)
            ));
        }
    }
    lines
}

/// `3 s`, `4 min`, `2 h`, `3 d`.
fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Runs `usage`.
pub fn run(args: &UsageArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(fetch(args))?;
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        Format::Table => write_table(out, &report)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_recorder::usage::{Totals, UsageRow};

    #[test]
    fn tables_show_groups_total_and_warnings() {
        let report = UsageReport {
            since: "s".into(),
            until: "u".into(),
            namespace: None,
            group_by: vec![GroupKey::Namespace, GroupKey::Model],
            bucket: None,
            rows: vec![UsageRow {
                namespace: Some("team-a".into()),
                service_account: None,
                provider: None,
                model: Some("gpt-4o".into()),
                caller: None,
                reason: None,
                bucket_start: None,
                totals: Totals {
                    requests: 2,
                    input_tokens: 30,
                    output_tokens: 4,
                    cost_micro_usd: 1_500_000,
                    ..Totals::default()
                },
            }],
            total: Totals {
                requests: 2,
                input_tokens: 30,
                output_tokens: 4,
                cost_micro_usd: 1_500_000,
                ..Totals::default()
            },
            next_cursor: None,
            warnings: vec![],
            warnings_omitted: 0,
            freshness: Some(Freshness {
                answered_at: "2026-12-06T12:00:00.000Z".into(),
                newest_record_at: Some("2026-12-06T11:59:57.500Z".into()),
                open_streams: 3,
                quietest_open_stream_since: Some("2026-12-06T11:50:00.000Z".into()),
            }),
        };
        let mut out = Vec::new();
        write_table(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("NAMESPACE  MODEL   REQUESTS"), "{text}");
        assert!(text.contains("team-a     gpt-4o  2"), "{text}");
        assert!(text.contains("TOTAL"), "{text}");
        assert!(text.contains("1.500000"), "{text}");
        assert!(
            text.contains("as of 2026-12-06T12:00:00.000Z: newest record 2026-12-06T11:59:57.500Z (2 s before this answer)"),
            "{text}"
        );
        assert!(
            text.contains("note: of 3 open stream(s), one has shipped nothing newer than 2026-12-06T11:50:00.000Z (10 min before this answer)"),
            "{text}"
        );
        assert!(
            !text.contains("REASONING_TOKENS"),
            "no reasoning, no column: {text}"
        );

        // Reasoning and cache writes get their columns; cache reads, all
        // zero, still do not.
        let mut reasoned = report;
        for t in [&mut reasoned.rows[0].totals, &mut reasoned.total] {
            t.reasoning_tokens = 3;
            t.cache_write_tokens = 7;
        }
        let mut out = Vec::new();
        write_table(&mut out, &reasoned).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = text.lines().next().unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "NAMESPACE",
                "MODEL",
                "REQUESTS",
                "INPUT_TOKENS",
                "OUTPUT_TOKENS",
                "CACHE_WRITE_TOKENS",
                "REASONING_TOKENS",
                "COST_USD"
            ]
        );
        let total: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("TOTAL"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(total, ["TOTAL", "2", "30", "4", "7", "3", "1.500000"]);
    }

    #[test]
    fn a_recent_quiet_stream_and_an_empty_range_say_so_plainly() {
        let fresh = Freshness {
            answered_at: "2026-12-06T12:00:00.000Z".into(),
            newest_record_at: None,
            open_streams: 1,
            quietest_open_stream_since: Some("2026-12-06T11:58:00.000Z".into()),
        };
        assert_eq!(
            freshness_lines(&fresh),
            vec!["as of 2026-12-06T12:00:00.000Z: no records in this range".to_string()]
        );
        assert_eq!(human_duration(7_199_999), "119 min");
        assert_eq!(human_duration(259_200_000), "3 d");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("2025-03-01T00:00:00+01:00"),
            "2025-03-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(encode("namespace,model"), "namespace%2Cmodel");
    }
}

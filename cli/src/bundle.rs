//! `kubectl tollgate bundle export`: an evidence bundle for a time or segment
//! range, from a local recorder's data directory (`--local DATA_DIR`, signed with
//! DATA_DIR/recorder.key) or a recorder's API (`--recorder URL`). Verify it with
//! `kubectl tollgate verify BUNDLE --trust-anchor DATA_DIR/recorder-trust-anchor.yaml
//! --trust-anchor CA-ANCHOR`.
//!
//! Without a range the bundle holds every segment retention kept. `--after
//! CHECKPOINT` exports the segments after a checkpoint the auditor holds (a
//! checkpoint file, or a file sink's JSON lines, whose newest line is used), and
//! `--since`, `--segments A..B` start later too: a bundle that does not start at
//! segment 0 is a range bundle, based on the checkpoint before its first segment
//! with a consistency proof from it (docs/evidence.md). The export ends with the
//! last segment holding receipts before `--until` (or segment B) and seals the
//! open segment first if the range reaches into it.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use tollgate_evidence::Bundle;
use tollgate_recorder::auth::{Caller, Policy};
use tollgate_recorder::clock::SystemClock;
use tollgate_recorder::metrics::Metrics;
use tollgate_recorder::recorder::{Recorder, RecorderOptions};
use tollgate_recorder::settings::{MAX_EXPORT_BYTES, Settings};
use tollgate_recorder::store::sqlite::SqliteStore;

use crate::usage::{SourceArgs, encode, runtime};

/// Flags of `bundle`.
#[derive(clap::Args, Debug)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

/// `bundle` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BundleCommand {
    /// Export an evidence bundle.
    Export(ExportArgs),
}

/// Flags of `bundle export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Range start: a duration ago (24h) or RFC 3339. The bundle starts with the
    /// first segment sealed since then.
    #[arg(long, conflicts_with_all = ["segments", "after"])]
    pub since: Option<String>,
    /// Start after this checkpoint, which you hold (a checkpoint's JSON, or a file
    /// sink's JSON lines: the newest is used). The recorder refuses it if it is
    /// not its log's.
    #[arg(long, conflicts_with = "segments")]
    pub after: Option<PathBuf>,
    /// Range end (exclusive): a duration ago or RFC 3339.
    #[arg(long, conflicts_with = "segments")]
    pub until: Option<String>,
    /// Segment range A..B (inclusive).
    #[arg(long)]
    pub segments: Option<String>,
    /// Write the bundle here (default: stdout).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// For --local: the recorder key (default DATA_DIR/recorder.key).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

fn params(args: &ExportArgs) -> anyhow::Result<HashMap<String, String>> {
    let mut p = HashMap::new();
    if let Some(path) = &args.after {
        let held = crate::verify::load_checkpoint(path)?;
        let hash = held
            .checkpoint
            .hash()
            .context("hashing the held checkpoint")?;
        p.insert(
            "after".to_string(),
            format!("{}:{}", held.checkpoint.size, hash.to_hex()),
        );
    }
    for (k, v) in [
        ("since", &args.since),
        ("until", &args.until),
        ("segments", &args.segments),
    ] {
        if let Some(v) = v {
            p.insert(k.to_string(), v.clone());
        }
    }
    Ok(p)
}

async fn export_local(
    args: &ExportArgs,
    data_dir: &std::path::Path,
    db: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    let key_path = args
        .key_file
        .clone()
        .unwrap_or_else(|| data_dir.join(tollgate_recorder::identity::KEY_FILE));
    let key = tollgate_recorder::identity::read_key_file(&key_path)?;
    let store = Arc::new(SqliteStore::open(db)?);
    let origin = tollgate_recorder::identity::default_origin(&key)?;
    let clock = Arc::new(SystemClock);
    let now = tollgate_recorder::clock::Clock::now_ms(clock.as_ref());
    let recorder = Recorder::open(
        store,
        RecorderOptions {
            settings: Settings::default(),
            trust: Default::default(),
            key,
            origin,
            clock,
            metrics: Arc::new(Metrics::new()),
            policy: Policy::default(),
            verify_threads: 1,
        },
    )
    .await?;
    let range = tollgate_recorder::http::export_range(&params(args)?, now)?;
    let bundle = recorder.export(range, &Caller::Local).await?;
    let bytes = bundle.to_json()?;
    if bytes.len() as u64 > MAX_EXPORT_BYTES {
        bail!("the bundle is over {MAX_EXPORT_BYTES} bytes; export a smaller range");
    }
    Ok(bytes)
}

fn query_suffix(args: &ExportArgs) -> anyhow::Result<String> {
    let mut p: Vec<(String, String)> = params(args)?.into_iter().collect();
    p.sort();
    let query: Vec<String> = p
        .into_iter()
        .map(|(k, v)| format!("{k}={}", encode(&v)))
        .collect();
    Ok(if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    })
}

/// The bundle through the API server's aggregation layer, as the kubeconfig's identity.
async fn export_through_api_server(args: &ExportArgs) -> anyhow::Result<Vec<u8>> {
    let client = crate::cluster::client().await?;
    let path = format!(
        "{}/bundles{}",
        crate::cluster::API_BASE,
        query_suffix(args)?
    );
    let body = crate::cluster::get(&client, &path).await?;
    if body.len() as u64 > MAX_EXPORT_BYTES {
        bail!("the bundle is over {MAX_EXPORT_BYTES} bytes; export a smaller range");
    }
    Ok(body.into_bytes())
}

async fn export_remote(args: &ExportArgs) -> anyhow::Result<Vec<u8>> {
    if args.source.recorder.is_none() {
        return export_through_api_server(args).await;
    }
    let (client, base, token) = args.source.remote()?;
    let url = format!("{base}/v1/bundle{}", query_suffix(args)?);
    let response = client
        .send(
            http::Method::GET,
            &url,
            Some(&token),
            None,
            usize::try_from(MAX_EXPORT_BYTES).unwrap_or(usize::MAX),
        )
        .await?;
    if !response.status.is_success() {
        bail!(
            "recorder answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(response.body.to_vec())
}

/// Runs `bundle`.
pub fn run(args: &BundleArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let BundleCommand::Export(args) = &args.command;
    let bytes = runtime()?.block_on(async {
        match (args.source.local_db()?, &args.source.local) {
            (Some(db), Some(dir)) => export_local(args, dir, &db).await,
            _ => export_remote(args).await,
        }
    })?;
    match &args.output {
        None => {
            out.write_all(&bytes)?;
            writeln!(out)?;
        }
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            let bundle: Bundle =
                serde_json::from_slice(&bytes).context("the exported bundle does not parse")?;
            let m = &bundle.manifest;
            writeln!(
                out,
                "wrote {}: segments {}..{}, {} envelopes ({} receipts, {} forward decisions, {} close records) in {} streams, {} certificates",
                path.display(),
                m.ranges.segment_index.first,
                m.ranges.segment_index.last,
                m.counts.envelopes,
                m.counts.receipts,
                m.counts.decisions,
                m.counts.close_records,
                m.counts.streams,
                m.counts.certificates,
            )?;
            if m.base_checkpoint_hash.is_some() {
                writeln!(
                    out,
                    "a range bundle: it continues the checkpoint of log size {}",
                    m.ranges.leaf_index.first
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

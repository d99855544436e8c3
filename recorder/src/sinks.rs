//! Checkpoint sinks: copies of every signed checkpoint kept outside the recorder
//! (a JSON-lines file, or an HTTP endpoint), so that deleting the newest segments
//! is detectable by anyone holding a later checkpoint (`kubectl tollgate verify
//! --checkpoint`). Delivery runs on its own task, in order, after the checkpoint's
//! transaction committed; a failing sink is retried with backoff and counted, and
//! never blocks ingestion. What each sink holds is stored (`sink_progress`):
//! retention deletes only segments every sink holds a checkpoint for.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tollgate_evidence::SignedCheckpoint;

use crate::metrics::{Metrics, SinkLabels};
use crate::settings::{SinkSettings, SinkTarget};
use crate::store::Store;
use tollgate_wire::client::HttpClient;

/// Attempts per checkpoint and HTTP sink.
const HTTP_ATTEMPTS: u32 = 5;

/// Appends `checkpoint` as one JSON line to `path` and syncs it.
pub fn append_to_file(path: &Path, checkpoint: &SignedCheckpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

async fn deliver(
    sink: &SinkSettings,
    client: &HttpClient,
    checkpoint: &SignedCheckpoint,
) -> Result<(), String> {
    match &sink.target {
        SinkTarget::File(path) => {
            let path = path.clone();
            let checkpoint = checkpoint.clone();
            tokio::task::spawn_blocking(move || append_to_file(&path, &checkpoint))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        SinkTarget::Http(url) => {
            let body = Bytes::from(serde_json::to_vec(checkpoint).map_err(|e| e.to_string())?);
            let mut delay = Duration::from_millis(500);
            let mut last = String::new();
            for _ in 0..HTTP_ATTEMPTS {
                match client
                    .send(http::Method::POST, url, None, Some(body.clone()), 64 * 1024)
                    .await
                {
                    Ok(r) if r.status.is_success() => return Ok(()),
                    Ok(r) => last = format!("status {}", r.status),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(last)
        }
    }
}

/// Starts the delivery task; send checkpoints to the returned sender, in order.
pub fn spawn_sinks(
    sinks: Vec<SinkSettings>,
    client: HttpClient,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
) -> mpsc::UnboundedSender<SignedCheckpoint> {
    let (tx, mut rx) = mpsc::unbounded_channel::<SignedCheckpoint>();
    tokio::spawn(async move {
        while let Some(checkpoint) = rx.recv().await {
            for sink in &sinks {
                let result = deliver(sink, &client, &checkpoint).await;
                let label = SinkLabels {
                    sink: sink.name.clone(),
                    result: if result.is_ok() { "ok" } else { "error" },
                };
                metrics.sinks.get_or_create(&label).inc();
                let size = checkpoint.checkpoint.size.get();
                match result {
                    Ok(()) => {
                        let at_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                        if let Err(e) = store
                            .record_sink_delivery(&sink.progress_key(), size, at_ms)
                            .await
                        {
                            tracing::warn!(sink = %sink.name, size, error = %e, "recording a sink delivery failed; retention waits for the next");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sink = %sink.name, size, error = %e, "checkpoint sink delivery failed");
                    }
                }
            }
        }
    });
    tx
}

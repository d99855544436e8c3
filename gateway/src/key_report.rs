//! The gateway's provider key health, reported to the recorder: every
//! [`REPORT_EVERY`], `PUT /v1/key-health` with each key's state as `/keys` on
//! the admin port shows it (provider, index, state; never a key). The
//! recorder keeps each pod's latest report and the operator writes the sums
//! into each `LLMProvider`'s status, so a platform team sees a refused key
//! with `kubectl get llmprovider` instead of reading every pod's admin port.
//!
//! Reports only inform: routing never waits for, or reads, anything here.
//! A report that fails is retried at the next tick; the log says when
//! reports start and stop failing, not at every tick.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tollgate_wire::client::{HttpClient, TokenSource};

use crate::key_health::KeyStatus;
use crate::proxy::Gateway;
use tollgate_wire::key_health::{KeyHealthReport, MAX_KEY_INDEX, MAX_REPORTED_KEYS};

/// How often each gateway reports (the recorder forgets a report after two
/// minutes, so a pod that is gone stops counting).
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Time allowed for one report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The report body: `{"keys": [...]}`.
pub fn report_body(keys: Vec<KeyStatus>) -> Bytes {
    Bytes::from(serde_json::to_vec(&KeyHealthReport { keys }).unwrap_or_default())
}

/// Reports the keys of `gateway`'s providers to the recorder at `url`
/// every [`REPORT_EVERY`], forever.
pub async fn report_forever(
    gateway: Arc<Gateway>,
    url: &str,
    tokens: Arc<dyn TokenSource>,
    tls: Arc<rustls::ClientConfig>,
) {
    let client = HttpClient::new(tls, REPORT_TIMEOUT);
    let url = format!("{}/v1/key-health", url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut truncated = false;
    loop {
        tick.tick().await;
        let runtime = gateway.runtime();
        let mut keys = runtime.key_health.snapshot(&runtime.key_counts());
        drop(runtime);
        // Past the CRD's 32 keys (possible only in local mode's manifests)
        // the recorder would refuse the whole report.
        keys.retain(|k| k.index <= MAX_KEY_INDEX);
        if keys.is_empty() {
            continue;
        }
        if keys.len() > MAX_REPORTED_KEYS {
            keys.truncate(MAX_REPORTED_KEYS);
            if !truncated {
                truncated = true;
                tracing::warn!(
                    "more provider keys than a key health report holds; reporting the first {MAX_REPORTED_KEYS}"
                );
            }
        }
        let outcome = match tokens.token() {
            Ok(token) => client
                .send(
                    Method::PUT,
                    &url,
                    Some(&token),
                    Some(report_body(keys)),
                    64 * 1024,
                )
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("the recorder answered {}", r.status))
                    }
                }),
            Err(e) => Err(format!("no recorder token: {e}")),
        };
        match outcome {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("key health reports reach the recorder again");
            }
            Ok(()) => {}
            Err(why) if !failing => {
                failing = true;
                tracing::warn!(reason = %why, "key health report failed; retrying every 30 s");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_health::KeyHealth;
    use http::StatusCode;

    #[test]
    fn the_report_is_what_admin_keys_shows_and_never_a_key() {
        let health = KeyHealth::new();
        health.answered("openai", 1, StatusCode::UNAUTHORIZED, 1_000);
        let body = report_body(health.snapshot(&[("openai".into(), 2)]));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys": [
                {"provider": "openai", "index": 0, "state": "healthy"},
                {"provider": "openai", "index": 1, "state": "unhealthy",
                 "since_ms": 1_000, "next_probe_ms": 31_000, "last_status": 401}]})
        );
    }
}

//! Waiting, with a bound, for effects the API server applies asynchronously:
//! webhook configurations, CRD establishment, OpenAPI publishing.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::{Instant, sleep};

/// How long to wait between attempts.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Runs `attempt` until it succeeds or `timeout` has passed; on timeout,
/// returns the last error with how long and how often it was tried.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(anyhow!(
                    "still failing after {timeout:?} ({tries} attempts)"
                )));
            }
            Err(_) => sleep(RETRY_INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[tokio::test]
    async fn succeeds_once_the_condition_holds() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    bail!("not yet");
                }
                Ok(n)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn gives_up_with_the_last_error() {
        let err = eventually(Duration::from_millis(300), || async {
            bail!("the webhook is not called") as Result<()>
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("still failing after"), "{text}");
        assert!(text.contains("the webhook is not called"), "{text}");
    }
}

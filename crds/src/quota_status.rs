//! A quota's status from usage rows: the pure arithmetic that turns rows of
//! the recorder's usage answer into `used`, `remaining`, `resetAt`,
//! `usedPercent` and `exhaustsAt` per limit. The operator writes it into the
//! quota objects' status; `kubectl tollgate local` shows it on its dashboard.
//!
//! The recorder counts receipts by namespace, serviceAccount, provider and
//! model; it knows no pod labels. A quota whose subjects use a `podSelector`
//! is therefore shown with the usage of every pod its other subjects match:
//! an over-count, never an under-count.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tollgate_wire::config::glob_matches;
use tollgate_wire::quota_math::{Amounts, MAX_USAGE_RANGE_SECS, calendar_window_bounds};

use crate::compile::limit_window;
use crate::quota::{LimitStatus, QuotaAmounts, QuotaLimit};
use tollgate_wire::config::LimitWindow;

/// One row of the recorder's `GET /v1/usage` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UsageRow {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cost_micro_usd: u64,
}

/// Whose usage a quota counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaScope {
    /// The namespaces counted: the quota's own, or those a cluster quota selects.
    pub namespaces: BTreeSet<String>,
    /// ServiceAccounts counted; empty means all.
    pub service_accounts: Vec<String>,
}

/// The window a limit counts now: `(since, reset_at)` in unix seconds.
/// Calendar windows reset at their end; rolling windows have no reset time.
/// `None` for a limit that does not compile (such as an unknown time zone).
pub fn window_of(limit: &QuotaLimit, now: u64) -> Option<(u64, Option<u64>)> {
    match limit_window(limit).ok()? {
        (LimitWindow::Calendar(w), zone) => {
            let (start, end) = calendar_window_bounds(w, zone.as_ref(), now);
            Some((start, Some(end)))
        }
        // The recorder answers at most MAX_USAGE_RANGE_SECS per query, up
        // to its own now: a longer rolling window shows that much of its use,
        // less an hour, so a recorder whose clock is ahead still answers.
        (LimitWindow::RollingSeconds(secs), _) => {
            Some((now.saturating_sub(secs.min(MAX_ROLLING_READ_SECS)), None))
        }
    }
}

/// The longest stretch of a rolling window whose use is read: the recorder's
/// range bound less an hour of clock difference.
pub const MAX_ROLLING_READ_SECS: u64 = MAX_USAGE_RANGE_SECS - 3_600;

/// What `rows` (from a query starting at the limit's window) add up to for
/// `limit` within `scope`.
pub fn used_by_limit(limit: &QuotaLimit, scope: &QuotaScope, rows: &[UsageRow]) -> Amounts {
    let mut used = Amounts::default();
    for row in rows {
        let ns = row.namespace.as_deref().unwrap_or_default();
        let sa = row.service_account.as_deref().unwrap_or_default();
        let provider = row.provider.as_deref().unwrap_or_default();
        let model = row.model.as_deref().unwrap_or_default();
        if !scope.namespaces.contains(ns)
            || !(scope.service_accounts.is_empty()
                || scope.service_accounts.iter().any(|s| s == sa))
            || !(limit.providers.is_empty() || limit.providers.iter().any(|p| p == provider))
            || !(limit.models.is_empty() || limit.models.iter().any(|g| glob_matches(g, model)))
        {
            continue;
        }
        used.add(Amounts {
            tokens: row.input_tokens.saturating_add(row.output_tokens),
            requests: row.requests,
            cost_micro_usd: row.cost_micro_usd,
        });
    }
    used
}

/// A limit's current window, in unix seconds: when it started, and when it
/// resets (calendar windows only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowNow {
    pub start: u64,
    pub reset_at: Option<u64>,
    pub now: u64,
}

/// Use so far this short a time into a window says too little about its rate
/// to forecast from.
pub const MIN_FORECAST_ELAPSED_SECS: u64 = 60;

/// `used` and `remaining` for the quantities `limit` caps, `resetAt`, the
/// largest share of a cap used, and when a cap runs out at the rate so far.
pub fn limit_status(limit: &QuotaLimit, used: Amounts, window: WindowNow) -> LimitStatus {
    let pick = |cap: Option<u64>, value: u64| cap.map(|_| value);
    let left = |cap: Option<u64>, value: u64| cap.map(|c| c.saturating_sub(value));
    let capped = [
        (limit.tokens, used.tokens),
        (limit.requests, used.requests),
        (limit.cost_micro_usd, used.cost_micro_usd),
    ];
    let used_percent = capped
        .iter()
        .filter_map(|(cap, used)| {
            let cap = (*cap)?;
            let percent = u128::from(*used) * 100 / u128::from(cap.max(1));
            Some(u32::try_from(percent).unwrap_or(u32::MAX))
        })
        .max();
    // A limit with one cap reached is out already: no forecast.
    let out_already = capped
        .iter()
        .any(|(cap, used)| cap.is_some_and(|c| *used >= c));
    let exhausts_at = window
        .reset_at
        .filter(|_| !out_already)
        .and_then(|reset_at| {
            capped
                .iter()
                .filter_map(|(cap, used)| {
                    exhaustion(cap.as_ref().copied()?, *used, window, reset_at)
                })
                .min()
        });
    LimitStatus {
        name: limit.name.clone(),
        used: QuotaAmounts {
            tokens: pick(limit.tokens, used.tokens),
            requests: pick(limit.requests, used.requests),
            cost_micro_usd: pick(limit.cost_micro_usd, used.cost_micro_usd),
        },
        remaining: QuotaAmounts {
            tokens: left(limit.tokens, used.tokens),
            requests: left(limit.requests, used.requests),
            cost_micro_usd: left(limit.cost_micro_usd, used.cost_micro_usd),
        },
        reset_at: window.reset_at.and_then(rfc3339),
        used_percent,
        exhausts_at: exhausts_at.and_then(rfc3339),
    }
}

/// When `used` of `cap` reaches the cap at the average rate since the window
/// started, if that is before the window resets. `None` when nothing is used,
/// the cap is already reached, or the window is too young to tell.
fn exhaustion(cap: u64, used: u64, window: WindowNow, reset_at: u64) -> Option<u64> {
    let elapsed = window.now.checked_sub(window.start)?;
    if used == 0 || used >= cap || elapsed < MIN_FORECAST_ELAPSED_SECS {
        return None;
    }
    // (cap - used) / (used / elapsed), in integers: the seconds left.
    let left = u128::from(cap - used) * u128::from(elapsed) / u128::from(used);
    let at = u128::from(window.now) + left;
    (at < u128::from(reset_at)).then(|| u64::try_from(at).ok())?
}

fn rfc3339(secs: u64) -> Option<String> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
}

/// The most constrained limit in words, for `kubectl get`:
/// `tokens 1200/100000 (day)`.
pub fn summary(limits: &[QuotaLimit], statuses: &[LimitStatus]) -> Option<String> {
    let mut best: Option<(u128, String)> = None;
    for status in statuses {
        let Some(limit) = limits.iter().find(|l| l.name == status.name) else {
            continue;
        };
        let window = match (&limit.window, &limit.rolling) {
            (Some(w), _) => match &limit.time_zone {
                Some(zone) => format!("{} {zone}", w.as_str()),
                None => w.as_str().to_string(),
            },
            (None, Some(r)) => r.clone(),
            (None, None) => String::new(),
        };
        for (what, cap, used) in [
            ("tokens", limit.tokens, status.used.tokens),
            ("requests", limit.requests, status.used.requests),
            (
                "costMicroUSD",
                limit.cost_micro_usd,
                status.used.cost_micro_usd,
            ),
        ] {
            let (Some(cap), Some(used)) = (cap, used) else {
                continue;
            };
            // Share of the cap in millionths, so that ties break by order.
            let share = u128::from(used) * 1_000_000 / u128::from(cap.max(1));
            if best.as_ref().is_none_or(|(b, _)| share > *b) {
                best = Some((share, format!("{what} {used}/{cap} ({window})")));
            }
        }
    }
    best.map(|(_, text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::CalendarWindow;

    /// A window whose times do not matter to the test.
    const UNTIMED: WindowNow = WindowNow {
        start: 0,
        reset_at: None,
        now: 0,
    };
    fn limit(name: &str) -> QuotaLimit {
        QuotaLimit {
            time_zone: None,
            name: name.into(),
            window: Some(CalendarWindow::Day),
            rolling: None,
            tokens: Some(1_000),
            requests: None,
            cost_micro_usd: Some(500),
            models: vec![],
            providers: vec![],
        }
    }

    fn row(ns: &str, sa: &str, provider: &str, model: &str, tokens: u64) -> UsageRow {
        UsageRow {
            namespace: Some(ns.into()),
            service_account: Some(sa.into()),
            provider: Some(provider.into()),
            model: Some(model.into()),
            requests: 1,
            input_tokens: tokens / 2,
            output_tokens: tokens - tokens / 2,
            cost_micro_usd: tokens / 10,
        }
    }

    fn scope(namespaces: &[&str], sas: &[&str]) -> QuotaScope {
        QuotaScope {
            namespaces: namespaces.iter().map(|s| (*s).to_string()).collect(),
            service_accounts: sas.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn a_zoned_window_is_read_from_local_midnight_and_resets_at_the_next() {
        const NOW: u64 = 1_763_700_000; // 2025-11-21T04:40:00Z, 13:40 in Tokyo
        let mut tokyo = limit("daily");
        tokyo.time_zone = Some("Asia/Tokyo".into());
        let midnight_tokyo = NOW - 13 * 3_600 - 40 * 60;
        assert_eq!(
            window_of(&tokyo, NOW),
            Some((midnight_tokyo, Some(midnight_tokyo + 86_400)))
        );
        let utc_midnight = NOW - 4 * 3_600 - 40 * 60;
        assert_eq!(
            window_of(&limit("daily"), NOW),
            Some((utc_midnight, Some(utc_midnight + 86_400)))
        );
        tokyo.time_zone = Some("Asia/Atlantis".into());
        assert_eq!(window_of(&tokyo, NOW), None, "never read as UTC instead");
    }

    #[test]
    fn usage_is_filtered_by_namespace_service_account_provider_and_model() {
        let rows = vec![
            row("a", "batch", "openai", "gpt-4o-mini", 100),
            row("a", "web", "openai", "gpt-4o-mini", 1_000),
            row("b", "batch", "openai", "gpt-4o-mini", 10_000),
            row("a", "batch", "anthropic", "claude", 7),
            row("a", "batch", "openai", "text-embedding-3-small", 30),
        ];
        let all = used_by_limit(&limit("l"), &scope(&["a"], &[]), &rows);
        assert_eq!(all.tokens, 1_137);
        assert_eq!(all.requests, 4);

        let batch = used_by_limit(&limit("l"), &scope(&["a"], &["batch"]), &rows);
        assert_eq!(batch.tokens, 137);

        let mut gpt4o = limit("l");
        gpt4o.models = vec!["gpt-4o*".into()];
        gpt4o.providers = vec!["openai".into()];
        assert_eq!(
            used_by_limit(&gpt4o, &scope(&["a"], &["batch"]), &rows).tokens,
            100
        );

        let cluster = used_by_limit(&limit("l"), &scope(&["a", "b"], &["batch"]), &rows);
        assert_eq!(cluster.tokens, 10_137);
    }

    #[test]
    fn status_covers_only_capped_quantities_and_never_goes_negative() {
        let used = Amounts {
            tokens: 1_200,
            requests: 9,
            cost_micro_usd: 100,
        };
        let status = limit_status(
            &limit("daily"),
            used,
            WindowNow {
                start: 0,
                reset_at: Some(86_400),
                now: 3_600,
            },
        );
        assert_eq!(status.used.tokens, Some(1_200));
        assert_eq!(status.remaining.tokens, Some(0));
        assert_eq!(status.used.requests, None, "requests are not capped");
        assert_eq!(status.remaining.cost_micro_usd, Some(400));
        assert_eq!(status.reset_at.as_deref(), Some("1970-01-02T00:00:00Z"));
        assert_eq!(status.used_percent, Some(120), "tokens are past their cap");
        assert_eq!(status.exhausts_at, None, "already exhausted: no forecast");
    }

    #[test]
    fn the_forecast_is_when_a_cap_runs_out_at_the_rate_so_far() {
        let window = |now| WindowNow {
            start: 0,
            reset_at: Some(86_400),
            now,
        };
        // 6 h into a day, 250 of 1 000 tokens and 100 of 500 µUSD: tokens run
        // out after 18 more hours (at 24 h: not before the reset), cost after
        // 24 more. Neither before the reset.
        let slow = Amounts {
            tokens: 250,
            requests: 3,
            cost_micro_usd: 100,
        };
        let status = limit_status(&limit("d"), slow, window(21_600));
        assert_eq!(status.used_percent, Some(25));
        assert_eq!(status.exhausts_at, None);
        // 400 tokens by 6 h: 600 more take 9 h, at 15:00, before the reset.
        let fast = Amounts {
            tokens: 400,
            ..slow
        };
        let status = limit_status(&limit("d"), fast, window(21_600));
        assert_eq!(status.used_percent, Some(40));
        assert_eq!(status.exhausts_at.as_deref(), Some("1970-01-01T15:00:00Z"));
        // Too early in the window to say; and rolling windows never forecast.
        assert_eq!(
            limit_status(&limit("d"), fast, window(30)).exhausts_at,
            None
        );
        let rolling = WindowNow {
            start: 0,
            reset_at: None,
            now: 21_600,
        };
        assert_eq!(limit_status(&limit("d"), fast, rolling).exhausts_at, None);
        assert_eq!(limit_status(&limit("d"), fast, rolling).reset_at, None);
    }

    #[test]
    fn windows_start_at_the_calendar_boundary_or_the_rolling_length_ago() {
        let now = 1_763_700_000; // 2025-11-21T04:40:00Z
        let (since, reset) = window_of(&limit("d"), now).unwrap();
        assert_eq!(since % 86_400, 0);
        assert_eq!(reset, Some(since + 86_400));
        let mut rolling = limit("r");
        rolling.window = None;
        rolling.rolling = Some("1h30m".into());
        assert_eq!(window_of(&rolling, now), Some((now - 5_400, None)));
        rolling.rolling = Some("bogus".into());
        assert_eq!(window_of(&rolling, now), None);
        // Longer than a recorder answers for: read as much as it does.
        rolling.rolling = Some("9999h".into());
        assert_eq!(
            window_of(&rolling, now),
            Some((now - MAX_USAGE_RANGE_SECS + 3_600, None))
        );
    }

    #[test]
    fn summary_names_the_most_constrained_quantity() {
        let limits = vec![limit("daily")];
        let status = limit_status(
            &limits[0],
            Amounts {
                tokens: 100,
                requests: 0,
                cost_micro_usd: 250,
            },
            UNTIMED,
        );
        assert_eq!(
            summary(&limits, &[status]).as_deref(),
            Some("costMicroUSD 250/500 (day)")
        );
        assert_eq!(summary(&limits, &[]), None);
        let mut zoned = limits;
        zoned[0].time_zone = Some("Europe/Berlin".into());
        let status = limit_status(&zoned[0], Amounts::default(), UNTIMED);
        assert_eq!(
            summary(&zoned, &[status]).as_deref(),
            Some("tokens 0/1000 (day Europe/Berlin)")
        );
    }
}

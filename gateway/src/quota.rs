//! Quota: which limits a request counts against, window math, and the
//! in-process authority that reserves an estimate before a request goes
//! upstream and settles actual usage afterwards.
//!
//! The recorder's lease API implements the same semantics for a cluster; local
//! mode and tests use [`LocalQuotaAuthority`] directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use tollgate_wire::config::Enforcement;
use tollgate_wire::config::{CompiledLimit, CompiledQuota, GatewayConfig, glob_matches};
pub use tollgate_wire::quota_math::{Amounts, QuotaWindow, calendar_window_bounds};

/// Who is calling: matched against quota subjects.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub service_account: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// The limits of `config` that a call by `caller` to `provider`/`model` counts against.
pub fn matching_limits<'a>(
    config: &'a GatewayConfig,
    caller: &Caller,
    provider: &str,
    model: &str,
) -> Vec<(&'a CompiledQuota, &'a CompiledLimit)> {
    config
        .quotas
        .iter()
        .filter(|q| {
            q.service_accounts.is_empty() || q.service_accounts.contains(&caller.service_account)
        })
        .filter(|q| {
            q.pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&caller.pod_labels))
        })
        .flat_map(|q| q.limits.iter().map(move |l| (q, l)))
        .filter(|(_, l)| l.providers.is_empty() || l.providers.iter().any(|p| p == provider))
        .filter(|(_, l)| {
            l.model_globs.is_empty() || l.model_globs.iter().any(|g| glob_matches(g, model))
        })
        .collect()
}

/// Rolling windows are kept as this many buckets, so memory is bounded and the
/// window edge is accurate to 1/ROLLING_BUCKETS of its length.
pub const ROLLING_BUCKETS: u64 = 120;

/// What a reservation holds, to be settled or released.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reservation {
    entries: Vec<(LimitKey, Amounts)>,
    /// Whether a shadow quota would have denied the request.
    pub shadow_denied: bool,
}

impl Reservation {
    pub(crate) fn from_entries(entries: Vec<(LimitKey, Amounts)>, shadow_denied: bool) -> Self {
        Self {
            entries,
            shadow_denied,
        }
    }

    pub(crate) fn into_entries(self) -> Vec<(LimitKey, Amounts)> {
        self.entries
    }

    /// Whether no limit applied.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The authority's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaDecision {
    Allow(Reservation),
    /// Over an enforced limit: answer 429 with `Retry-After`.
    Deny {
        quota_id: String,
        limit: String,
        retry_after_secs: u64,
    },
    /// The authority cannot be reached and the quota's `failMode` is
    /// `closed`: answer 503.
    Unavailable {
        quota_id: String,
        limit: String,
    },
}

/// A boxed future, for the one async method of [`QuotaAuthority`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Reserves and settles quota.
pub trait QuotaAuthority: Send + Sync + std::fmt::Debug {
    /// Reserves `estimate` on every limit, or says why not. The in-process
    /// authority answers at once; the leased one may first ask the recorder.
    fn reserve<'a>(
        &'a self,
        limits: &'a [(&'a CompiledQuota, &'a CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> BoxFuture<'a, QuotaDecision>;
    /// Replaces a reservation's estimate with what was actually used.
    fn settle(&self, reservation: Reservation, actual: Amounts, now: u64);
    /// Hands back whatever is held (leases) when the gateway stops.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Which counter a limit of a quota is: quota id, limit name and window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    quota_id: String,
    limit: String,
    window: QuotaWindow,
}

#[derive(Debug, Default)]
struct LimitState {
    /// Calendar windows: the current window's start and what it used.
    window_start: u64,
    used: Amounts,
    /// Rolling windows: (bucket start, amount) oldest first.
    buckets: VecDeque<(u64, Amounts)>,
    /// In flight, not yet settled.
    reserved: Amounts,
}

impl LimitState {
    fn roll_forward(&mut self, window: &QuotaWindow, now: u64) {
        match *window {
            QuotaWindow::Calendar(w, ref zone) => {
                let (start, _) = calendar_window_bounds(w, zone.as_ref(), now);
                if start != self.window_start {
                    self.window_start = start;
                    self.used = Amounts::default();
                }
            }
            QuotaWindow::Rolling(len) => {
                let horizon = now.saturating_sub(len);
                while self
                    .buckets
                    .front()
                    .is_some_and(|(start, _)| *start < horizon)
                {
                    self.buckets.pop_front();
                }
            }
        }
    }

    fn used(&self, window: &QuotaWindow) -> Amounts {
        match window {
            QuotaWindow::Calendar(..) => self.used,
            QuotaWindow::Rolling(_) => self
                .buckets
                .iter()
                .fold(Amounts::default(), |acc, (_, a)| Amounts::sum(acc, *a)),
        }
    }

    fn record(&mut self, window: &QuotaWindow, amount: Amounts, now: u64) {
        match *window {
            QuotaWindow::Calendar(..) => self.used.add(amount),
            QuotaWindow::Rolling(len) => {
                let width = (len / ROLLING_BUCKETS).max(1);
                let start = now - now % width;
                match self.buckets.back_mut() {
                    Some((s, a)) if *s == start => a.add(amount),
                    _ => self.buckets.push_back((start, amount)),
                }
            }
        }
    }

    fn retry_after(&self, window: &QuotaWindow, now: u64) -> u64 {
        match *window {
            QuotaWindow::Calendar(w, ref zone) => {
                calendar_window_bounds(w, zone.as_ref(), now).1 - now
            }
            QuotaWindow::Rolling(len) => self
                .buckets
                .front()
                .map_or(1, |(start, _)| (start + len).saturating_sub(now)),
        }
        .max(1)
    }
}

fn exceeds(limit: &CompiledLimit, total: Amounts) -> bool {
    limit.tokens.is_some_and(|cap| total.tokens > cap)
        || limit.requests.is_some_and(|cap| total.requests > cap)
        || limit
            .cost_micro_usd
            .is_some_and(|cap| total.cost_micro_usd > cap)
}

/// The in-process authority: exact counters behind one mutex (the critical
/// section is a few additions per limit).
#[derive(Debug, Default)]
pub struct LocalQuotaAuthority {
    state: Mutex<HashMap<LimitKey, LimitState>>,
}

impl LocalQuotaAuthority {
    pub fn new() -> Self {
        Self::default()
    }

    /// Used amount of a limit now, for status and tests.
    pub fn used(&self, quota_id: &str, limit: &CompiledLimit, now: u64) -> Amounts {
        let key = key_of(quota_id, limit);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.entry(key.clone()).or_default();
        entry.roll_forward(&key.window, now);
        entry.used(&key.window)
    }
}

/// The counter of `limit` of quota `quota_id`.
pub fn key_of(quota_id: &str, limit: &CompiledLimit) -> LimitKey {
    LimitKey {
        quota_id: quota_id.to_string(),
        limit: limit.name.clone(),
        window: QuotaWindow::of(limit),
    }
}

impl QuotaAuthority for LocalQuotaAuthority {
    fn reserve<'a>(
        &'a self,
        limits: &'a [(&'a CompiledQuota, &'a CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> BoxFuture<'a, QuotaDecision> {
        Box::pin(std::future::ready(self.reserve_now(limits, estimate, now)))
    }

    fn settle(&self, reservation: Reservation, actual: Amounts, now: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (key, estimate) in reservation.entries {
            let entry = state.entry(key.clone()).or_default();
            entry.reserved.sub(estimate);
            entry.roll_forward(&key.window, now);
            entry.record(&key.window, actual, now);
        }
    }
}

impl LocalQuotaAuthority {
    /// [`QuotaAuthority::reserve`], synchronously.
    pub fn reserve_now(
        &self,
        limits: &[(&CompiledQuota, &CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> QuotaDecision {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut shadow_denied = false;
        for (quota, limit) in limits {
            let key = key_of(&quota.id, limit);
            let entry = state.entry(key.clone()).or_default();
            entry.roll_forward(&key.window, now);
            let total = Amounts::sum(
                Amounts::sum(entry.used(&key.window), entry.reserved),
                estimate,
            );
            if exceeds(limit, total) {
                match quota.enforcement {
                    Enforcement::Enforce => {
                        return QuotaDecision::Deny {
                            quota_id: quota.id.clone(),
                            limit: limit.name.clone(),
                            retry_after_secs: entry.retry_after(&key.window, now),
                        };
                    }
                    Enforcement::Shadow => shadow_denied = true,
                }
            }
        }
        let mut entries = Vec::with_capacity(limits.len());
        for (quota, limit) in limits {
            let key = key_of(&quota.id, limit);
            state.entry(key.clone()).or_default().reserved.add(estimate);
            entries.push((key, estimate));
        }
        QuotaDecision::Allow(Reservation {
            entries,
            shadow_denied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::config::{CalendarWindow, FailMode, LimitWindow};
    use tollgate_wire::time_zone::TimeZoneName;

    fn quota(id: &str, enforcement: Enforcement, limit: CompiledLimit) -> CompiledQuota {
        CompiledQuota {
            id: id.into(),
            service_accounts: vec![],
            pod_selector: None,
            limits: vec![limit],
            enforcement,
            fail_mode: FailMode::Closed,
        }
    }

    fn limit(window: LimitWindow, tokens: Option<u64>, requests: Option<u64>) -> CompiledLimit {
        CompiledLimit {
            name: "l".into(),
            window,
            time_zone: None,
            tokens,
            requests,
            cost_micro_usd: None,
            model_globs: vec![],
            providers: vec![],
        }
    }

    const T0: u64 = 1_763_700_000; // 2025-11-21T04:40:00Z

    #[test]
    fn reserve_denies_over_the_cap_and_says_when_to_retry() {
        let q = quota(
            "ns/q",
            Enforcement::Enforce,
            limit(LimitWindow::Calendar(CalendarWindow::Minute), None, Some(2)),
        );
        let limits = vec![(&q, &q.limits[0])];
        let auth = LocalQuotaAuthority::new();
        let one = Amounts {
            requests: 1,
            ..Default::default()
        };
        let QuotaDecision::Allow(r1) = auth.reserve_now(&limits, one, T0 + 10) else {
            panic!()
        };
        let QuotaDecision::Allow(r2) = auth.reserve_now(&limits, one, T0 + 10) else {
            panic!()
        };
        assert_eq!(
            auth.reserve_now(&limits, one, T0 + 10),
            QuotaDecision::Deny {
                quota_id: "ns/q".into(),
                limit: "l".into(),
                retry_after_secs: 50
            },
            "in-flight reservations count"
        );
        auth.settle(r1, one, T0 + 11);
        auth.settle(r2, one, T0 + 11);
        assert!(matches!(
            auth.reserve_now(&limits, one, T0 + 30),
            QuotaDecision::Deny { .. }
        ));
        assert!(
            matches!(
                auth.reserve_now(&limits, one, T0 + 60),
                QuotaDecision::Allow(_)
            ),
            "a new minute resets"
        );
    }

    #[test]
    fn settle_replaces_the_estimate_with_actual_usage() {
        let q = quota(
            "ns/q",
            Enforcement::Enforce,
            limit(
                LimitWindow::Calendar(CalendarWindow::Day),
                Some(1_000),
                None,
            ),
        );
        let limits = vec![(&q, &q.limits[0])];
        let auth = LocalQuotaAuthority::new();
        let QuotaDecision::Allow(r) = auth.reserve_now(
            &limits,
            Amounts {
                tokens: 900,
                ..Default::default()
            },
            T0,
        ) else {
            panic!()
        };
        assert!(matches!(
            auth.reserve_now(
                &limits,
                Amounts {
                    tokens: 200,
                    ..Default::default()
                },
                T0
            ),
            QuotaDecision::Deny { .. }
        ));
        auth.settle(
            r,
            Amounts {
                tokens: 100,
                ..Default::default()
            },
            T0,
        );
        assert_eq!(auth.used("ns/q", &q.limits[0], T0).tokens, 100);
        assert!(matches!(
            auth.reserve_now(
                &limits,
                Amounts {
                    tokens: 800,
                    ..Default::default()
                },
                T0
            ),
            QuotaDecision::Allow(_)
        ));
    }

    #[test]
    fn a_zoned_day_resets_at_local_midnight() {
        let mut day = limit(LimitWindow::Calendar(CalendarWindow::Day), None, Some(1));
        day.time_zone = Some(TimeZoneName::parse("America/New_York").unwrap());
        let q = quota("ns/ny", Enforcement::Enforce, day);
        let limits = vec![(&q, &q.limits[0])];
        let auth = LocalQuotaAuthority::new();
        let one = Amounts {
            requests: 1,
            ..Default::default()
        };
        // T0 is 23:40 on 20 November in New York (UTC-5): 20 minutes to
        // local midnight, 19 h 20 min before UTC's.
        let QuotaDecision::Allow(r) = auth.reserve_now(&limits, one, T0) else {
            panic!()
        };
        auth.settle(r, one, T0);
        assert_eq!(
            auth.reserve_now(&limits, one, T0 + 60),
            QuotaDecision::Deny {
                quota_id: "ns/ny".into(),
                limit: "l".into(),
                retry_after_secs: 20 * 60 - 60
            }
        );
        assert!(
            matches!(
                auth.reserve_now(&limits, one, T0 + 20 * 60),
                QuotaDecision::Allow(_)
            ),
            "New York's new day resets the count"
        );
    }

    #[test]
    fn shadow_quotas_record_but_never_deny() {
        let q = quota(
            "ns/s",
            Enforcement::Shadow,
            limit(LimitWindow::Calendar(CalendarWindow::Hour), None, Some(1)),
        );
        let limits = vec![(&q, &q.limits[0])];
        let auth = LocalQuotaAuthority::new();
        let one = Amounts {
            requests: 1,
            ..Default::default()
        };
        let QuotaDecision::Allow(first) = auth.reserve_now(&limits, one, T0) else {
            panic!()
        };
        assert!(!first.shadow_denied);
        let QuotaDecision::Allow(second) = auth.reserve_now(&limits, one, T0) else {
            panic!()
        };
        assert!(second.shadow_denied);
    }

    #[test]
    fn rolling_windows_forget_old_usage() {
        let q = quota(
            "ns/r",
            Enforcement::Enforce,
            limit(LimitWindow::RollingSeconds(600), None, Some(1)),
        );
        let limits = vec![(&q, &q.limits[0])];
        let auth = LocalQuotaAuthority::new();
        let one = Amounts {
            requests: 1,
            ..Default::default()
        };
        let QuotaDecision::Allow(r) = auth.reserve_now(&limits, one, T0) else {
            panic!()
        };
        auth.settle(r, one, T0);
        let QuotaDecision::Deny {
            retry_after_secs, ..
        } = auth.reserve_now(&limits, one, T0 + 100)
        else {
            panic!()
        };
        assert_eq!(retry_after_secs, 500);
        assert!(matches!(
            auth.reserve_now(&limits, one, T0 + 601),
            QuotaDecision::Allow(_)
        ));
    }

    #[test]
    fn concurrent_reservations_never_overgrant() {
        let q = quota(
            "ns/c",
            Enforcement::Enforce,
            limit(LimitWindow::Calendar(CalendarWindow::Day), None, Some(100)),
        );
        let auth = std::sync::Arc::new(LocalQuotaAuthority::new());
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let limits = vec![(&q, &q.limits[0])];
                    for _ in 0..50 {
                        if let QuotaDecision::Allow(_) = auth.reserve_now(
                            &limits,
                            Amounts {
                                requests: 1,
                                ..Default::default()
                            },
                            T0,
                        ) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 100);
    }

    #[test]
    fn limits_match_by_subject_provider_and_model() {
        let mut l = limit(LimitWindow::Calendar(CalendarWindow::Day), Some(1), None);
        l.model_globs = vec!["gpt-4o*".into()];
        l.providers = vec!["openai".into()];
        let mut q = quota("ns/m", Enforcement::Enforce, l);
        q.service_accounts = vec!["batch".into()];
        let config = GatewayConfig {
            version: 1,
            namespace: "ns".into(),
            policy_hash: String::new(),
            policies: vec![],
            providers: vec![],
            quotas: vec![q],
        };
        let batch = Caller {
            service_account: "batch".into(),
            pod_labels: BTreeMap::new(),
        };
        let web = Caller {
            service_account: "web".into(),
            pod_labels: BTreeMap::new(),
        };
        assert_eq!(
            matching_limits(&config, &batch, "openai", "gpt-4o-mini").len(),
            1
        );
        assert!(matching_limits(&config, &web, "openai", "gpt-4o-mini").is_empty());
        assert!(matching_limits(&config, &batch, "other", "gpt-4o-mini").is_empty());
        assert!(matching_limits(&config, &batch, "openai", "o3").is_empty());
    }
}

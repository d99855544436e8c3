//! The cluster quota authority: leases on one quota limit, granted atomically.
//!
//! Same semantics as the gateway's in-process authority (`gateway/src/quota.rs`):
//! a limit caps tokens, requests and/or cost in a calendar window (UTC or a named
//! time zone) or a rolling
//! window kept as 120 buckets. A gateway asks for a lease of an amount on
//! `(quota id, limit)` for the current window; the recorder grants it only if
//! settled usage plus the unconsumed rest of every live lease plus the new amount
//! stays within every cap. So the sum of outstanding leases and settled usage never
//! exceeds the cap, whatever the number of concurrent lessees. A shadow quota
//! grants anyway and says it would have denied.
//!
//! Leases are cumulative: `granted` and `consumed` only grow. Renew and return
//! report the lease's total consumption so far (so a retried call is harmless);
//! the difference to the last report is settled into usage. Renew tops the unused
//! rest up to a new amount and extends the expiry; return settles and releases.
//! An expired lease stops counting: its unconsumed rest returns automatically,
//! while the consumption it reported stays settled.
//!
//! [`decide`] and [`window_view`] are pure; [`grant`], [`renew`] and [`give_back`]
//! run them inside a storage transaction holding the limit's lock.

use tollgate_evidence::Timestamp;
use tollgate_wire::config::{CompiledLimit, Enforcement, LimitWindow};
use tollgate_wire::quota_math::{Amounts, QuotaWindow, calendar_window_bounds};

use crate::error::RecorderError;
use crate::settings::{DEFAULT_LEASE_TTL_SECONDS, MAX_LEASE_TTL_SECONDS};
pub use crate::store::Caps;
use crate::store::{LeaseRow, LimitKey, QuotaTx, Store};
pub use tollgate_wire::lease::{
    AmountsWire, GrantRequest, LeaseResponse, RenewRequest, ReturnRequest, ReturnResponse,
};

/// Rolling windows are kept as this many buckets (as in the gateway).
pub const ROLLING_BUCKETS: u64 = 120;
/// Leases stay stored this long after expiring, so late renew/return calls still
/// settle what they report.
pub const LEASE_GRACE_SECONDS: u64 = 86_400;

/// Where the current window lies for a limit, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowView {
    /// Calendar: the window's start; rolling: 0 (leases are not tied to a window).
    pub window_start: u64,
    /// Usage counts from buckets `from ..= to`.
    pub from_bucket: u64,
    /// See `from_bucket`.
    pub to_bucket: u64,
    /// Where usage settled now goes.
    pub bucket_now: u64,
}

/// The storage key of a limit.
pub fn limit_key(quota_id: &str, limit: &CompiledLimit) -> LimitKey {
    LimitKey {
        quota_id: quota_id.to_string(),
        limit: limit.name.clone(),
        window: QuotaWindow::of(limit).key(),
    }
}

/// The current window of `window` at `now_s`.
pub fn window_view(window: &QuotaWindow, now_s: u64) -> WindowView {
    match *window {
        QuotaWindow::Calendar(w, ref zone) => {
            let (start, _) = calendar_window_bounds(w, zone.as_ref(), now_s);
            WindowView {
                window_start: start,
                from_bucket: start,
                to_bucket: start,
                bucket_now: start,
            }
        }
        QuotaWindow::Rolling(len) => {
            let width = (len / ROLLING_BUCKETS).max(1);
            WindowView {
                window_start: 0,
                from_bucket: now_s.saturating_sub(len),
                to_bucket: u64::MAX >> 1,
                bucket_now: now_s - now_s % width,
            }
        }
    }
}

/// Seconds until a denied request may succeed: the calendar window's end, or when
/// the oldest usage bucket leaves a rolling window.
pub fn retry_after(window: &QuotaWindow, now_s: u64, oldest_bucket: Option<u64>) -> u64 {
    match *window {
        QuotaWindow::Calendar(w, ref zone) => calendar_window_bounds(w, zone.as_ref(), now_s)
            .1
            .saturating_sub(now_s),
        QuotaWindow::Rolling(len) => {
            oldest_bucket.map_or(1, |start| (start + len).saturating_sub(now_s))
        }
    }
    .max(1)
}

/// What the authority decides for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Grant `amount`; `shadow_denied` if an enforced quota would have denied.
    Grant {
        /// Granted.
        amount: Amounts,
        /// Would an enforced quota have denied?
        shadow_denied: bool,
    },
    /// Deny.
    Deny,
}

/// The caps of a limit.
pub fn caps_of(limit: &CompiledLimit) -> Caps {
    Caps {
        tokens: limit.tokens,
        requests: limit.requests,
        cost_micro_usd: limit.cost_micro_usd,
    }
}

fn parts(a: Amounts) -> [u64; 3] {
    [a.tokens, a.requests, a.cost_micro_usd]
}

fn from_parts(p: [u64; 3]) -> Amounts {
    Amounts {
        tokens: p[0],
        requests: p[1],
        cost_micro_usd: p[2],
    }
}

/// Decides a grant: per capped quantity, the grant is the wanted amount clipped to
/// what is left (`cap - used - outstanding`); if that is below the minimum for any
/// quantity, an enforced limit denies and a shadow limit grants the wanted amount
/// and records a would-deny. Uncapped quantities are granted as wanted.
pub fn decide(
    caps: Caps,
    enforcement: Enforcement,
    used: Amounts,
    outstanding: Amounts,
    want: Amounts,
    min: Amounts,
) -> Decision {
    let (used, outstanding, want, min) = (parts(used), parts(outstanding), parts(want), parts(min));
    let mut grant = [0u64; 3];
    let mut fits = true;
    for (i, cap) in [caps.tokens, caps.requests, caps.cost_micro_usd]
        .into_iter()
        .enumerate()
    {
        grant[i] = match cap {
            None => want[i],
            Some(cap) => {
                let left = cap.saturating_sub(used[i].saturating_add(outstanding[i]));
                if left < min[i] {
                    fits = false;
                }
                want[i].min(left)
            }
        };
    }
    match (fits, enforcement) {
        (true, _) => Decision::Grant {
            amount: from_parts(grant),
            shadow_denied: false,
        },
        (false, Enforcement::Shadow) => Decision::Grant {
            amount: from_parts(want),
            shadow_denied: true,
        },
        (false, Enforcement::Enforce) => Decision::Deny,
    }
}

fn check_amounts(want: AmountsWire, min: Option<AmountsWire>) -> Result<Amounts, RecorderError> {
    let min = min.unwrap_or(want);
    if min.tokens > want.tokens
        || min.requests > want.requests
        || min.cost_micro_usd > want.cost_micro_usd
    {
        return Err(RecorderError::BadRequest(
            "min_amount must not exceed amount".into(),
        ));
    }
    Ok(min.into())
}

fn ttl(ttl_seconds: Option<u64>) -> Result<u64, RecorderError> {
    let ttl = ttl_seconds.unwrap_or(DEFAULT_LEASE_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_LEASE_TTL_SECONDS {
        return Err(RecorderError::BadRequest(format!(
            "ttl_seconds must be 1 to {MAX_LEASE_TTL_SECONDS}"
        )));
    }
    Ok(ttl)
}

fn check_limit(quota_id: &str, limit: &CompiledLimit) -> Result<(), RecorderError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
    };
    if !ok(quota_id) || !ok(&limit.name) {
        return Err(RecorderError::BadRequest(
            "quota_id and limit.name must be 1-253 of [A-Za-z0-9._/-]".into(),
        ));
    }
    if matches!(limit.window, LimitWindow::RollingSeconds(0)) {
        return Err(RecorderError::BadRequest(
            "a rolling window must be at least 1 second".into(),
        ));
    }
    Ok(())
}

fn rfc3339(seconds: u64) -> Option<String> {
    Timestamp::from_unix_millis(seconds.saturating_mul(1_000))
        .ok()
        .map(Timestamp::to_canonical_string)
}

struct Standing {
    used: Amounts,
    outstanding: Amounts,
}

async fn standing(
    tx: &mut dyn QuotaTx,
    view: WindowView,
    now_s: u64,
    exclude: Option<&str>,
) -> Result<Standing, RecorderError> {
    let used = tx.usage_sum(view.from_bucket, view.to_bucket).await?;
    let outstanding = tx.outstanding(view.window_start, now_s, exclude).await?;
    Ok(Standing { used, outstanding })
}

async fn denial_wait(
    tx: &mut dyn QuotaTx,
    window: &QuotaWindow,
    view: WindowView,
    now_s: u64,
) -> Result<u64, RecorderError> {
    let oldest = match window {
        QuotaWindow::Rolling(_) => tx.oldest_bucket(view.from_bucket).await?,
        QuotaWindow::Calendar(..) => None,
    };
    Ok(retry_after(window, now_s, oldest))
}

fn purge_before(window: &QuotaWindow, view: WindowView) -> u64 {
    match window {
        QuotaWindow::Rolling(_) => view.from_bucket,
        // Calendar usage is one row per window; keep history.
        QuotaWindow::Calendar(..) => 0,
    }
}

/// Grants a new lease (or denies), atomically on the limit.
pub async fn grant(
    store: &dyn Store,
    request: &GrantRequest,
    holder: &str,
    lease_id: String,
    now_ms: u64,
) -> Result<LeaseResponse, RecorderError> {
    check_limit(&request.quota_id, &request.limit)?;
    let min = check_amounts(request.amount, request.min_amount)?;
    let ttl = ttl(request.ttl_seconds)?;
    let now_s = now_ms / 1_000;
    let window = QuotaWindow::of(&request.limit);
    let view = window_view(&window, now_s);
    let key = limit_key(&request.quota_id, &request.limit);
    let mut tx = store.begin_quota(&key).await?;
    tx.purge(
        now_s.saturating_sub(LEASE_GRACE_SECONDS),
        purge_before(&window, view),
    )
    .await?;
    let s = standing(tx.as_mut(), view, now_s, None).await?;
    let caps = caps_of(&request.limit);
    let decision = decide(
        caps,
        request.enforcement,
        s.used,
        s.outstanding,
        request.amount.into(),
        min,
    );
    let mut response = LeaseResponse {
        granted: false,
        lease_id: None,
        quota_id: request.quota_id.clone(),
        limit: request.limit.name.clone(),
        amount: AmountsWire::default(),
        expires_at: None,
        used: s.used.into(),
        outstanding: s.outstanding.into(),
        shadow_denied: false,
        retry_after_seconds: None,
    };
    match decision {
        Decision::Grant {
            amount,
            shadow_denied,
        } => {
            let expires_at = now_s + ttl;
            tx.put_lease(&LeaseRow {
                lease_id: lease_id.clone(),
                key,
                window_start: view.window_start,
                granted: amount,
                consumed: Amounts::default(),
                expires_at,
                holder: holder.to_string(),
                returned: false,
                caps,
                shadow: request.enforcement == Enforcement::Shadow,
            })
            .await?;
            response.granted = true;
            response.lease_id = Some(lease_id);
            response.amount = amount.into();
            response.expires_at = rfc3339(expires_at);
            response.shadow_denied = shadow_denied;
        }
        Decision::Deny => {
            response.retry_after_seconds =
                Some(denial_wait(tx.as_mut(), &window, view, now_s).await?);
        }
    }
    tx.commit().await?;
    Ok(response)
}

fn consumption_delta(previous: Amounts, now: AmountsWire) -> Result<Amounts, RecorderError> {
    if now.tokens < previous.tokens
        || now.requests < previous.requests
        || now.cost_micro_usd < previous.cost_micro_usd
    {
        return Err(RecorderError::Conflict(
            "consumed is a lease's total so far and cannot go down".into(),
        ));
    }
    let mut delta: Amounts = now.into();
    delta.sub(previous);
    Ok(delta)
}

async fn open_lease(
    store: &dyn Store,
    lease_id: &str,
) -> Result<(Box<dyn QuotaTx>, LeaseRow, QuotaWindow), RecorderError> {
    let key = store
        .lease_key(lease_id)
        .await?
        .ok_or_else(|| RecorderError::NotFound(format!("lease {lease_id} not found")))?;
    let window = QuotaWindow::from_key(&key.window)
        .ok_or_else(|| RecorderError::Internal(format!("stored window {:?}", key.window)))?;
    let mut tx = store.begin_quota(&key).await?;
    let lease = tx
        .lease(lease_id)
        .await?
        .ok_or_else(|| RecorderError::NotFound(format!("lease {lease_id} not found")))?;
    Ok((tx, lease, window))
}

async fn settle(
    tx: &mut dyn QuotaTx,
    lease: &mut LeaseRow,
    window: &QuotaWindow,
    consumed: AmountsWire,
    now_s: u64,
) -> Result<Amounts, RecorderError> {
    let delta = consumption_delta(lease.consumed, consumed)?;
    if delta != Amounts::default() {
        let bucket = match window {
            // Calendar: charge the window the lease was granted in.
            QuotaWindow::Calendar(..) => lease.window_start,
            QuotaWindow::Rolling(_) => window_view(window, now_s).bucket_now,
        };
        tx.add_usage(bucket, delta).await?;
    }
    lease.consumed = consumed.into();
    Ok(delta)
}

/// Settles a lease's reported consumption and tops its unused rest up to a new
/// amount (or to nothing, if denied), atomically on the limit. `holder` must be the
/// lease's holder.
pub async fn renew(
    store: &dyn Store,
    lease_id: &str,
    request: &RenewRequest,
    holder: &str,
    now_ms: u64,
) -> Result<LeaseResponse, RecorderError> {
    let min = check_amounts(request.amount, request.min_amount)?;
    let ttl = ttl(request.ttl_seconds)?;
    let now_s = now_ms / 1_000;
    let (mut tx, mut lease, window) = open_lease(store, lease_id).await?;
    if lease.holder != holder {
        return Err(RecorderError::Forbidden(
            "the lease belongs to another caller".into(),
        ));
    }
    if lease.returned {
        return Err(RecorderError::Conflict(format!(
            "lease {lease_id} was returned"
        )));
    }
    settle(tx.as_mut(), &mut lease, &window, request.consumed, now_s).await?;
    let view = window_view(&window, now_s);
    lease.window_start = view.window_start;
    let s = standing(tx.as_mut(), view, now_s, Some(lease_id)).await?;
    // Renewals keep the caps and enforcement the lease was granted under; a
    // gateway whose config changed takes a new lease.
    let enforcement = if lease.shadow {
        Enforcement::Shadow
    } else {
        Enforcement::Enforce
    };
    let decision = decide(
        lease.caps,
        enforcement,
        s.used,
        s.outstanding,
        request.amount.into(),
        min,
    );
    let mut response = LeaseResponse {
        granted: false,
        lease_id: Some(lease_id.to_string()),
        quota_id: lease.key.quota_id.clone(),
        limit: lease.key.limit.clone(),
        amount: AmountsWire::default(),
        expires_at: None,
        used: s.used.into(),
        outstanding: s.outstanding.into(),
        shadow_denied: false,
        retry_after_seconds: None,
    };
    match decision {
        Decision::Grant {
            amount,
            shadow_denied,
        } => {
            lease.granted = Amounts::sum(lease.consumed, amount);
            lease.expires_at = now_s + ttl;
            response.granted = true;
            response.amount = amount.into();
            response.shadow_denied = shadow_denied;
        }
        Decision::Deny => {
            lease.granted = lease.consumed;
            response.retry_after_seconds =
                Some(denial_wait(tx.as_mut(), &window, view, now_s).await?);
        }
    }
    response.expires_at = rfc3339(lease.expires_at);
    tx.put_lease(&lease).await?;
    tx.commit().await?;
    Ok(response)
}

/// Settles a lease's final consumption and releases its unused rest. Returning a
/// returned lease again settles nothing and answers the same.
pub async fn give_back(
    store: &dyn Store,
    lease_id: &str,
    request: &ReturnRequest,
    holder: &str,
    now_ms: u64,
) -> Result<ReturnResponse, RecorderError> {
    let now_s = now_ms / 1_000;
    let (mut tx, mut lease, window) = open_lease(store, lease_id).await?;
    if lease.holder != holder {
        return Err(RecorderError::Forbidden(
            "the lease belongs to another caller".into(),
        ));
    }
    let settled = if lease.returned {
        if AmountsWire::from(lease.consumed) != request.consumed {
            return Err(RecorderError::Conflict(format!(
                "lease {lease_id} was already returned with another consumption"
            )));
        }
        Amounts::default()
    } else {
        let delta = settle(tx.as_mut(), &mut lease, &window, request.consumed, now_s).await?;
        lease.returned = true;
        lease.granted = lease.consumed;
        tx.put_lease(&lease).await?;
        delta
    };
    tx.commit().await?;
    Ok(ReturnResponse {
        lease_id: lease_id.to_string(),
        settled: settled.into(),
        consumed: lease.consumed.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::config::CalendarWindow;
    use tollgate_wire::time_zone::TimeZoneName;

    fn limit(window: LimitWindow, tokens: Option<u64>, requests: Option<u64>) -> CompiledLimit {
        CompiledLimit {
            time_zone: None,
            name: "l".into(),
            window,
            tokens,
            requests,
            cost_micro_usd: None,
            model_globs: vec![],
            providers: vec![],
        }
    }

    fn req(n: u64) -> Amounts {
        Amounts {
            requests: n,
            ..Default::default()
        }
    }

    #[test]
    fn grants_clip_to_what_is_left_and_deny_below_the_minimum() {
        let l = caps_of(&limit(
            LimitWindow::Calendar(CalendarWindow::Day),
            None,
            Some(10),
        ));
        assert_eq!(
            decide(l, Enforcement::Enforce, req(4), req(3), req(5), req(1)),
            Decision::Grant {
                amount: req(3),
                shadow_denied: false
            }
        );
        assert_eq!(
            decide(l, Enforcement::Enforce, req(4), req(6), req(5), req(1)),
            Decision::Deny
        );
        assert_eq!(
            decide(l, Enforcement::Shadow, req(4), req(6), req(5), req(1)),
            Decision::Grant {
                amount: req(5),
                shadow_denied: true
            }
        );
    }

    #[test]
    fn uncapped_quantities_are_granted_as_wanted() {
        let l = caps_of(&limit(
            LimitWindow::Calendar(CalendarWindow::Day),
            Some(100),
            None,
        ));
        let want = Amounts {
            tokens: 50,
            requests: 7,
            cost_micro_usd: 9,
        };
        assert_eq!(
            decide(
                l,
                Enforcement::Enforce,
                Amounts::default(),
                Amounts::default(),
                want,
                want
            ),
            Decision::Grant {
                amount: want,
                shadow_denied: false
            }
        );
    }

    #[test]
    fn windows_match_the_gateway() {
        const T: u64 = 1_763_700_000; // 2025-11-21T04:40:00Z
        let minute = QuotaWindow::Calendar(CalendarWindow::Minute, None);
        let v = window_view(&minute, T + 5);
        assert_eq!((v.window_start, v.bucket_now), (T, T));
        assert_eq!(retry_after(&minute, T + 10, None), 50);
        let rolling = QuotaWindow::Rolling(600);
        let r = window_view(&rolling, T + 7);
        assert_eq!(r.from_bucket, T + 7 - 600);
        assert_eq!(r.bucket_now, T + 5, "600 s / 120 buckets = 5 s wide");
        assert_eq!(retry_after(&rolling, T + 100, Some(T)), 500);
        // India's hours start at half past the UTC hour: at 04:40 UTC the
        // window began at 04:30 and resets at 05:30.
        let kolkata = TimeZoneName::parse("Asia/Kolkata").unwrap();
        let hour = QuotaWindow::Calendar(CalendarWindow::Hour, Some(kolkata));
        assert_eq!(window_view(&hour, T).window_start, T - 600);
        assert_eq!(retry_after(&hour, T, None), 3_000);
        let mut zoned = limit(LimitWindow::Calendar(CalendarWindow::Day), None, Some(1));
        zoned.time_zone = Some(TimeZoneName::parse("Europe/Berlin").unwrap());
        assert_eq!(limit_key("q", &zoned).window, "calendar:day@Europe/Berlin");
    }
}

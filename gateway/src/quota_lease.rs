//! The cluster quota authority, seen from a gateway: leases from the
//! recorder's lease API (docs/recorder.md, "Quota leases"). A request draws its
//! estimate from the local rest of a lease; only when the rest cannot cover it
//! does the gateway ask the recorder, once for every request waiting. Actual
//! usage is settled locally and reported on the next renew, and every lease is
//! returned when the gateway stops.
//!
//! The pure part, [`LeaseBook`], decides; [`LeasedQuotaAuthority`] does the
//! HTTP. When the recorder cannot be reached, each quota's `failMode` decides:
//! `closed` refuses the request (503), `open` lets it through unleased; its
//! receipt still counts in usage. After a failed call the gateway holds off
//! for [`UNREACHABLE_HOLD_OFF`] ([`Reachability`]): requests meanwhile get
//! their failMode at once instead of each waiting for a connection attempt, and
//! an outage is logged when it starts and when it ends, not once per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tollgate_wire::client::HttpClient;
use tollgate_wire::client::TokenSource;
use tollgate_wire::config::Enforcement;
use tollgate_wire::config::FailMode;
use tollgate_wire::config::{CompiledLimit, CompiledQuota};
use tollgate_wire::lease::{AmountsWire, GrantRequest, LeaseResponse, RenewRequest, ReturnRequest};

use crate::quota::{
    Amounts, BoxFuture, LimitKey, QuotaAuthority, QuotaDecision, Reservation, key_of,
};

/// A grant asks for this many estimates at once, so most requests never wait
/// for the recorder; the least it accepts is one estimate.
pub const LEASE_CHUNK: u64 = 8;
/// Lease length asked for.
pub const LEASE_TTL_SECONDS: u64 = 60;
/// Renew leases this long before they expire, and report consumption at
/// least this often.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// After a lease call fails, requests that need the recorder get their
/// quota's failMode without calling it for this long.
pub const UNREACHABLE_HOLD_OFF: Duration = Duration::from_secs(1);

/// Stopping, the gateway returns its leases within this time at most.
pub const RETURN_LEASES_WITHIN: Duration = Duration::from_secs(5);

/// A request that needs a lease waits this long at most for another
/// request's lease call to the recorder; then its quota's failMode applies.
pub const MAX_REFILL_WAIT: Duration = Duration::from_secs(1);

/// Whether the recorder is worth calling: a failed call holds calls off for
/// [`UNREACHABLE_HOLD_OFF`]; the first success ends the outage.
#[derive(Debug, Default)]
pub struct Reachability {
    /// When the current outage began (its first failed call).
    down_since: Option<Instant>,
    /// No call before this.
    hold_off_until: Option<Instant>,
}

/// What a call's outcome changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReachabilityChange {
    /// Nothing new: still reachable, or still away.
    Unchanged,
    /// The first failure of an outage.
    WentAway,
    /// The first success after an outage that lasted this long.
    CameBack(Duration),
}

impl Reachability {
    /// Whether to call the recorder at `now`.
    pub fn may_call(&self, now: Instant) -> bool {
        self.hold_off_until.is_none_or(|until| now >= until)
    }

    /// A call failed at `now`.
    pub fn failed(&mut self, now: Instant) -> ReachabilityChange {
        self.hold_off_until = Some(now + UNREACHABLE_HOLD_OFF);
        if self.down_since.is_some() {
            ReachabilityChange::Unchanged
        } else {
            self.down_since = Some(now);
            ReachabilityChange::WentAway
        }
    }

    /// A call succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) -> ReachabilityChange {
        self.hold_off_until = None;
        match self.down_since.take() {
            Some(since) => ReachabilityChange::CameBack(now.saturating_duration_since(since)),
            None => ReachabilityChange::Unchanged,
        }
    }
}

/// One lease as the gateway keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: Option<String>,
    /// Granted, not consumed and not reserved: what new requests may draw.
    pub rest: Amounts,
    /// In flight: reserved by requests not yet settled.
    pub reserved: Amounts,
    /// The lease's total consumption so far (what renew and return report).
    pub consumed: Amounts,
    /// `consumed` as last reported to the recorder.
    pub reported: Amounts,
    /// Unix seconds after which the rest no longer counts.
    pub expires_at: u64,
}

/// Whether `available` covers `wanted` on every quantity `limit` caps.
fn covers(limit: &CompiledLimit, available: Amounts, wanted: Amounts) -> bool {
    (limit.tokens.is_none() || available.tokens >= wanted.tokens)
        && (limit.requests.is_none() || available.requests >= wanted.requests)
        && (limit.cost_micro_usd.is_none() || available.cost_micro_usd >= wanted.cost_micro_usd)
}

fn times(a: Amounts, n: u64) -> Amounts {
    Amounts {
        tokens: a.tokens.saturating_mul(n),
        requests: a.requests.saturating_mul(n),
        cost_micro_usd: a.cost_micro_usd.saturating_mul(n),
    }
}

/// The pure lease bookkeeping: no I/O, no clock.
#[derive(Debug, Default)]
pub struct LeaseBook {
    leases: HashMap<LimitKey, Lease>,
}

impl LeaseBook {
    /// Draws `estimate` from every limit's lease if each can cover it; else
    /// names the limits that need more.
    pub fn try_reserve(
        &mut self,
        limits: &[(&CompiledQuota, &CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> Result<Vec<(LimitKey, Amounts)>, Vec<usize>> {
        let short: Vec<usize> = limits
            .iter()
            .enumerate()
            .filter(|(_, (quota, limit))| {
                let lease = self.leases.get(&key_of(&quota.id, limit));
                !lease.is_some_and(|l| now < l.expires_at && covers(limit, l.rest, estimate))
            })
            .map(|(i, _)| i)
            .collect();
        if !short.is_empty() {
            return Err(short);
        }
        Ok(limits
            .iter()
            .map(|(quota, limit)| {
                let key = key_of(&quota.id, limit);
                let lease = self.leases.entry(key.clone()).or_default();
                lease.rest.sub(estimate);
                lease.reserved.add(estimate);
                (key, estimate)
            })
            .collect())
    }

    /// Reserves without a lease (fail-open, or a shadow quota): counted as
    /// reserved so that consumption is still reported on a later lease.
    pub fn reserve_unleased(&mut self, key: LimitKey, estimate: Amounts) -> (LimitKey, Amounts) {
        self.leases
            .entry(key.clone())
            .or_default()
            .reserved
            .add(estimate);
        (key, estimate)
    }

    /// Replaces a reservation's estimate with actual usage. Using less than
    /// reserved gives the difference back to the rest; using more overdraws
    /// it, and the next renew reports the truth.
    pub fn settle(&mut self, entries: Vec<(LimitKey, Amounts)>, actual: Amounts) {
        for (key, estimate) in entries {
            let lease = self.leases.entry(key).or_default();
            lease.reserved.sub(estimate);
            lease.consumed.add(actual);
            let mut rest = Amounts::sum(lease.rest, estimate);
            rest.sub(actual);
            lease.rest = rest;
        }
    }

    /// What to ask the recorder for on `key` so that `estimate` fits: the
    /// request body (grant or renew) for the lease as it stands.
    pub fn refill_request(
        &self,
        quota: &CompiledQuota,
        limit: &CompiledLimit,
        estimate: Amounts,
    ) -> Refill {
        let key = key_of(&quota.id, limit);
        let lease = self.leases.get(&key).cloned().unwrap_or_default();
        // After renewing, the rest must also cover what is in flight.
        let min = Amounts::sum(lease.reserved, estimate);
        let amount = Amounts::sum(lease.reserved, times(estimate, LEASE_CHUNK));
        match lease.id {
            Some(id) => Refill::Renew {
                lease_id: id,
                body: RenewRequest {
                    consumed: lease.consumed.into(),
                    amount: amount.into(),
                    min_amount: Some(min.into()),
                    ttl_seconds: Some(LEASE_TTL_SECONDS),
                },
            },
            None => Refill::Grant(GrantRequest {
                quota_id: quota.id.clone(),
                limit: limit.clone(),
                enforcement: quota.enforcement,
                amount: amount.into(),
                min_amount: Some(min.into()),
                ttl_seconds: Some(LEASE_TTL_SECONDS),
            }),
        }
    }

    /// Drops a lease the recorder no longer knows: the next refill asks for a
    /// fresh grant. Requests in flight keep their reservation; their usage is
    /// reported on the new lease. Consumption never reported on the old one
    /// is not counted (as for any lease that expired unreported).
    pub fn forget(&mut self, key: &LimitKey) {
        if let Some(lease) = self.leases.get_mut(key) {
            *lease = Lease {
                reserved: lease.reserved,
                ..Lease::default()
            };
        }
    }

    /// Applies the recorder's answer to a grant or renew sent with `sent`
    /// consumption. A granted `amount` is the whole unused rest of the lease,
    /// in-flight reservations included.
    pub fn apply(&mut self, key: &LimitKey, sent: Amounts, answer: &LeaseResponse, now: u64) {
        let lease = self.leases.entry(key.clone()).or_default();
        if let Some(id) = &answer.lease_id {
            lease.id = Some(id.clone());
        }
        lease.reported = sent;
        // Consumption settled while the call was in flight is not in the
        // recorder's figure: it comes off the rest now and is reported next time.
        let mut since = lease.consumed;
        since.sub(sent);
        let mut rest: Amounts = answer.amount.into();
        rest.sub(lease.reserved);
        rest.sub(since);
        lease.rest = if answer.granted {
            rest
        } else {
            Amounts::default()
        };
        lease.expires_at = if answer.granted {
            now + LEASE_TTL_SECONDS.saturating_sub(1)
        } else {
            0
        };
    }

    /// Leases whose consumption is unreported or that expire soon, with the
    /// renew that keeps their rest.
    pub fn due_for_renewal(&self, now: u64) -> Vec<(LimitKey, String, RenewRequest)> {
        self.leases
            .iter()
            .filter_map(|(key, lease)| {
                let id = lease.id.clone()?;
                let unreported = lease.consumed != lease.reported;
                let expiring =
                    lease.expires_at > now && lease.expires_at <= now + RENEW_EVERY.as_secs() * 2;
                (unreported || expiring).then(|| {
                    let keep = Amounts::sum(lease.rest, lease.reserved);
                    (
                        key.clone(),
                        id,
                        RenewRequest {
                            consumed: lease.consumed.into(),
                            amount: keep.into(),
                            min_amount: Some(AmountsWire::default()),
                            ttl_seconds: Some(LEASE_TTL_SECONDS),
                        },
                    )
                })
            })
            .collect()
    }

    /// Every lease to return, with its final consumption.
    pub fn returns(&self) -> Vec<(String, ReturnRequest)> {
        self.leases
            .values()
            .filter_map(|lease| {
                Some((
                    lease.id.clone()?,
                    ReturnRequest {
                        consumed: lease.consumed.into(),
                    },
                ))
            })
            .collect()
    }

    /// The lease of `key`, for tests and metrics.
    pub fn lease(&self, key: &LimitKey) -> Option<&Lease> {
        self.leases.get(key)
    }
}

/// A grant or a renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refill {
    Grant(GrantRequest),
    Renew {
        lease_id: String,
        body: RenewRequest,
    },
}

impl Refill {
    /// The consumption this call reports to the recorder: a renew's
    /// total, none for a grant (what was consumed without a lease is
    /// reported on the new lease's first renew).
    pub fn reported(&self) -> Amounts {
        match self {
            Self::Grant(_) => Amounts::default(),
            Self::Renew { body, .. } => body.consumed.into(),
        }
    }
}

/// Leases quota from the recorder.
#[derive(Debug)]
pub struct LeasedQuotaAuthority {
    base_url: String,
    token: Arc<dyn TokenSource>,
    http: HttpClient,
    book: Mutex<LeaseBook>,
    /// One refill at a time, and renewals only between them: requests that
    /// wait together share its grant, and answers apply to the lease they
    /// were asked for.
    refill: tokio::sync::Mutex<()>,
    reachability: Mutex<Reachability>,
    /// Limits the recorder refused (a 4xx other than a lease it forgot), and
    /// until when requests get their failMode for them without asking again.
    refused: Mutex<HashMap<LimitKey, (Instant, StatusCode)>>,
}

/// Why a lease call failed.
#[derive(Debug)]
enum CallError {
    /// The recorder could not be reached, or answered 5xx: an outage.
    Unreachable(String),
    /// The recorder answered 4xx: it is there and refused this call (a lease
    /// it no longer knows, a quota this pod may not lease).
    Refused(StatusCode),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => f.write_str(why),
            Self::Refused(status) => write!(f, "recorder answered {status}"),
        }
    }
}

impl CallError {
    /// The recorder no longer knows the lease (purged a day after it
    /// expired, or returned): a fresh grant is due.
    fn lease_gone(&self) -> bool {
        matches!(self, Self::Refused(s) if *s == StatusCode::NOT_FOUND || *s == StatusCode::CONFLICT)
    }
}

impl LeasedQuotaAuthority {
    pub fn new(
        recorder_url: &str,
        token: Arc<dyn TokenSource>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            base_url: recorder_url.trim_end_matches('/').to_string(),
            token,
            http: HttpClient::new(tls, Duration::from_secs(5)),
            book: Mutex::new(LeaseBook::default()),
            refill: tokio::sync::Mutex::new(()),
            reachability: Mutex::new(Reachability::default()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, LeaseBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Bytes, CallError> {
        let token = self
            .token
            .token()
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let body = serde_json::to_vec(body).map_err(|e| CallError::Unreachable(e.to_string()))?;
        let response = self
            .http
            .send(
                Method::POST,
                &format!("{}{path}", self.base_url),
                Some(&token),
                Some(Bytes::from(body)),
                64 * 1024,
            )
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if response.status.is_client_error() {
            return Err(CallError::Refused(response.status));
        }
        if response.status != StatusCode::OK {
            return Err(CallError::Unreachable(format!(
                "recorder answered {}",
                response.status
            )));
        }
        Ok(response.body)
    }

    /// Grants or renews, unless an outage holds calls off; logs where an
    /// outage starts and ends.
    async fn call(&self, refill: &Refill) -> Result<LeaseResponse, CallError> {
        if !self.reachability().may_call(Instant::now()) {
            return Err(CallError::Unreachable(
                "holding off after a failed call".into(),
            ));
        }
        let result = self.call_now(refill).await;
        let change = match &result {
            // A refusal is an answer: the recorder is there.
            Ok(_) | Err(CallError::Refused(_)) => self.reachability().succeeded(Instant::now()),
            Err(CallError::Unreachable(_)) => self.reachability().failed(Instant::now()),
        };
        match (change, &result) {
            (ReachabilityChange::WentAway, Err(CallError::Unreachable(why))) => {
                tracing::warn!(reason = %why, "quota authority unreachable; each quota's failMode applies until it is back");
            }
            (ReachabilityChange::CameBack(after), _) => {
                tracing::info!(
                    after_ms = after.as_millis() as u64,
                    "quota authority reachable again"
                );
            }
            _ => {}
        }
        result
    }

    fn reachability(&self) -> std::sync::MutexGuard<'_, Reachability> {
        self.reachability.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, HashMap<LimitKey, (Instant, StatusCode)>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A refill for `key`, unless another request's call took too long or
    /// the recorder refused this limit a moment ago; on a lease the recorder
    /// forgot, a fresh grant. Returns the answer and the consumption it
    /// reported (none for a grant).
    async fn refill_for(
        &self,
        quota: &CompiledQuota,
        limit: &CompiledLimit,
        key: &LimitKey,
        estimate: Amounts,
        my_turn: bool,
    ) -> (Result<LeaseResponse, CallError>, Amounts) {
        if !my_turn {
            let waiting = "another lease call is still waiting for the recorder";
            return (
                Err(CallError::Unreachable(waiting.into())),
                Amounts::default(),
            );
        }
        let held_off = {
            let now = Instant::now();
            let mut refused = self.refused();
            refused.retain(|_, (until, _)| *until > now);
            refused.get(key).map(|(_, status)| *status)
        };
        if let Some(status) = held_off {
            return (Err(CallError::Refused(status)), Amounts::default());
        }
        let mut refill = self.book().refill_request(quota, limit, estimate);
        let mut answer = self.call(&refill).await;
        if let (Refill::Renew { .. }, Err(e)) = (&refill, &answer)
            && e.lease_gone()
        {
            // Ask afresh for a lease the recorder no longer knows.
            self.book().forget(key);
            refill = self.book().refill_request(quota, limit, estimate);
            answer = self.call(&refill).await;
        }
        if let Err(e @ CallError::Refused(status)) = &answer
            && !e.lease_gone()
        {
            let newly = self
                .refused()
                .insert(
                    key.clone(),
                    (Instant::now() + UNREACHABLE_HOLD_OFF, *status),
                )
                .is_none();
            if newly {
                tracing::warn!(quota = %quota.id, limit = %limit.name, reason = %e, "the quota authority refused a lease call; the quota's failMode applies");
            }
        }
        (answer, refill.reported())
    }

    async fn call_now(&self, refill: &Refill) -> Result<LeaseResponse, CallError> {
        let body = match refill {
            Refill::Grant(body) => self.post("/v1/quota/leases", body).await?,
            Refill::Renew { lease_id, body } => {
                self.post(&format!("/v1/quota/leases/{lease_id}/renew"), body)
                    .await?
            }
        };
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Unreachable(format!("lease answer: {e}")))
    }

    async fn reserve_slow(
        &self,
        limits: &[(&CompiledQuota, &CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> QuotaDecision {
        // Wait for a refill in flight at most this long: a recorder that
        // answers slowly or not at all (packets dropped) then costs the
        // requests behind it a second, not the lease call's whole timeout.
        let my_turn = tokio::time::timeout(MAX_REFILL_WAIT, self.refill.lock())
            .await
            .ok();
        // Someone else's refill may have covered us while we waited.
        let short = match self.book().try_reserve(limits, estimate, now) {
            Ok(entries) => {
                return QuotaDecision::Allow(Reservation::from_entries(entries, false));
            }
            Err(short) => short,
        };
        let mut shadow_denied = false;
        let mut unleased = Vec::new();
        for i in short {
            let (quota, limit) = limits[i];
            let key = key_of(&quota.id, limit);
            let (answer, sent) = self
                .refill_for(quota, limit, &key, estimate, my_turn.is_some())
                .await;
            match answer {
                Ok(answer) => {
                    self.book().apply(&key, sent, &answer, now);
                    shadow_denied |= answer.shadow_denied;
                    if !answer.granted {
                        match quota.enforcement {
                            Enforcement::Enforce => {
                                return QuotaDecision::Deny {
                                    quota_id: quota.id.clone(),
                                    limit: limit.name.clone(),
                                    retry_after_secs: answer.retry_after_seconds.unwrap_or(1),
                                };
                            }
                            Enforcement::Shadow => {
                                shadow_denied = true;
                                unleased.push(i);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(quota = %quota.id, limit = %limit.name, reason = %e, "no lease; the quota's failMode applies");
                    match quota.fail_mode {
                        FailMode::Closed => {
                            return QuotaDecision::Unavailable {
                                quota_id: quota.id.clone(),
                                limit: limit.name.clone(),
                            };
                        }
                        FailMode::Open => unleased.push(i),
                    }
                }
            }
        }
        let mut book = self.book();
        // Limits that could not be leased (fail-open, shadow) are reserved
        // unleased; the rest must now fit their fresh leases.
        let mut entries = Vec::with_capacity(limits.len());
        let mut leased = Vec::new();
        for (i, (quota, limit)) in limits.iter().enumerate() {
            if unleased.contains(&i) {
                entries.push(book.reserve_unleased(key_of(&quota.id, limit), estimate));
            } else {
                leased.push((*quota, *limit));
            }
        }
        match book.try_reserve(&leased, estimate, now) {
            Ok(more) => {
                entries.extend(more);
                QuotaDecision::Allow(Reservation::from_entries(entries, shadow_denied))
            }
            Err(short) => {
                // Granted less than asked for (min not met) is a denial too.
                book.settle(entries, Amounts::default());
                let (quota, limit) = leased[short[0]];
                QuotaDecision::Deny {
                    quota_id: quota.id.clone(),
                    limit: limit.name.clone(),
                    retry_after_secs: 1,
                }
            }
        }
    }

    /// Renews leases with unreported consumption or close to expiry, forever.
    pub async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        loop {
            tick.tick().await;
            // Between refills, never beside one: a renew and a request's
            // refill of the same lease must not cross.
            let _turn = self.refill.lock().await;
            let now = crate::receipts::unix_millis() / 1000;
            let due = self.book().due_for_renewal(now);
            for (key, lease_id, body) in due {
                let sent: Amounts = body.consumed.into();
                let refill = Refill::Renew { lease_id, body };
                match self.call(&refill).await {
                    Ok(answer) => self.book().apply(&key, sent, &answer, now),
                    // The next request asks for a fresh lease.
                    Err(e) if e.lease_gone() => self.book().forget(&key),
                    Err(e) => {
                        tracing::debug!(reason = %e, "renewing a quota lease failed; retrying");
                    }
                }
            }
        }
    }
}

impl QuotaAuthority for LeasedQuotaAuthority {
    fn reserve<'a>(
        &'a self,
        limits: &'a [(&'a CompiledQuota, &'a CompiledLimit)],
        estimate: Amounts,
        now: u64,
    ) -> BoxFuture<'a, QuotaDecision> {
        if limits.is_empty() {
            return Box::pin(std::future::ready(QuotaDecision::Allow(
                Reservation::default(),
            )));
        }
        if let Ok(entries) = self.book().try_reserve(limits, estimate, now) {
            return Box::pin(std::future::ready(QuotaDecision::Allow(
                Reservation::from_entries(entries, false),
            )));
        }
        Box::pin(self.reserve_slow(limits, estimate, now))
    }

    fn settle(&self, reservation: Reservation, actual: Amounts, _now: u64) {
        self.book().settle(reservation.into_entries(), actual);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let returns = self.book().returns();
            let give_back = async {
                for (lease_id, body) in returns {
                    if let Err(why) = self
                        .post(&format!("/v1/quota/leases/{lease_id}/return"), &body)
                        .await
                    {
                        tracing::warn!(reason = %why, "returning a quota lease failed; it expires on its own");
                    }
                }
            };
            // A stopping pod does not wait long on a recorder that does not
            // answer: leases expire on their own.
            if tokio::time::timeout(RETURN_LEASES_WITHIN, give_back)
                .await
                .is_err()
            {
                tracing::warn!(
                    "returning quota leases took too long; the rest expire on their own"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_holds_calls_off_and_an_outage_is_reported_once_each_way() {
        let t0 = Instant::now();
        let mut r = Reachability::default();
        assert!(r.may_call(t0));
        assert_eq!(r.succeeded(t0), ReachabilityChange::Unchanged);
        assert_eq!(r.failed(t0), ReachabilityChange::WentAway);
        assert!(!r.may_call(t0 + UNREACHABLE_HOLD_OFF / 2));
        assert!(r.may_call(t0 + UNREACHABLE_HOLD_OFF));
        let later = t0 + UNREACHABLE_HOLD_OFF * 3;
        assert_eq!(r.failed(later), ReachabilityChange::Unchanged);
        assert!(!r.may_call(later), "each failure holds off again");
        let back = later + UNREACHABLE_HOLD_OFF;
        assert_eq!(
            r.succeeded(back),
            ReachabilityChange::CameBack(back - t0),
            "the outage counts from its first failure"
        );
        assert!(r.may_call(back));
        assert_eq!(r.failed(back), ReachabilityChange::WentAway);
    }
    use tollgate_wire::config::CalendarWindow;
    use tollgate_wire::config::LimitWindow;

    fn quota(enforcement: Enforcement, tokens: u64) -> CompiledQuota {
        CompiledQuota {
            id: "team-a/budget".into(),
            service_accounts: vec![],
            pod_selector: None,
            limits: vec![CompiledLimit {
                name: "daily".into(),
                window: LimitWindow::Calendar(CalendarWindow::Day),
                time_zone: None,
                tokens: Some(tokens),
                requests: None,
                cost_micro_usd: None,
                model_globs: vec![],
                providers: vec![],
            }],
            enforcement,
            fail_mode: FailMode::Closed,
        }
    }

    fn amounts(tokens: u64) -> Amounts {
        Amounts {
            tokens,
            requests: 1,
            cost_micro_usd: 0,
        }
    }

    fn answer(granted: bool, tokens: u64) -> LeaseResponse {
        LeaseResponse {
            granted,
            lease_id: Some("lease-1".into()),
            quota_id: "team-a/budget".into(),
            limit: "daily".into(),
            amount: amounts(tokens).into(),
            expires_at: None,
            used: AmountsWire::default(),
            outstanding: AmountsWire::default(),
            shadow_denied: false,
            retry_after_seconds: if granted { None } else { Some(42) },
        }
    }

    #[test]
    fn a_fresh_book_asks_for_a_grant_of_several_estimates() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let mut book = LeaseBook::default();
        assert_eq!(book.try_reserve(&limits, amounts(100), 10), Err(vec![0]));
        let Refill::Grant(req) = book.refill_request(&q, &q.limits[0], amounts(100)) else {
            panic!("expected a grant");
        };
        assert_eq!(req.amount.tokens, 100 * LEASE_CHUNK);
        assert_eq!(req.min_amount.unwrap().tokens, 100);
        assert_eq!(req.quota_id, "team-a/budget");
    }

    #[test]
    fn requests_draw_from_the_rest_and_settle_the_difference() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        book.apply(&key, Amounts::default(), &answer(true, 300), 10);
        let first = book.try_reserve(&limits, amounts(100), 11).unwrap();
        let second = book.try_reserve(&limits, amounts(100), 11).unwrap();
        assert_eq!(book.lease(&key).unwrap().rest.tokens, 100);
        // Used 40 of 100: 60 goes back to the rest.
        book.settle(first, amounts(40));
        assert_eq!(book.lease(&key).unwrap().rest.tokens, 160);
        assert_eq!(book.lease(&key).unwrap().reserved.tokens, 100);
        // Used 150 of 100: overdrawn, and reported as consumed.
        book.settle(second, amounts(150));
        let lease = book.lease(&key).unwrap();
        assert_eq!(lease.rest.tokens, 110);
        assert_eq!(lease.consumed.tokens, 190);
        assert_eq!(book.try_reserve(&limits, amounts(111), 12), Err(vec![0]));
    }

    #[test]
    fn renewals_report_consumption_and_keep_room_for_what_is_in_flight() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        book.apply(&key, Amounts::default(), &answer(true, 200), 10);
        let r = book.try_reserve(&limits, amounts(150), 11).unwrap();
        let done = book.try_reserve(&limits, amounts(50), 11).unwrap();
        book.settle(done, amounts(50));
        let Refill::Renew { lease_id, body } = book.refill_request(&q, &q.limits[0], amounts(100))
        else {
            panic!("expected a renew");
        };
        assert_eq!(lease_id, "lease-1");
        assert_eq!(body.consumed.tokens, 50);
        assert_eq!(body.min_amount.unwrap().tokens, 150 + 100);
        // The recorder grants a rest of 400, of which 150 is in flight.
        book.apply(&key, amounts(50), &answer(true, 400), 12);
        assert_eq!(book.lease(&key).unwrap().rest.tokens, 250);
        book.settle(r, amounts(150));
        assert_eq!(book.lease(&key).unwrap().rest.tokens, 250);
        assert!(
            book.due_for_renewal(13).len() == 1,
            "150 consumed is unreported"
        );
    }

    #[test]
    fn a_denial_empties_the_rest_and_returns_carry_final_consumption() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        book.apply(&key, Amounts::default(), &answer(true, 100), 10);
        let r = book.try_reserve(&limits, amounts(100), 10).unwrap();
        book.settle(r, amounts(70));
        book.apply(&key, amounts(70), &answer(false, 0), 11);
        assert_eq!(book.lease(&key).unwrap().rest, Amounts::default());
        assert!(book.try_reserve(&limits, amounts(1), 11).is_err());
        let returns = book.returns();
        assert_eq!(returns.len(), 1);
        assert_eq!(returns[0].1.consumed.tokens, 70);
    }

    #[test]
    fn a_lease_the_recorder_forgot_is_asked_for_afresh_keeping_what_is_in_flight() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        book.apply(&key, Amounts::default(), &answer(true, 300), 10);
        let in_flight = book.try_reserve(&limits, amounts(100), 11).unwrap();
        let done = book.try_reserve(&limits, amounts(100), 11).unwrap();
        book.settle(done, amounts(100));
        assert!(matches!(
            book.refill_request(&q, &q.limits[0], amounts(100)),
            Refill::Renew { .. }
        ));
        // Days later the recorder answers 404 for it.
        book.forget(&key);
        let Refill::Grant(req) = book.refill_request(&q, &q.limits[0], amounts(100)) else {
            panic!("a forgotten lease is asked for afresh");
        };
        assert_eq!(
            req.min_amount.unwrap().tokens,
            100 + 100,
            "room for what is in flight"
        );
        assert!(
            book.try_reserve(&limits, amounts(1), 12).is_err(),
            "no rest left"
        );
        book.apply(&key, Amounts::default(), &answer(true, 500), 12);
        book.settle(in_flight, amounts(80));
        let lease = book.lease(&key).unwrap();
        assert_eq!(lease.consumed.tokens, 80, "reported on the new lease");
        assert_eq!(lease.rest.tokens, 500 - 80);
    }

    #[test]
    fn usage_without_a_lease_is_reported_on_the_first_renew_not_marked_reported_by_a_grant() {
        let q = quota(Enforcement::Enforce, 1000);
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        // Served unleased (failMode open while the recorder was away).
        let unleased = book.reserve_unleased(key.clone(), amounts(100));
        book.settle(vec![unleased], amounts(80));
        let grant = book.refill_request(&q, &q.limits[0], amounts(100));
        assert!(matches!(grant, Refill::Grant(_)));
        assert_eq!(
            grant.reported(),
            Amounts::default(),
            "a grant reports nothing"
        );
        book.apply(&key, grant.reported(), &answer(true, 500), 10);
        assert_eq!(book.lease(&key).unwrap().rest.tokens, 500 - 80);
        let Refill::Renew { body, .. } = book.refill_request(&q, &q.limits[0], amounts(100)) else {
            panic!("expected a renew");
        };
        assert_eq!(
            body.consumed.tokens, 80,
            "the unleased usage reaches the recorder"
        );
    }

    #[test]
    fn expired_leases_cover_nothing() {
        let q = quota(Enforcement::Enforce, 1000);
        let limits = [(&q, &q.limits[0])];
        let key = key_of(&q.id, &q.limits[0]);
        let mut book = LeaseBook::default();
        book.apply(&key, Amounts::default(), &answer(true, 500), 10);
        assert!(
            book.try_reserve(&limits, amounts(1), 10 + LEASE_TTL_SECONDS - 2)
                .is_ok()
        );
        assert!(
            book.try_reserve(&limits, amounts(1), 10 + LEASE_TTL_SECONDS)
                .is_err()
        );
    }
}

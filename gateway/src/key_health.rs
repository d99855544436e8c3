//! Provider key health. A key the provider refuses (401 or 403) leaves
//! routing; a probe (`GET /v1/models` with that key) after a backoff brings it
//! back when the provider accepts it again. Requests route over the healthy
//! keys only, so one revoked key among N no longer fails 1/N of requests;
//! receipts record the index into, and the size of, that healthy set, which
//! keeps the routing formula recomputable.
//!
//! [`KeyHealth`] is the pure bookkeeping behind one mutex; the probe loop in
//! [`probe_due_keys`] is the thin I/O shell. Health is memory only: a
//! restart starts every key healthy, and a key that changes value in its
//! Secret starts healthy again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

/// Wait before the first probe of a refused key.
pub const FIRST_PROBE_AFTER: Duration = Duration::from_secs(30);
/// The longest wait between probes (the wait doubles per refusal).
pub const MAX_PROBE_AFTER: Duration = Duration::from_secs(600);

/// What the gateway knows of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Healthy,
    /// Back in routing after a probe; a refusal soon after resumes the
    /// backoff where it was (a key refused for some models only would
    /// otherwise fail a request every 30 seconds).
    Recovered {
        at_ms: u64,
        refusals: u32,
    },
    /// Refused by the provider; out of routing until a probe succeeds.
    Unhealthy {
        since_ms: u64,
        /// When the next probe is due.
        probe_at_ms: u64,
        /// Refusals in a row (the backoff's exponent).
        refusals: u32,
        /// The HTTP status of the last refusal.
        status: u16,
        /// A probe is in flight.
        probing: bool,
    },
}

/// The health of every key, by provider name and key index (the order of
/// the provider's `credentialsRef.keys`). Absent means healthy.
#[derive(Debug, Default)]
pub struct KeyHealth {
    states: Mutex<HashMap<(String, u32), KeyState>>,
    /// How many keys are unhealthy: the request path skips the lock at zero.
    unhealthy: AtomicUsize,
}

/// The keys a request may be routed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutableKeys {
    /// Keys `0..n`.
    All(u32),
    /// These key indices, in order.
    Healthy(Vec<u32>),
}

impl RoutableKeys {
    pub fn len(&self) -> usize {
        match self {
            Self::All(n) => *n as usize,
            Self::Healthy(keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key index at `position`.
    pub fn get(&self, position: usize) -> Option<u32> {
        match self {
            Self::All(n) => u32::try_from(position).ok().filter(|p| p < n),
            Self::Healthy(keys) => keys.get(position).copied(),
        }
    }

    /// Every key index, in order.
    pub fn to_vec(&self) -> Vec<u32> {
        (0..self.len()).filter_map(|p| self.get(p)).collect()
    }
}

/// One key's state, as the admin endpoint, `doctor` and the recorder's
/// report show it (never the key).
pub use tollgate_wire::key_health::{KeyHealthState, KeyStatus};

/// Whether the provider's answer says the key itself is refused.
pub fn refuses_key(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

fn backoff(refusals: u32) -> u64 {
    let first = FIRST_PROBE_AFTER.as_millis() as u64;
    let max = MAX_PROBE_AFTER.as_millis() as u64;
    first
        .saturating_mul(1u64 << refusals.saturating_sub(1).min(20))
        .min(max)
}

impl KeyHealth {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), KeyState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recount(&self, states: &HashMap<(String, u32), KeyState>) {
        let n = states
            .values()
            .filter(|s| matches!(s, KeyState::Unhealthy { .. }))
            .count();
        self.unhealthy.store(n, Ordering::Relaxed);
    }

    /// The key indices of `provider` to route over, in key order: the
    /// healthy ones of `0..key_count`, or all of them when none is (then
    /// the provider's own refusal is the honest answer). With every key
    /// healthy (the usual case) this takes no lock and allocates nothing.
    pub fn routable(&self, provider: &str, key_count: u32) -> RoutableKeys {
        if self.unhealthy.load(Ordering::Relaxed) == 0 {
            return RoutableKeys::All(key_count);
        }
        let states = self.lock();
        let healthy: Vec<u32> = (0..key_count)
            .filter(|i| {
                !matches!(
                    states.get(&(provider.to_string(), *i)),
                    Some(KeyState::Unhealthy { .. })
                )
            })
            .collect();
        if healthy.is_empty() {
            RoutableKeys::All(key_count)
        } else {
            RoutableKeys::Healthy(healthy)
        }
    }

    /// Takes note of the provider's answer to a request made with key
    /// `index`. Returns the new state when the key just became unhealthy.
    pub fn answered(
        &self,
        provider: &str,
        index: u32,
        status: StatusCode,
        now_ms: u64,
    ) -> Option<KeyState> {
        if !refuses_key(status) {
            return None;
        }
        let mut states = self.lock();
        let key = (provider.to_string(), index);
        let refusals = match states.get(&key) {
            // Already out: a request that was routed before it went out.
            Some(KeyState::Unhealthy { .. }) => return None,
            Some(KeyState::Recovered { at_ms, refusals })
                if now_ms.saturating_sub(*at_ms) < MAX_PROBE_AFTER.as_millis() as u64 =>
            {
                refusals + 1
            }
            _ => 1,
        };
        let state = KeyState::Unhealthy {
            since_ms: now_ms,
            probe_at_ms: now_ms.saturating_add(backoff(refusals)),
            refusals,
            status: status.as_u16(),
            probing: false,
        };
        states.insert(key, state);
        self.recount(&states);
        Some(state)
    }

    /// The unhealthy keys whose probe is due, each marked as probing so one
    /// probe at most is in flight per key.
    pub fn due_probes(&self, now_ms: u64) -> Vec<(String, u32)> {
        let mut states = self.lock();
        let mut due = Vec::new();
        for (key, state) in states.iter_mut() {
            if let KeyState::Unhealthy {
                probe_at_ms,
                probing,
                ..
            } = state
                && !*probing
                && *probe_at_ms <= now_ms
            {
                *probing = true;
                due.push(key.clone());
            }
        }
        due.sort();
        due
    }

    /// Takes note of a probe's answer (`None`: no answer). Success brings the
    /// key back; a refusal doubles the wait; anything else says nothing about
    /// the key and keeps the wait.
    pub fn probed(&self, provider: &str, index: u32, status: Option<StatusCode>, now_ms: u64) {
        let mut states = self.lock();
        let key = (provider.to_string(), index);
        let Some(KeyState::Unhealthy {
            since_ms,
            refusals,
            status: last,
            ..
        }) = states.get(&key).copied()
        else {
            return;
        };
        match status {
            Some(s) if s.is_success() => {
                states.insert(
                    key,
                    KeyState::Recovered {
                        at_ms: now_ms,
                        refusals,
                    },
                );
            }
            Some(s) if refuses_key(s) => {
                states.insert(
                    key,
                    KeyState::Unhealthy {
                        since_ms,
                        probe_at_ms: now_ms.saturating_add(backoff(refusals + 1)),
                        refusals: refusals + 1,
                        status: s.as_u16(),
                        probing: false,
                    },
                );
            }
            _ => {
                states.insert(
                    key,
                    KeyState::Unhealthy {
                        since_ms,
                        probe_at_ms: now_ms.saturating_add(backoff(refusals)),
                        refusals,
                        status: last,
                        probing: false,
                    },
                );
            }
        }
        self.recount(&states);
    }

    /// Keeps the states of keys whose provider and index still hold the same
    /// key in the new credentials (`same`); forgets the rest.
    pub fn carry_over(&self, from: &KeyHealth, same: impl Fn(&str, u32) -> bool) {
        let old = from.lock().clone();
        let mut states = self.lock();
        for ((provider, index), state) in old {
            if same(&provider, index) {
                let state = match state {
                    KeyState::Unhealthy {
                        since_ms,
                        probe_at_ms,
                        refusals,
                        status,
                        ..
                    } => KeyState::Unhealthy {
                        since_ms,
                        probe_at_ms,
                        refusals,
                        status,
                        probing: false,
                    },
                    healthy => healthy,
                };
                states.insert((provider, index), state);
            }
        }
        self.recount(&states);
    }

    /// Every key of `key_counts` (provider, count), in order.
    pub fn snapshot(&self, key_counts: &[(String, u32)]) -> Vec<KeyStatus> {
        let states = self.lock();
        key_counts
            .iter()
            .flat_map(|(provider, count)| (0..*count).map(move |i| (provider, i)))
            .map(
                |(provider, index)| match states.get(&(provider.clone(), index)) {
                    Some(KeyState::Unhealthy {
                        since_ms,
                        probe_at_ms,
                        status,
                        ..
                    }) => KeyStatus {
                        provider: provider.clone(),
                        index,
                        state: KeyHealthState::Unhealthy,
                        since_ms: Some(*since_ms),
                        next_probe_ms: Some(*probe_at_ms),
                        last_status: Some(*status),
                    },
                    _ => KeyStatus {
                        provider: provider.clone(),
                        index,
                        state: KeyHealthState::Healthy,
                        since_ms: None,
                        next_probe_ms: None,
                        last_status: None,
                    },
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000_000;

    #[test]
    fn a_refused_key_leaves_routing_until_a_probe_succeeds() {
        let h = KeyHealth::new();
        assert_eq!(h.routable("p", 3).to_vec(), [0, 1, 2]);
        assert_eq!(h.answered("p", 1, StatusCode::TOO_MANY_REQUESTS, T), None);
        assert_eq!(h.answered("p", 1, StatusCode::OK, T), None);
        assert!(h.answered("p", 1, StatusCode::UNAUTHORIZED, T).is_some());
        assert_eq!(
            h.answered("p", 1, StatusCode::FORBIDDEN, T),
            None,
            "already out"
        );
        assert_eq!(h.routable("p", 3).to_vec(), [0, 2]);
        assert_eq!(h.routable("other", 3).to_vec(), [0, 1, 2], "per provider");

        // No probe before the backoff; one at a time after it.
        assert!(h.due_probes(T + 29_999).is_empty());
        assert_eq!(h.due_probes(T + 30_000), [("p".to_string(), 1)]);
        assert!(h.due_probes(T + 30_000).is_empty(), "one probe in flight");

        // Refused again: the wait doubles.
        h.probed("p", 1, Some(StatusCode::UNAUTHORIZED), T + 30_000);
        assert!(h.due_probes(T + 30_000 + 59_999).is_empty());
        assert_eq!(h.due_probes(T + 90_000).len(), 1);
        // No answer: the wait stays.
        h.probed("p", 1, None, T + 90_000);
        assert!(h.due_probes(T + 90_000 + 59_999).is_empty());
        assert_eq!(h.due_probes(T + 150_000).len(), 1);
        // Accepted: back in routing.
        h.probed("p", 1, Some(StatusCode::OK), T + 150_000);
        assert_eq!(h.routable("p", 3).to_vec(), [0, 1, 2]);
        assert_eq!(
            h.snapshot(&[("p".into(), 3)])[1].state,
            KeyHealthState::Healthy
        );
    }

    #[test]
    fn a_key_refused_again_soon_after_recovering_waits_longer() {
        let h = KeyHealth::new();
        h.answered("p", 0, StatusCode::FORBIDDEN, T);
        h.due_probes(T + 30_000);
        h.probed("p", 0, Some(StatusCode::OK), T + 30_000);
        assert_eq!(h.routable("p", 1).to_vec(), [0]);
        // Refused again a minute later: the wait is the second step's.
        h.answered("p", 0, StatusCode::FORBIDDEN, T + 90_000);
        assert!(h.due_probes(T + 90_000 + 59_999).is_empty());
        assert_eq!(h.due_probes(T + 150_000).len(), 1);
        // Long after a recovery, a refusal starts over.
        h.probed("p", 0, Some(StatusCode::OK), T + 150_000);
        h.answered("p", 0, StatusCode::UNAUTHORIZED, T + 150_000 + 600_000);
        assert_eq!(h.due_probes(T + 750_000 + 30_000).len(), 1);
    }

    #[test]
    fn with_every_key_refused_all_are_tried_and_waits_are_capped() {
        let h = KeyHealth::new();
        h.answered("p", 0, StatusCode::UNAUTHORIZED, T);
        h.answered("p", 1, StatusCode::UNAUTHORIZED, T);
        assert_eq!(h.routable("p", 2).to_vec(), [0, 1]);
        assert_eq!(backoff(1), 30_000);
        assert_eq!(backoff(2), 60_000);
        assert_eq!(backoff(40), 600_000);
        let snapshot = h.snapshot(&[("p".into(), 2)]);
        assert_eq!(
            snapshot[0],
            KeyStatus {
                provider: "p".into(),
                index: 0,
                state: KeyHealthState::Unhealthy,
                since_ms: Some(T),
                next_probe_ms: Some(T + 30_000),
                last_status: Some(401),
            }
        );
    }

    #[test]
    fn states_carry_over_only_for_the_same_key() {
        let old = KeyHealth::new();
        old.answered("p", 0, StatusCode::UNAUTHORIZED, T);
        old.answered("p", 1, StatusCode::UNAUTHORIZED, T);
        old.due_probes(T + 30_000);
        let new = KeyHealth::new();
        new.carry_over(&old, |_, index| index == 0);
        assert_eq!(
            new.routable("p", 2).to_vec(),
            [1],
            "key 0 unchanged, key 1 replaced"
        );
        assert_eq!(
            new.due_probes(T + 30_000).len(),
            1,
            "no probe left marked in flight"
        );
    }
}

//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Only the controllers run on the leader; the webhooks and the control
//! endpoint are served by every replica. The pure core ([`decide`],
//! [`next_spec`], [`released_spec`]) says what to do with a Lease; the shell
//! ([`LeaderElector`]) reads the Lease and writes it back with optimistic
//! concurrency (a replace carrying the `resourceVersion` it read, never a
//! blind write), so two candidates racing for one Lease cannot both win.
//!
//! Expiry follows client-go: a candidate measures how long the Lease record
//! has stayed *unchanged on its own monotonic clock*, so clock skew between
//! nodes cannot make two replicas leaders. The cost is that a fresh candidate
//! waits one lease duration before taking over a Lease whose holder is gone
//! (unless that holder released it on shutdown, which clears the holder).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease the operator's replicas campaign for.
pub const LEASE_NAME: &str = "tollgate-operator-leader";
/// How long a Lease stays valid without renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it steps down.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often candidates retry and the leader renews.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Leader election parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator namespace, or
    /// `--leader-election-namespace`).
    pub namespace: String,
    /// Name of the Lease, [`LEASE_NAME`].
    pub name: String,
    /// This replica's identity, written to `holderIdentity`: the pod name in a
    /// cluster, `--identity` outside.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader tries to renew before giving up leadership. Shorter
    /// than `lease_duration`, so a leader stops acting before others may take over.
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with the default durations (15 s, 10 s, 2 s).
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: LEASE_NAME.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks `retry_period < renew_deadline < lease_duration`, whole seconds
    /// for the lease duration (the Lease stores seconds), and a non-empty identity.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |why: String| Err(LeaderError::InvalidSettings(why));
        if self.identity.is_empty() {
            return bad("the leader election identity is empty".into());
        }
        if self.namespace.is_empty() || self.name.is_empty() {
            return bad("the Lease namespace and name must be set".into());
        }
        if self.retry_period.is_zero() {
            return bad("the retry period must be positive".into());
        }
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() == 0 {
            return bad(format!(
                "the lease duration {:?} must be a whole number of seconds (at least 1 s)",
                self.lease_duration
            ));
        }
        if i32::try_from(self.lease_duration.as_secs()).is_err() {
            return bad("the lease duration is too long".into());
        }
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return bad(format!(
                "need retry period ({:?}) < renew deadline ({:?}) < lease duration ({:?})",
                self.retry_period, self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// Why the elector stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The settings cannot work.
    #[error("invalid leader election settings: {0}")]
    InvalidSettings(String),
    /// The work run while leading failed.
    #[error("the controllers failed while leading: {0:#}")]
    Leading(anyhow::Error),
}

/// What a Lease says, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// `holderIdentity`; none or empty means nobody holds it.
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub lease_duration: Option<Duration>,
    /// `acquireTime`.
    pub acquire_time: Option<Timestamp>,
    /// `renewTime`.
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions`.
    pub transitions: i32,
}

impl LeaseRecord {
    /// Reads the parts of a Lease spec the election uses.
    pub fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            lease_duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate should do with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// It is mine: renew it.
    Renew,
    /// Someone else holds it; it expires in `expires_in` unless renewed.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// Decides from the Lease record (none: no Lease exists), my identity, and how
/// long the record has stayed unchanged on my monotonic clock.
pub fn decide(
    record: Option<&LeaseRecord>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(record) = record else {
        return Decision::Acquire;
    };
    match record.holder.as_deref() {
        None => Decision::Acquire,
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) => {
            let duration = record.lease_duration.unwrap_or(default_duration);
            if unchanged_for >= duration {
                Decision::Acquire
            } else {
                Decision::Wait {
                    holder: holder.to_string(),
                    expires_in: duration - unchanged_for,
                }
            }
        }
    }
}

/// The Lease spec after `identity` acquires or renews it at `now`.
pub fn next_spec(
    record: Option<&LeaseRecord>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> LeaseSpec {
    let seconds = i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX);
    let previous = record.cloned().unwrap_or_default();
    let renewing = previous.holder.as_deref() == Some(identity);
    let taken_from_someone = previous.holder.is_some() && !renewing;
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(if renewing {
            previous.acquire_time.unwrap_or(now)
        } else {
            now
        })),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taken_from_someone {
            previous.transitions.saturating_add(1)
        } else {
            previous.transitions
        }),
        ..LeaseSpec::default()
    }
}

/// The Lease spec after its holder releases it at `now`: no holder, so the
/// next candidate takes it at once instead of waiting for expiry.
pub fn released_spec(record: &LeaseRecord, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: record
            .lease_duration
            .and_then(|d| i32::try_from(d.as_secs()).ok()),
        acquire_time: record.acquire_time.map(MicroTime),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(record.transitions),
        ..LeaseSpec::default()
    }
}

/// Campaigns for the Lease and runs work while holding it.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    /// The last record seen and when (my clock) it was first seen.
    observed: Option<(LeaseRecord, Instant)>,
}

enum Outcome {
    Finished(anyhow::Result<()>),
    Lost,
    Shutdown,
}

impl LeaderElector {
    /// An elector for the Lease `settings.namespace/settings.name`.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            leading: watch::Sender::new(false),
            observed: None,
        }
    }

    /// Whether this replica currently leads, for readiness or metrics.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns until `shutdown` resolves. Each time this replica becomes
    /// leader it calls `on_leading` and polls the future it returns; losing
    /// the Lease drops (cancels) that future and the elector campaigns again.
    /// If the future ends, or on shutdown, the Lease is released and `run`
    /// returns: `Ok` if the work ended well, [`LeaderError::Leading`] if not.
    pub async fn run<F, Fut>(
        mut self,
        mut on_leading: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LeaderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        self.settings.validate()?;
        tokio::pin!(shutdown);
        loop {
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: reading or writing the Lease failed")
                    }
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(self.settings.retry_period) => {}
                }
            }
            tracing::info!(
                identity = %self.settings.identity,
                lease = %format!("{}/{}", self.settings.namespace, self.settings.name),
                "leader election: became leader"
            );
            self.leading.send_replace(true);
            let outcome = {
                let work = on_leading();
                tokio::pin!(work);
                tokio::select! {
                    result = &mut work => Outcome::Finished(result),
                    () = self.keep_renewing() => Outcome::Lost,
                    () = &mut shutdown => Outcome::Shutdown,
                }
            };
            self.leading.send_replace(false);
            match outcome {
                Outcome::Lost => {
                    tracing::warn!(identity = %self.settings.identity, "leader election: lost the Lease; controllers stopped, campaigning again");
                }
                Outcome::Shutdown => {
                    self.release().await;
                    return Ok(());
                }
                Outcome::Finished(result) => {
                    self.release().await;
                    return result.map_err(LeaderError::Leading);
                }
            }
        }
    }

    /// Renews every retry period; returns once the Lease is lost: someone else
    /// holds it, or no renewal succeeded for the renew deadline.
    async fn keep_renewing(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let left = self
                .settings
                .renew_deadline
                .saturating_sub(last_renewal.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader election: renewing the Lease failed")
                }
                Err(_) => {}
            }
            if last_renewal.elapsed() >= self.settings.renew_deadline {
                return;
            }
        }
    }

    /// One round: read the Lease, then create, take or renew it if the
    /// decision says so. `Ok(true)`: I hold it now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let s = &self.settings;
        let Some(lease) = self.api.get_opt(&s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(next_spec(
                    None,
                    &s.identity,
                    Timestamp::now(),
                    s.lease_duration,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(LeaseRecord::from_spec(created.spec.as_ref()));
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        let unchanged_for = self.observe(record.clone());
        match decide(
            Some(&record),
            &self.settings.identity,
            unchanged_for,
            self.settings.lease_duration,
        ) {
            Decision::Wait { .. } => Ok(false),
            Decision::Acquire | Decision::Renew => {
                let mut next = lease;
                next.spec = Some(next_spec(
                    Some(&record),
                    &self.settings.identity,
                    Timestamp::now(),
                    self.settings.lease_duration,
                ));
                // `next` carries the resourceVersion read above: a concurrent
                // writer makes this fail with 409 instead of being overwritten.
                match self
                    .api
                    .replace(&self.settings.name, &PostParams::default(), &next)
                    .await
                {
                    Ok(written) => {
                        self.observe(LeaseRecord::from_spec(written.spec.as_ref()));
                        Ok(true)
                    }
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Records `record` as seen now unless it is the one seen before; returns
    /// how long it has stayed unchanged.
    fn observe(&mut self, record: LeaseRecord) -> Duration {
        match &self.observed {
            Some((seen, at)) if *seen == record => at.elapsed(),
            _ => {
                self.observed = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Gives the Lease up if I still hold it, so a standby takes over at once.
    async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(());
            };
            let record = LeaseRecord::from_spec(lease.spec.as_ref());
            if record.holder.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(released_spec(&record, Timestamp::now()));
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!("leader election: released the Lease"),
            Err(e) => tracing::warn!(error = %e, "leader election: releasing the Lease failed"),
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            lease_duration: Some(D),
            acquire_time: Some(Timestamp::UNIX_EPOCH),
            renew_time: Some(Timestamp::UNIX_EPOCH),
            transitions: 3,
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "me", Duration::ZERO, D), Decision::Acquire);
        let released = LeaseRecord {
            holder: None,
            ..held_by("x")
        };
        assert_eq!(
            decide(Some(&released), "me", Duration::ZERO, D),
            Decision::Acquire
        );
    }

    #[test]
    fn my_own_lease_is_renewed_even_when_stale() {
        assert_eq!(
            decide(Some(&held_by("me")), "me", Duration::from_secs(100), D),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_is_respected_until_the_record_stays_unchanged_for_its_duration() {
        let other = held_by("other");
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(10), D),
            Decision::Wait {
                holder: "other".into(),
                expires_in: Duration::from_secs(5)
            }
        );
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(15), D),
            Decision::Acquire
        );
    }

    #[test]
    fn the_lease_own_duration_wins_over_mine() {
        let long = LeaseRecord {
            lease_duration: Some(Duration::from_secs(60)),
            ..held_by("other")
        };
        assert!(matches!(
            decide(Some(&long), "me", Duration::from_secs(30), D),
            Decision::Wait { .. }
        ));
        let unknown = LeaseRecord {
            lease_duration: None,
            ..held_by("other")
        };
        assert_eq!(
            decide(Some(&unknown), "me", Duration::from_secs(15), D),
            Decision::Acquire
        );
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = next_spec(Some(&held_by("me")), "me", now, D);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn taking_over_counts_a_transition_and_restarts_acquire_time() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = next_spec(Some(&held_by("other")), "me", now, D);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(4));
        // A fresh Lease, or one released by its holder, is no transition.
        assert_eq!(next_spec(None, "me", now, D).lease_transitions, Some(0));
        let released = LeaseRecord {
            holder: None,
            ..held_by("other")
        };
        assert_eq!(
            next_spec(Some(&released), "me", now, D).lease_transitions,
            Some(3)
        );
    }

    #[test]
    fn releasing_clears_the_holder_only() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = released_spec(&held_by("me"), now);
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let record = LeaseRecord::from_spec(Some(&spec));
        assert_eq!(
            decide(Some(&record), "next", Duration::ZERO, D),
            Decision::Acquire
        );
    }

    #[test]
    fn an_empty_holder_reads_as_none() {
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            ..LeaseSpec::default()
        };
        assert_eq!(LeaseRecord::from_spec(Some(&spec)).holder, None);
        assert_eq!(LeaseRecord::from_spec(None), LeaseRecord::default());
    }

    #[test]
    fn settings_must_order_the_durations() {
        let ok = LeaseSettings::new("tollgate-system", "pod-a");
        assert!(ok.validate().is_ok());
        let bad_order = LeaseSettings {
            renew_deadline: Duration::from_secs(20),
            ..ok.clone()
        };
        assert!(bad_order.validate().is_err());
        let fractional = LeaseSettings {
            lease_duration: Duration::from_millis(15_500),
            ..ok.clone()
        };
        assert!(fractional.validate().is_err());
        let anonymous = LeaseSettings {
            identity: String::new(),
            ..ok
        };
        assert!(anonymous.validate().is_err());
    }
}

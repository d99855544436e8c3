//! Controllers for the six kinds: status conditions, observedGeneration,
//! Events, and quota usage from the recorder. They run on the elected leader.
//!
//! Design: one index and full passes, not one kube-runtime `Controller` per
//! kind. They read the process's shared cache ([`crate::cache`]): every kind,
//! Namespaces (labels) and the operator namespace's Secrets (key names only
//! reach the controllers). Any change, or the [`reconcile::RESYNC_PERIOD`]
//! tick, runs a pass: snapshot a
//! [`world::World`], compute each object's status with a pure `status_for`
//! function, and server-side apply only the statuses that differ. Because a
//! pass looks at everything, a change to a referenced object (a Secret, a
//! provider, a TrustAnchor, a namespace label) re-evaluates whatever refers
//! to it without a reverse index.
//!
//! - [`conditions`]: merging conditions, `Ready`, what deserves an Event.
//! - [`provider`], [`policy`], [`quota`], [`trust`], [`recorder_config`]: the
//!   pure status of each kind.
//! - [`usage`]: quota usage from the recorder's `GET /v1/usage`.
//! - [`prune`]: owned ConfigMaps in namespaces no longer governed.
//! - [`status`]: what the one status writer needs of each kind.
//! - [`reconcile`]: the passes, the writes, and the owned ConfigMaps (applied
//!   and pruned by the leader alone).
//!
//! No finalizers: nothing outside an object needs cleaning up when it is
//! deleted (statuses and Events go with it; compiled configs are recomputed).

use std::time::Duration;

pub mod conditions;
pub mod policy;
pub mod provider;
pub mod prune;
pub mod quota;
pub mod reconcile;
pub mod recorder_config;
pub mod status;
pub mod trust;
pub mod usage;
pub mod world;

/// The field manager of every status write, and the Event reporter.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// Settings of the controllers.
///
/// Two knobs are read from the environment until they become flags:
/// `TOLLGATE_RECORDER_TOKEN_FILE` (a token for the recorder, audience
/// `tollgate.dev/recorder`; default: a TokenRequest for the operator's own
/// ServiceAccount in a cluster) and `TOLLGATE_RECORDER_CA_FILE` (the CA of the
/// recorder's serving certificate; default: the public roots).
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub operator_namespace: String,
    /// The recorder's base URL, for quota status; none leaves quota usage unknown.
    pub recorder_url: Option<String>,
    /// How often quota status is refreshed from the recorder.
    pub quota_refresh: Duration,
    /// When the receipt CA rotates (the leader runs the rotation).
    pub receipt_ca_rotation: crate::receipt_ca::RotationPolicy,
}

pub use reconcile::ControlCaPublication;

/// Runs every controller over the shared `cache` until one fails. Dropping
/// the returned future (leadership lost) stops every controller task.
pub async fn run(
    client: kube::Client,
    settings: ControllerSettings,
    cache: crate::cache::ClusterCache,
    failures: crate::failures::Failures,
    control_ca: ControlCaPublication,
) -> anyhow::Result<()> {
    reconcile::run(client, settings, cache, failures, control_ca).await
}

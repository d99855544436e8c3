//! The cluster receipt CA: the Ed25519 key that signs gateway key
//! certificates, and the `TrustAnchor` that publishes its public half.
//!
//! The key lives in the Secret `tollgate-receipt-ca` of the operator
//! namespace (key `ed25519.seed`, 64 hex characters), created if absent like
//! every random secret of the operator ([`crate::cluster_secrets`]).
//!
//! Rotation with overlap ([`CaState::step`], run by the Lease holder in
//! [`keep_rotated`]): once the current key has signed for the rotation
//! period, a next key is added to the Secret; the TrustAnchor
//! `tollgate-receipt-ca` is written with it (server-side apply) before the
//! Secret marks it published; it signs from `publish_lead` later, so recorders
//! and auditors trust it before any certificate names it; then it becomes the
//! current key and the old one is retired with a `notAfter` past the last
//! certificate it can have issued (activation + the longest certificate +
//! a margin). Retired keys stay in the anchor: old bundles verify against
//! them. Every replica's control endpoint signs with
//! [`CaState::signing_key`] of the Secret as its cache holds it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tollgate_crds::trust::{KeyRole, KeyState, ReceiptKey, TrustAnchor, TrustAnchorSpec};
use tollgate_evidence::{KeyId, PublicKey, SigningKey, Timestamp};

/// The Secret and the TrustAnchor share this name.
pub const RECEIPT_CA_NAME: &str = "tollgate-receipt-ca";
/// The Secret key holding the hex seed.
pub const SEED_KEY: &str = "ed25519.seed";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// Why the receipt CA could not be loaded or published.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptCaError {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {RECEIPT_CA_NAME} key {SEED_KEY} must be 64 lowercase hex characters")]
    BadSeed,
    #[error("Secret {RECEIPT_CA_NAME}: {0}")]
    BadState(&'static str),
    #[error(transparent)]
    Secret(#[from] crate::cluster_secrets::ClusterSecretError),
}

/// The loaded receipt CA key and when it came into use.
#[derive(Clone)]
pub struct ReceiptCa {
    pub key: SigningKey,
    /// RFC 3339: when it started signing (the Secret's creation time for the
    /// first key).
    pub not_before: String,
}

impl std::fmt::Debug for ReceiptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptCa")
            .field("key_id", &self.key_id().to_string())
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

impl ReceiptCa {
    pub fn key_id(&self) -> KeyId {
        KeyId::of_signing_key(&self.key)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::of_signing_key(&self.key)
    }
}

/// Parses the hex seed.
pub fn parse_seed(value: &[u8]) -> Result<SigningKey, ReceiptCaError> {
    let text = std::str::from_utf8(value).map_err(|_| ReceiptCaError::BadSeed)?;
    let text = text.trim();
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReceiptCaError::BadSeed);
    }
    let bytes: [u8; 32] = hex::decode(text)
        .map_err(|_| ReceiptCaError::BadSeed)?
        .try_into()
        .map_err(|_| ReceiptCaError::BadSeed)?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Loads the receipt CA key, creating it if absent.
pub async fn load_or_create(secrets: &Api<Secret>) -> Result<CaState, ReceiptCaError> {
    let secret = crate::cluster_secrets::load_or_create(secrets, RECEIPT_CA_NAME, SEED_KEY).await?;
    CaState::from_secret(&secret)
}

/// Secret keys beside [`SEED_KEY`]: when the current key started signing
/// (absent for the first key: the Secret's creation time), the next key and
/// its activation, and the keys retired so far.
const NOT_BEFORE_KEY: &str = "ed25519.not-before";
const NEXT_SEED_KEY: &str = "next.ed25519.seed";
const NEXT_NOT_BEFORE_KEY: &str = "next.not-before";
const NEXT_PUBLISHED_KEY: &str = "next.published";
const RETIRED_KEY: &str = "retired.json";

/// Slack added to a retired key's `notAfter` for clock skew between the
/// replica that signed and the recorder that checks.
pub const RETIREMENT_MARGIN_MILLIS: u64 = 5 * 60_000;

/// A key that no longer signs, kept in the TrustAnchor until everything it
/// certified has expired (and after: old bundles verify against it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredKey {
    pub public_key: String,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

/// The next key: published in the TrustAnchor first, signing from
/// `not_before_ms` once `published`.
#[derive(Clone)]
pub struct NextKey {
    pub key: SigningKey,
    pub not_before_ms: u64,
    /// The TrustAnchor carries it; only then may it sign.
    pub published: bool,
}

impl std::fmt::Debug for NextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextKey")
            .field("key_id", &KeyId::of_signing_key(&self.key).to_string())
            .field("not_before_ms", &self.not_before_ms)
            .field("published", &self.published)
            .finish()
    }
}

/// The receipt CA as the Secret holds it: a pure value; [`CaState::step`]
/// is the rotation policy.
#[derive(Clone)]
pub struct CaState {
    pub current: SigningKey,
    pub current_not_before_ms: u64,
    pub next: Option<NextKey>,
    pub retired: Vec<RetiredKey>,
}

impl std::fmt::Debug for CaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only, never seeds.
        f.debug_struct("CaState")
            .field("current", &KeyId::of_signing_key(&self.current).to_string())
            .field("current_not_before_ms", &self.current_not_before_ms)
            .field("next", &self.next)
            .field("retired", &self.retired.len())
            .finish()
    }
}

/// When to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Start a rotation once the current key has signed this long; `None`
    /// never rotates.
    pub rotate_after_ms: Option<u64>,
    /// How long the next key is published in the TrustAnchor before it signs,
    /// so recorders and auditors trust it before any certificate uses it.
    pub publish_lead_ms: u64,
    /// The longest key certificate the control endpoint issues.
    pub max_certificate_ms: u64,
}

/// One rotation step the leader takes.
#[derive(Clone, Debug)]
pub enum RotationStep {
    /// Add a next key (not yet published); then publish it.
    Propose(CaState),
    /// Publish the TrustAnchor with the next key, then mark it published
    /// (its activation at least `publish_lead` after that).
    Publish(CaState),
    /// The next key signs now: it becomes current, the old one is retired
    /// with a `notAfter` past every certificate it can have issued.
    Promote(CaState),
}

fn millis_rfc3339(ms: u64) -> String {
    Timestamp::from_unix_millis(ms).map_or_else(
        |_| "1970-01-01T00:00:00.000Z".to_owned(),
        Timestamp::to_canonical_string,
    )
}

fn parse_millis(value: &[u8]) -> Result<u64, ReceiptCaError> {
    let text =
        std::str::from_utf8(value).map_err(|_| ReceiptCaError::BadState("a time is not UTF-8"))?;
    Timestamp::parse_canonical(text.trim())
        .map(Timestamp::unix_millis)
        .map_err(|_| ReceiptCaError::BadState("a time is not a canonical timestamp"))
}

impl CaState {
    /// Reads the Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self, ReceiptCaError> {
        let data = secret.data.clone().unwrap_or_default();
        let get = |key: &str| data.get(key).map(|v| v.0.as_slice());
        let current = parse_seed(get(SEED_KEY).ok_or(ReceiptCaError::BadSeed)?)?;
        let current_not_before_ms = match get(NOT_BEFORE_KEY) {
            Some(value) => parse_millis(value)?,
            // The first key: it signs from the Secret's creation.
            None => secret
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| Timestamp::parse_rfc3339(&t.0.to_string()).ok())
                .map(Timestamp::unix_millis)
                .ok_or(ReceiptCaError::BadState(
                    "no ed25519.not-before and no readable creationTimestamp",
                ))?,
        };
        let next = match get(NEXT_SEED_KEY) {
            None => None,
            Some(seed) => Some(NextKey {
                key: parse_seed(seed)?,
                not_before_ms: parse_millis(get(NEXT_NOT_BEFORE_KEY).ok_or(
                    ReceiptCaError::BadState("the next key has no activation time"),
                )?)?,
                published: get(NEXT_PUBLISHED_KEY) == Some(b"true"),
            }),
        };
        let retired = match get(RETIRED_KEY) {
            None => Vec::new(),
            Some(json) => serde_json::from_slice(json)
                .map_err(|_| ReceiptCaError::BadState("retired.json is not a list of keys"))?,
        };
        Ok(Self {
            current,
            current_not_before_ms,
            next,
            retired,
        })
    }

    /// The Secret data for this state.
    pub fn secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: Vec<u8>| {
            data.insert(key.to_owned(), ByteString(value));
        };
        put(SEED_KEY, hex::encode(self.current.to_bytes()).into_bytes());
        put(
            NOT_BEFORE_KEY,
            millis_rfc3339(self.current_not_before_ms).into_bytes(),
        );
        if let Some(next) = &self.next {
            put(NEXT_SEED_KEY, hex::encode(next.key.to_bytes()).into_bytes());
            put(
                NEXT_NOT_BEFORE_KEY,
                millis_rfc3339(next.not_before_ms).into_bytes(),
            );
            put(NEXT_PUBLISHED_KEY, next.published.to_string().into_bytes());
        }
        if !self.retired.is_empty() {
            put(
                RETIRED_KEY,
                serde_json::to_vec(&self.retired).unwrap_or_default(),
            );
        }
        data
    }

    /// The key that signs certificates at `now_ms`: the next one once it is
    /// published and its time has come, else the current one.
    pub fn signing_key(&self, now_ms: u64) -> &SigningKey {
        match &self.next {
            Some(next) if next.published && now_ms >= next.not_before_ms => &next.key,
            _ => &self.current,
        }
    }

    /// The TrustAnchor's keys: the current one, the next one from its
    /// activation, and retired ones with their `notAfter`.
    pub fn receipt_keys(&self) -> Vec<ReceiptKey> {
        let entry =
            |public: PublicKey, not_before: u64, not_after: Option<u64>, state| ReceiptKey {
                key_id: public.key_id().to_string(),
                public_key: public.to_base64(),
                role: KeyRole::ReceiptCA,
                not_before: millis_rfc3339(not_before),
                not_after: not_after.map(millis_rfc3339),
                state,
            };
        let mut keys = vec![entry(
            PublicKey::of_signing_key(&self.current),
            self.current_not_before_ms,
            None,
            KeyState::Active,
        )];
        if let Some(next) = &self.next {
            keys.push(entry(
                PublicKey::of_signing_key(&next.key),
                next.not_before_ms,
                None,
                KeyState::Active,
            ));
        }
        keys.extend(self.retired.iter().filter_map(|r| {
            let public = PublicKey::from_base64(&r.public_key).ok()?;
            Some(entry(
                public,
                r.not_before_ms,
                Some(r.not_after_ms),
                KeyState::Retired,
            ))
        }));
        keys
    }

    /// What rotation does next at `now_ms`, if anything. `new_key` makes the
    /// next key when one is proposed.
    pub fn step(
        &self,
        now_ms: u64,
        policy: &RotationPolicy,
        new_key: impl FnOnce() -> SigningKey,
    ) -> Option<RotationStep> {
        match &self.next {
            None => {
                let age = now_ms.saturating_sub(self.current_not_before_ms);
                let due = policy.rotate_after_ms.is_some_and(|after| age >= after);
                due.then(|| {
                    RotationStep::Propose(Self {
                        next: Some(NextKey {
                            key: new_key(),
                            not_before_ms: now_ms + policy.publish_lead_ms,
                            published: false,
                        }),
                        ..self.clone()
                    })
                })
            }
            Some(next) if !next.published => {
                let mut state = self.clone();
                state.next = Some(NextKey {
                    published: true,
                    not_before_ms: next.not_before_ms.max(now_ms + policy.publish_lead_ms),
                    key: next.key.clone(),
                });
                Some(RotationStep::Publish(state))
            }
            Some(next) if now_ms >= next.not_before_ms => {
                let mut retired = self.retired.clone();
                retired.push(RetiredKey {
                    public_key: PublicKey::of_signing_key(&self.current).to_base64(),
                    not_before_ms: self.current_not_before_ms,
                    not_after_ms: next.not_before_ms
                        + policy.max_certificate_ms
                        + RETIREMENT_MARGIN_MILLIS,
                });
                Some(RotationStep::Promote(Self {
                    current: next.key.clone(),
                    current_not_before_ms: next.not_before_ms,
                    next: None,
                    retired,
                }))
            }
            Some(_) => None,
        }
    }
}

/// The TrustAnchor publishing `state`'s keys.
pub fn trust_anchor(state: &CaState) -> TrustAnchor {
    let mut anchor = TrustAnchor::new(
        RECEIPT_CA_NAME,
        TrustAnchorSpec {
            receipt_keys: state.receipt_keys(),
            upstream: Vec::new(),
        },
    );
    anchor.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        )]
        .into(),
    );
    anchor
}

/// Writes the TrustAnchor with server-side apply.
pub async fn publish_trust_anchor(
    client: &kube::Client,
    state: &CaState,
) -> Result<(), ReceiptCaError> {
    let anchors: Api<TrustAnchor> = Api::all(client.clone());
    let anchor = trust_anchor(state);
    let value = serde_json::json!({
        "apiVersion": tollgate_crds::API_VERSION,
        "kind": "TrustAnchor",
        "metadata": {"name": RECEIPT_CA_NAME, "labels": anchor.metadata.labels},
        "spec": anchor.spec,
    });
    anchors
        .patch(
            RECEIPT_CA_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(value),
        )
        .await?;
    Ok(())
}

/// Writes the TrustAnchor when it does not list exactly `state`'s keys.
async fn reconcile_anchor(client: &kube::Client, state: &CaState) -> Result<(), ReceiptCaError> {
    let anchors: Api<TrustAnchor> = Api::all(client.clone());
    let current = anchors.get_opt(RECEIPT_CA_NAME).await?;
    let wanted = state.receipt_keys();
    if current.is_some_and(|a| a.spec.receipt_keys == wanted) {
        return Ok(());
    }
    publish_trust_anchor(client, state).await?;
    tracing::info!("TrustAnchor {RECEIPT_CA_NAME} rewritten from the receipt CA Secret");
    Ok(())
}

/// The leader's rotation loop: publishes the TrustAnchor, then every `tick`
/// reads the Secret, takes the step [`CaState::step`] gives, and writes the
/// TrustAnchor with it.
/// The Secret is replaced with its resourceVersion, so two replicas that
/// both think they lead cannot both rotate.
pub async fn keep_rotated(
    client: kube::Client,
    namespace: String,
    policy: RotationPolicy,
    tick: std::time::Duration,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // The anchor once per leadership, then after each step only: in a
    // cluster there is one operator, but test clusters run several, and the
    // anchor is cluster-wide.
    loop {
        let published = match secrets.get(RECEIPT_CA_NAME).await {
            Ok(secret) => match CaState::from_secret(&secret) {
                Ok(state) => publish_trust_anchor(&client, &state).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        match published {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "publishing the receipt CA TrustAnchor; retrying"),
        }
        tokio::time::sleep(tick).await;
    }
    tracing::info!("TrustAnchor {RECEIPT_CA_NAME} is current");
    loop {
        if let Err(e) = rotate_once(&client, &secrets, &policy).await {
            tracing::warn!(error = %e, "receipt CA rotation step failed; retrying");
        }
        tokio::time::sleep(tick).await;
    }
}

async fn rotate_once(
    client: &kube::Client,
    secrets: &Api<Secret>,
    policy: &RotationPolicy,
) -> Result<(), ReceiptCaError> {
    let secret = secrets.get(RECEIPT_CA_NAME).await?;
    let state = CaState::from_secret(&secret)?;
    let now_ms = crate::cluster_secrets::unix_millis();
    let new_key = || {
        let mut seed = [0u8; 32];
        // A failed draw leaves the step for the next tick (zero seed refused below).
        let _ = getrandom::fill(&mut seed);
        SigningKey::from_bytes(&seed)
    };
    let Some(step) = state.step(now_ms, policy, new_key) else {
        // Nothing to do but keep the anchor in line with the Secret: a write
        // that failed after a step, or another writer, is repaired here.
        return reconcile_anchor(client, &state).await;
    };
    let write = |next: &CaState| {
        let mut updated = secret.clone();
        updated.data = Some(next.secret_data());
        updated
    };
    match step {
        RotationStep::Propose(next) => {
            if next
                .next
                .as_ref()
                .is_some_and(|n| n.key.to_bytes() == [0; 32])
            {
                return Err(ReceiptCaError::Secret(
                    crate::cluster_secrets::ClusterSecretError::Random("no randomness".into()),
                ));
            }
            secrets
                .replace(RECEIPT_CA_NAME, &PostParams::default(), &write(&next))
                .await?;
            tracing::info!(state = ?next, "receipt CA rotation: next key proposed");
        }
        RotationStep::Publish(next) => {
            // The anchor first: nothing signs with the next key before it
            // is trusted.
            publish_trust_anchor(client, &next).await?;
            secrets
                .replace(RECEIPT_CA_NAME, &PostParams::default(), &write(&next))
                .await?;
            tracing::info!(state = ?next, "receipt CA rotation: next key published");
        }
        RotationStep::Promote(next) => {
            secrets
                .replace(RECEIPT_CA_NAME, &PostParams::default(), &write(&next))
                .await?;
            publish_trust_anchor(client, &next).await?;
            tracing::info!(state = ?next, "receipt CA rotation: next key signing, previous retired");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn seeds_are_64_lowercase_hex() {
        let seed = "11".repeat(32);
        let key = parse_seed(seed.as_bytes()).unwrap();
        assert_eq!(key.to_bytes(), [0x11; 32]);
        assert!(parse_seed(format!("{seed}\n").as_bytes()).is_ok());
        for bad in [
            "",
            "11",
            &"AB".repeat(32),
            &"zz".repeat(32),
            &"11".repeat(33),
        ] {
            assert!(parse_seed(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    const DAY: u64 = 86_400_000;
    const T0: u64 = 1_750_000_000_000;

    fn policy() -> RotationPolicy {
        RotationPolicy {
            rotate_after_ms: Some(90 * DAY),
            publish_lead_ms: 3_600_000,
            max_certificate_ms: DAY,
        }
    }

    fn first() -> CaState {
        CaState {
            current: SigningKey::from_bytes(&[7; 32]),
            current_not_before_ms: T0,
            next: None,
            retired: Vec::new(),
        }
    }

    fn roundtrip(state: &CaState) -> CaState {
        let secret = Secret {
            data: Some(state.secret_data()),
            ..Secret::default()
        };
        CaState::from_secret(&secret).unwrap()
    }

    fn anchor_roots(state: &CaState) -> tollgate_evidence::TrustRoots {
        tollgate_evidence::TrustRoots {
            keys: state
                .receipt_keys()
                .iter()
                .map(|k| tollgate_evidence::TrustedKey {
                    key_id: k.key_id.parse().unwrap(),
                    public_key: PublicKey::from_base64(&k.public_key).unwrap(),
                    role: tollgate_evidence::KeyRole::ReceiptCa,
                    not_before: Timestamp::parse_rfc3339(&k.not_before).unwrap(),
                    not_after: k
                        .not_after
                        .as_deref()
                        .map(|t| Timestamp::parse_rfc3339(t).unwrap()),
                    state: match k.state {
                        KeyState::Active => tollgate_evidence::KeyState::Active,
                        KeyState::Retired => tollgate_evidence::KeyState::Retired,
                        KeyState::Revoked => tollgate_evidence::KeyState::Revoked,
                    },
                })
                .collect(),
        }
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms).unwrap()
    }

    #[test]
    fn rotation_publishes_before_signing_and_retires_after_the_last_certificate() {
        let policy = policy();
        let state = first();
        assert!(
            state
                .step(T0 + 89 * DAY, &policy, || unreachable!())
                .is_none()
        );
        let proposed_at = T0 + 90 * DAY;
        let Some(RotationStep::Propose(proposed)) =
            state.step(proposed_at, &policy, || SigningKey::from_bytes(&[8; 32]))
        else {
            panic!("a rotation is due")
        };
        let proposed = roundtrip(&proposed);
        let old = state.current.clone();
        let new = SigningKey::from_bytes(&[8; 32]);
        // Proposed, not published: the old key still signs, whatever the time.
        assert_eq!(
            proposed.signing_key(proposed_at + DAY).to_bytes(),
            old.to_bytes()
        );

        // Published late: activation moves to a full lead after publication.
        let published_at = proposed_at + 2 * 3_600_000;
        let Some(RotationStep::Publish(published)) =
            proposed.step(published_at, &policy, || unreachable!())
        else {
            panic!("publication comes next")
        };
        let published = roundtrip(&published);
        let activation = published_at + policy.publish_lead_ms;
        assert_eq!(published.next.as_ref().unwrap().not_before_ms, activation);
        // The anchor trusts the new key before it signs anything.
        let keys = published.receipt_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].key_id, KeyId::of_signing_key(&new).to_string());
        assert_eq!(
            published.signing_key(activation - 1).to_bytes(),
            old.to_bytes()
        );
        assert_eq!(published.signing_key(activation).to_bytes(), new.to_bytes());
        assert!(
            published
                .step(activation - 1, &policy, || unreachable!())
                .is_none()
        );

        let Some(RotationStep::Promote(promoted)) =
            published.step(activation + 10, &policy, || unreachable!())
        else {
            panic!("promotion at activation")
        };
        let promoted = roundtrip(&promoted);
        assert_eq!(promoted.current.to_bytes(), new.to_bytes());
        assert_eq!(promoted.current_not_before_ms, activation);
        let retired = &promoted.retired[0];
        assert_eq!(
            retired.not_after_ms,
            activation + DAY + RETIREMENT_MARGIN_MILLIS,
            "the old key is trusted until every certificate it signed has expired"
        );

        // Certificates either key issued verify against the anchor over their
        // whole life: the old one's last, issued just before activation, and
        // the new one's first.
        let roots = anchor_roots(&promoted);
        let old_key = roots.find(&KeyId::of_signing_key(&old)).unwrap();
        let new_key = roots.find(&KeyId::of_signing_key(&new)).unwrap();
        for t in [activation - 1, activation - 1 + DAY] {
            old_key
                .check_use(tollgate_evidence::KeyRole::ReceiptCa, at(t))
                .unwrap();
        }
        assert!(
            old_key
                .check_use(
                    tollgate_evidence::KeyRole::ReceiptCa,
                    at(activation + 2 * DAY)
                )
                .is_err()
        );
        assert!(
            new_key
                .check_use(tollgate_evidence::KeyRole::ReceiptCa, at(activation - 1))
                .is_err()
        );
        new_key
            .check_use(tollgate_evidence::KeyRole::ReceiptCa, at(activation))
            .unwrap();

        // The next rotation starts from the new key's activation.
        assert!(
            promoted
                .step(activation + 89 * DAY, &policy, || unreachable!())
                .is_none()
        );
        let never = RotationPolicy {
            rotate_after_ms: None,
            ..policy
        };
        assert!(
            first()
                .step(T0 + 1_000 * DAY, &never, || unreachable!())
                .is_none()
        );
    }

    #[test]
    fn a_malformed_state_is_refused() {
        let mut data = first().secret_data();
        data.insert(NEXT_SEED_KEY.into(), ByteString(b"zz".to_vec()));
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        assert!(CaState::from_secret(&secret).is_err());
        let mut data = first().secret_data();
        data.insert(RETIRED_KEY.into(), ByteString(b"{}".to_vec()));
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        assert!(CaState::from_secret(&secret).is_err());
    }

    #[test]
    fn the_anchor_carries_the_key_id_and_public_key() {
        let ca = first();
        let anchor = trust_anchor(&ca);
        let key = &anchor.spec.receipt_keys[0];
        let public = PublicKey::from_base64(&key.public_key).unwrap();
        assert_eq!(public, PublicKey::of_signing_key(&ca.current));
        assert_eq!(
            key.key_id,
            hex::encode(sha2::Sha256::digest(public.as_bytes()))
        );
        assert_eq!(key.role, KeyRole::ReceiptCA);
        assert_eq!(key.state, KeyState::Active);
        assert_eq!(key.not_before, millis_rfc3339(T0));
        assert_eq!(anchor.metadata.name.as_deref(), Some(RECEIPT_CA_NAME));
    }
}

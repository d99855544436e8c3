//! Serving certificates for the webhooks and the control endpoint.
//!
//! Two sources, one [`ServingCertResolver`]:
//! - [`SelfSignedCa`]: the operator's own CA, kept in the Secret
//!   `tollgate-webhook-ca` of the operator namespace (created if absent, so
//!   replicas agree on one CA), with overlapping rotation;
//! - [`FileCertificate`]: `tls.crt`/`tls.key` (and `ca.crt`) from a mounted
//!   directory, e.g. a cert-manager Secret, reloaded when they change.
//!
//! Rotation never drops a listener: the resolver hands rustls the current
//! certificate at every handshake, and swapping it is a pointer store.
//!
//! The overlap, in order (pure rules in [`ca_action`], [`signer_for_serving`],
//! [`serving_renewal_due`]):
//! 1. a CA past two thirds of its life is replaced; the old one moves to
//!    `previous-ca.*` and the CA bundle holds both until the old one expires;
//! 2. the bundle is published (webhook `caBundle`s, the `tollgate-control-ca`
//!    ConfigMaps) as soon as it changes;
//! 3. serving certificates keep coming from the previous CA until the new
//!    one is `propagation_delay` old, so every client has the new CA before it
//!    sees a certificate signed by it;
//! 4. a serving certificate is re-issued past two thirds of its life, or when
//!    the CA that should sign it or its names change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;

/// The Secret holding the operator's CA.
pub const WEBHOOK_CA_SECRET: &str = "tollgate-webhook-ca";
/// Secret keys: the current CA, and the previous one during an overlap.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
pub const PREVIOUS_CA_KEY: &str = "previous-ca.key";

/// Certificates start this long before they are issued, for clock skew
/// between replicas and the API server.
pub const BACKDATE: Duration = Duration::seconds(30);

/// Why certificates could not be made, loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not a usable PEM certificate or key: {why}")]
    BadPem { what: String, why: String },
    #[error("Secret {0} lacks key {1}")]
    MissingKey(String, &'static str),
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How long things live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ca_validity: StdDuration,
    pub cert_validity: StdDuration,
    /// How long a new CA sits in the bundle before it signs anything.
    pub propagation_delay: StdDuration,
}

impl Lifetimes {
    /// How often certificates are checked: often enough to renew in time.
    pub fn check_interval(&self) -> StdDuration {
        let shortest = self.cert_validity.min(self.ca_validity);
        (shortest / 10).clamp(StdDuration::from_secs(1), StdDuration::from_secs(60))
    }
}

fn to_time(d: StdDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// A window for something issued at `now`, lasting `lifetime`.
    pub fn starting(now: OffsetDateTime, lifetime: StdDuration) -> Self {
        Self {
            not_before: now - BACKDATE,
            not_after: now + to_time(lifetime),
        }
    }

    /// When it was issued (undoing [`BACKDATE`]).
    pub fn issued_at(&self) -> OffsetDateTime {
        (self.not_before + BACKDATE).min(self.not_after)
    }

    pub fn expired(&self, now: OffsetDateTime) -> bool {
        now >= self.not_after
    }

    /// Past two thirds of its life (or not yet valid: a clock went back).
    pub fn renewal_due(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.issued_at();
        now >= self.not_after - lifetime / 3 || now < self.not_before
    }
}

/// What to do with the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    Create,
    Keep,
    Rotate,
}

/// What to do with the CA at `now`.
pub fn ca_action(now: OffsetDateTime, current: Option<Validity>) -> CaAction {
    match current {
        None => CaAction::Create,
        Some(v) if v.renewal_due(now) => CaAction::Rotate,
        Some(_) => CaAction::Keep,
    }
}

/// Which CA signs serving certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Current,
    Previous,
}

/// The new CA signs only once clients had `propagation_delay` to learn it;
/// until then the previous one does, while it is valid.
pub fn signer_for_serving(
    now: OffsetDateTime,
    current: Validity,
    previous: Option<Validity>,
    propagation_delay: StdDuration,
) -> Signer {
    let young = now < current.issued_at() + to_time(propagation_delay);
    match previous {
        Some(p) if young && !p.renewal_due_for_serving(now) => Signer::Previous,
        _ => Signer::Current,
    }
}

impl Validity {
    /// A CA too close to its end to sign anything useful.
    fn renewal_due_for_serving(&self, now: OffsetDateTime) -> bool {
        self.expired(now + Duration::seconds(1))
    }
}

/// The serving certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingState {
    pub validity: Validity,
    /// SHA-256 of the signing CA's DER.
    pub issuer: [u8; 32],
    pub names: Vec<String>,
}

/// Whether to issue a new serving certificate.
pub fn serving_renewal_due(
    now: OffsetDateTime,
    serving: Option<&ServingState>,
    wanted_issuer: &[u8; 32],
    wanted_names: &[String],
) -> bool {
    match serving {
        None => true,
        Some(s) => {
            s.validity.renewal_due(now) || &s.issuer != wanted_issuer || s.names != wanted_names
        }
    }
}

/// One CA: certificate, key and what was parsed from them.
#[derive(Clone)]
pub struct CaCert {
    pub cert_pem: String,
    key_pem: String,
    pub validity: Validity,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("validity", &self.validity)
            .field("fingerprint", &hex::encode(self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl CaCert {
    /// A new self-signed CA valid from `now` for `lifetime`.
    pub fn generate(now: OffsetDateTime, lifetime: StdDuration) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let validity = Validity::starting(now, lifetime);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        // A distinct name per CA keeps two CAs in one bundle apart.
        dn.push(
            DnType::CommonName,
            format!("tollgate-operator-ca-{}", now.unix_timestamp()),
        );
        dn.push(DnType::OrganizationName, "tollgate.dev");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem(), "the new CA")
    }

    /// Parses a CA from PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self, TlsError> {
        let der = first_certificate_der(cert_pem.as_bytes(), what)?;
        let validity = validity_of(&der, what)?;
        KeyPair::from_pem(key_pem).map_err(|e| TlsError::BadPem {
            what: format!("{what} key"),
            why: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            validity,
            fingerprint: Sha256::digest(der.as_ref()).into(),
        })
    }

    /// Issues a serving certificate for `names` (DNS names or IPs), valid for
    /// `lifetime` but never past this CA.
    pub fn issue_serving(
        &self,
        now: OffsetDateTime,
        names: &[String],
        lifetime: StdDuration,
    ) -> Result<(Arc<CertifiedKey>, ServingState), TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tollgate-operator");
        params.distinguished_name = dn;
        let mut validity = Validity::starting(now, lifetime);
        validity.not_after = validity.not_after.min(self.validity.not_after);
        validity.not_before = validity.not_before.max(self.validity.not_before);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = any_supported_type(&key_der)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        Ok((
            Arc::new(certified),
            ServingState {
                validity,
                issuer: self.fingerprint,
                names: names.to_vec(),
            },
        ))
    }
}

/// What the CA Secret holds.
#[derive(Debug, Clone)]
pub struct CaSecretContents {
    pub current: CaCert,
    pub previous: Option<CaCert>,
}

impl CaSecretContents {
    /// Parses the Secret's data. A broken current CA is an error (fail closed:
    /// an operator must look); a broken previous one is ignored.
    pub fn parse(data: &BTreeMap<String, ByteString>) -> Result<Self, TlsError> {
        let text = |key: &'static str| -> Result<String, TlsError> {
            let bytes = data
                .get(key)
                .ok_or_else(|| TlsError::MissingKey(WEBHOOK_CA_SECRET.to_owned(), key))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| TlsError::BadPem {
                what: format!("{WEBHOOK_CA_SECRET}/{key}"),
                why: "not UTF-8".to_owned(),
            })
        };
        let current = CaCert::from_pem(&text(CA_CERT)?, &text(CA_KEY)?, "the current CA")?;
        let previous = match (text(PREVIOUS_CA_CERT), text(PREVIOUS_CA_KEY)) {
            (Ok(c), Ok(k)) => CaCert::from_pem(&c, &k, "the previous CA").ok(),
            _ => None,
        };
        Ok(Self { current, previous })
    }

    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        };
        put(CA_CERT, &self.current.cert_pem);
        put(CA_KEY, &self.current.key_pem);
        if let Some(p) = &self.previous {
            put(PREVIOUS_CA_CERT, &p.cert_pem);
            put(PREVIOUS_CA_KEY, &p.key_pem);
        }
        data
    }

    /// The PEM bundle clients trust at `now`: the current CA, then the
    /// previous one while it is still valid.
    pub fn bundle_pem(&self, now: OffsetDateTime) -> String {
        let mut bundle = pem_with_newline(&self.current.cert_pem);
        if let Some(p) = self.previous.as_ref().filter(|p| !p.validity.expired(now)) {
            bundle.push_str(&pem_with_newline(&p.cert_pem));
        }
        bundle
    }

    /// The CA that signs serving certificates at `now`.
    pub fn signer(&self, now: OffsetDateTime, propagation_delay: StdDuration) -> &CaCert {
        let previous = self.previous.as_ref().map(|p| p.validity);
        match (
            signer_for_serving(now, self.current.validity, previous, propagation_delay),
            &self.previous,
        ) {
            (Signer::Previous, Some(p)) => p,
            _ => &self.current,
        }
    }
}

fn pem_with_newline(pem: &str) -> String {
    let mut s = pem.trim_end().to_owned();
    s.push('\n');
    s
}

fn first_certificate_der(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, TlsError> {
    let bad = |why: String| TlsError::BadPem {
        what: what.to_owned(),
        why,
    };
    let mut reader = pem;
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(bad(e.to_string())),
        None => Err(bad("no CERTIFICATE block".to_owned())),
    }
}

fn validity_of(der: &CertificateDer<'_>, what: &str) -> Result<Validity, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::BadPem {
            what: what.to_owned(),
            why: e.to_string(),
        })?;
    Ok(Validity {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Builds a rustls key from PEM files (a chain and a private key).
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |why: String| TlsError::BadPem {
        what: what.to_owned(),
        why,
    };
    let mut reader = cert_pem;
    let chain = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    let mut reader = key_pem;
    let key = rustls_pemfile::private_key(&mut reader)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no private key block".to_owned()))?;
    let signing_key = any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Hands rustls the current serving certificate at every handshake.
#[derive(Debug, Default)]
pub struct ServingCertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCertResolver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Swaps in `key` for every later handshake.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(key);
        }
    }

    pub fn has_certificate(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    /// A rustls server config (HTTP/1.1) that serves through this resolver.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

/// The names a serving certificate carries: the Service's DNS names, plus
/// the hosts of out-of-cluster URLs and listen addresses.
pub fn serving_names(operator_namespace: &str, extra_hosts: &[String]) -> Vec<String> {
    let svc = "tollgate-operator";
    let mut names = vec![
        svc.to_owned(),
        format!("{svc}.{operator_namespace}"),
        format!("{svc}.{operator_namespace}.svc"),
        format!("{svc}.{operator_namespace}.svc.cluster.local"),
    ];
    for host in extra_hosts {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // Wildcard listen addresses name no host.
        if host.is_empty() || host == "0.0.0.0" || host == "::" {
            continue;
        }
        if !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    names
}

/// Publishes the current CA bundle (PEM) to whoever patches `caBundle`s.
pub type BundleSender = watch::Sender<Option<String>>;

/// The operator's own CA, kept in a Secret, with overlapping rotation.
#[derive(Debug)]
pub struct SelfSignedCa {
    pub secrets: Api<Secret>,
    pub lifetimes: Lifetimes,
    pub names: Vec<String>,
    pub resolver: Arc<ServingCertResolver>,
    pub bundle: Arc<BundleSender>,
    pub serving: Option<ServingState>,
    pub rotations: prometheus_client::metrics::counter::Counter,
    pub issued: prometheus_client::metrics::counter::Counter,
}

impl SelfSignedCa {
    /// Checks and renews until `shutdown` fires; errors are logged and retried.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile(OffsetDateTime::now_utc()).await {
                tracing::error!(error = %e, "webhook certificates: retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(self.lifetimes.check_interval()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass: make or rotate the CA, publish the bundle, renew the
    /// serving certificate.
    pub async fn reconcile(&mut self, now: OffsetDateTime) -> Result<(), TlsError> {
        let contents = self.load_or_create(now).await?;
        let contents = match ca_action(now, Some(contents.current.validity)) {
            CaAction::Rotate => self.rotate(now, contents).await?,
            CaAction::Keep | CaAction::Create => contents,
        };
        let bundle = contents.bundle_pem(now);
        self.bundle.send_if_modified(|old| {
            if old.as_deref() == Some(bundle.as_str()) {
                false
            } else {
                *old = Some(bundle.clone());
                true
            }
        });
        let signer = contents.signer(now, self.lifetimes.propagation_delay);
        if serving_renewal_due(now, self.serving.as_ref(), &signer.fingerprint, &self.names) {
            let (key, state) =
                signer.issue_serving(now, &self.names, self.lifetimes.cert_validity)?;
            tracing::info!(
                not_after = %state.validity.not_after,
                issuer = %hex::encode(&state.issuer[..8]),
                "issued a serving certificate"
            );
            self.resolver.set(key);
            self.serving = Some(state);
            self.issued.inc();
        }
        Ok(())
    }

    async fn load_or_create(&self, now: OffsetDateTime) -> Result<CaSecretContents, TlsError> {
        if let Some(secret) = self.secrets.get_opt(WEBHOOK_CA_SECRET).await? {
            return CaSecretContents::parse(&secret.data.unwrap_or_default());
        }
        let contents = CaSecretContents {
            current: CaCert::generate(now, self.lifetimes.ca_validity)?,
            previous: None,
        };
        let secret = ca_secret(&contents, None);
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!("created the webhook CA Secret {WEBHOOK_CA_SECRET}");
                Ok(contents)
            }
            // Another replica won the race: use its CA.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let secret = self.secrets.get(WEBHOOK_CA_SECRET).await?;
                CaSecretContents::parse(&secret.data.unwrap_or_default())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn rotate(
        &self,
        now: OffsetDateTime,
        old: CaSecretContents,
    ) -> Result<CaSecretContents, TlsError> {
        let existing = self.secrets.get(WEBHOOK_CA_SECRET).await?;
        let contents = CaSecretContents {
            current: CaCert::generate(now, self.lifetimes.ca_validity)?,
            previous: Some(old.current),
        };
        let secret = ca_secret(&contents, existing.metadata.resource_version.clone());
        match self
            .secrets
            .replace(WEBHOOK_CA_SECRET, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    not_after = %contents.current.validity.not_after,
                    "rotated the webhook CA; the old one stays in the bundle until it expires"
                );
                self.rotations.inc();
                Ok(contents)
            }
            // Another replica rotated first (optimistic concurrency).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let secret = self.secrets.get(WEBHOOK_CA_SECRET).await?;
                CaSecretContents::parse(&secret.data.unwrap_or_default())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn ca_secret(contents: &CaSecretContents, resource_version: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CA_SECRET.to_owned()),
            resource_version,
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "tollgate-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(contents.to_data()),
        ..Secret::default()
    }
}

/// Serving certificate files from a mounted directory (cert-manager mode).
#[derive(Debug)]
pub struct FileCertificate {
    pub dir: PathBuf,
    pub resolver: Arc<ServingCertResolver>,
    pub bundle: Arc<BundleSender>,
}

impl FileCertificate {
    /// Loads the files now, then reloads them when they change.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        loop {
            match self.load(&mut last).await {
                Ok(true) => tracing::info!(dir = %self.dir.display(), "loaded serving certificate"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "serving certificate files"),
            }
            tokio::select! {
                () = tokio::time::sleep(StdDuration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn load(&self, last: &mut Option<(Vec<u8>, Vec<u8>)>) -> Result<bool, TlsError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| TlsError::Read { path, source })
            }
        };
        let cert = read("tls.crt").await?;
        let key = read("tls.key").await?;
        if let Ok(ca) = read("ca.crt").await
            && let Ok(ca) = String::from_utf8(ca)
        {
            self.bundle.send_if_modified(|old| {
                let changed = old.as_deref() != Some(ca.as_str());
                if changed {
                    *old = Some(ca.clone());
                }
                changed
            });
        }
        if last.as_ref() == Some(&(cert.clone(), key.clone())) {
            return Ok(false);
        }
        let certified = certified_key_from_pem(&cert, &key, &self.dir.display().to_string())?;
        self.resolver.set(certified);
        *last = Some((cert, key));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(secs)
    }

    fn window(issued: i64, lifetime: u64) -> Validity {
        Validity::starting(t(issued), StdDuration::from_secs(lifetime))
    }

    #[test]
    fn a_ca_is_created_kept_then_rotated_at_two_thirds() {
        assert_eq!(ca_action(t(0), None), CaAction::Create);
        let v = window(0, 300);
        assert_eq!(ca_action(t(0), Some(v)), CaAction::Keep);
        assert_eq!(ca_action(t(199), Some(v)), CaAction::Keep);
        assert_eq!(ca_action(t(200), Some(v)), CaAction::Rotate);
        assert_eq!(ca_action(t(301), Some(v)), CaAction::Rotate);
        // A clock that went back before notBefore also renews.
        assert_eq!(ca_action(t(-60), Some(v)), CaAction::Rotate);
    }

    #[test]
    fn a_new_ca_signs_only_after_the_propagation_delay() {
        let old = window(0, 300);
        let new = window(200, 300);
        let delay = StdDuration::from_secs(20);
        assert_eq!(
            signer_for_serving(t(200), new, Some(old), delay),
            Signer::Previous
        );
        assert_eq!(
            signer_for_serving(t(219), new, Some(old), delay),
            Signer::Previous
        );
        assert_eq!(
            signer_for_serving(t(220), new, Some(old), delay),
            Signer::Current
        );
        // Without a previous CA, or with an expired one, the new CA signs at once.
        assert_eq!(
            signer_for_serving(t(200), new, None, delay),
            Signer::Current
        );
        let dead = window(-400, 300);
        assert_eq!(
            signer_for_serving(t(200), new, Some(dead), delay),
            Signer::Current
        );
    }

    #[test]
    fn serving_certificates_renew_on_age_issuer_or_names() {
        let names = vec!["a".to_owned()];
        assert!(serving_renewal_due(t(0), None, &[1; 32], &names));
        let s = ServingState {
            validity: window(0, 90),
            issuer: [1; 32],
            names: names.clone(),
        };
        assert!(!serving_renewal_due(t(59), Some(&s), &[1; 32], &names));
        assert!(serving_renewal_due(t(60), Some(&s), &[1; 32], &names));
        assert!(serving_renewal_due(t(1), Some(&s), &[2; 32], &names));
        assert!(serving_renewal_due(
            t(1),
            Some(&s),
            &[1; 32],
            &["b".to_owned()]
        ));
    }

    #[test]
    fn the_bundle_holds_both_cas_until_the_old_one_expires() {
        let old = CaCert::generate(t(0), StdDuration::from_secs(300)).unwrap();
        let new = CaCert::generate(t(200), StdDuration::from_secs(300)).unwrap();
        let contents = CaSecretContents {
            current: new.clone(),
            previous: Some(old.clone()),
        };
        let both = contents.bundle_pem(t(250));
        assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2, "{both}");
        assert!(both.starts_with(new.cert_pem.trim_end()));
        let one = contents.bundle_pem(t(301));
        assert_eq!(one.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(one.trim_end(), new.cert_pem.trim_end());
    }

    #[test]
    fn the_secret_round_trips_and_a_broken_one_is_refused() {
        let ca = CaCert::generate(t(0), StdDuration::from_secs(300)).unwrap();
        let contents = CaSecretContents {
            current: ca.clone(),
            previous: Some(ca.clone()),
        };
        let parsed = CaSecretContents::parse(&contents.to_data()).unwrap();
        assert_eq!(parsed.current.fingerprint, ca.fingerprint);
        assert_eq!(parsed.current.validity, ca.validity);
        assert!(parsed.previous.is_some());

        let mut data = contents.to_data();
        data.insert(CA_CERT.to_owned(), ByteString(b"garbage".to_vec()));
        assert!(matches!(
            CaSecretContents::parse(&data),
            Err(TlsError::BadPem { .. })
        ));
        data.remove(CA_KEY);
        assert!(matches!(
            CaSecretContents::parse(&data),
            Err(TlsError::MissingKey(_, CA_KEY))
        ));
    }

    #[test]
    fn serving_certificates_verify_against_the_bundle_and_stay_inside_the_ca() {
        let now = OffsetDateTime::now_utc();
        let ca = CaCert::generate(now, StdDuration::from_secs(120)).unwrap();
        let names = serving_names("tollgate-system", &["127.0.0.1".to_owned()]);
        let (key, state) = ca
            .issue_serving(now, &names, StdDuration::from_secs(3600))
            .unwrap();
        // Clamped to the CA's end.
        assert_eq!(state.validity.not_after, ca.validity.not_after);
        assert_eq!(state.issuer, ca.fingerprint);

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_certificate_der(ca.cert_pem.as_bytes(), "ca").unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        for name in ["tollgate-operator.tollgate-system.svc", "127.0.0.1"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &key.cert[0],
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &key.cert[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn names_cover_the_service_and_out_of_cluster_hosts() {
        let names = serving_names(
            "ops",
            &[
                "127.0.0.1".to_owned(),
                "0.0.0.0".to_owned(),
                "127.0.0.1".to_owned(),
                "[::1]".to_owned(),
            ],
        );
        assert_eq!(
            names,
            [
                "tollgate-operator",
                "tollgate-operator.ops",
                "tollgate-operator.ops.svc",
                "tollgate-operator.ops.svc.cluster.local",
                "127.0.0.1",
                "::1"
            ]
        );
    }

    #[tokio::test]
    async fn certificate_files_load_and_reload_on_change() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-tls-test-{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let now = OffsetDateTime::now_utc();
        let ca = CaCert::generate(now, StdDuration::from_secs(600)).unwrap();
        let write = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            let issuer =
                Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap())
                    .unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
            std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        };
        write("a.example");
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let (tx, rx) = watch::channel(None);
        let files = FileCertificate {
            dir: dir.clone(),
            resolver: ServingCertResolver::new(),
            bundle: Arc::new(tx),
        };
        let mut last = None;
        assert!(!files.resolver.has_certificate());
        assert!(files.load(&mut last).await.unwrap());
        assert!(files.resolver.has_certificate());
        assert_eq!(rx.borrow().as_deref(), Some(ca.cert_pem.as_str()));
        // Unchanged files: nothing to do.
        assert!(!files.load(&mut last).await.unwrap());
        write("b.example");
        assert!(files.load(&mut last).await.unwrap());
        // A broken key is an error and keeps the last good certificate.
        std::fs::write(dir.join("tls.key"), "garbage").unwrap();
        assert!(files.load(&mut last).await.is_err());
        assert!(files.resolver.has_certificate());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_interval_is_bounded() {
        let l = |ca, cert| Lifetimes {
            ca_validity: StdDuration::from_secs(ca),
            cert_validity: StdDuration::from_secs(cert),
            propagation_delay: StdDuration::from_secs(1),
        };
        assert_eq!(l(30, 10).check_interval(), StdDuration::from_secs(1));
        assert_eq!(l(3000, 100).check_interval(), StdDuration::from_secs(10));
        assert_eq!(
            l(365 * 86400, 30 * 86400).check_interval(),
            StdDuration::from_secs(60)
        );
    }
}

//! Gateway key certificates: the receipt CA binds a gateway's ephemeral public key
//! to its namespace, serviceAccount, pod name, pod UID and a validity window.

use serde::{Deserialize, Serialize};

use crate::fields::{DnsLabel, DnsSubdomain, PodUid, SchemaVersion1, constant_string};
use crate::jcs::CanonicalError;
use crate::keys::{
    KeyId, PublicKey, SignatureError, SignatureHex, SigningKey, sign_canonical, verify_named,
};
use crate::receipt::Workload;
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/key-certificate"`.
    KeyCertificateSchema = "tollgate.dev/key-certificate"
);

/// The certificate body the CA signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCertificate {
    /// Always `tollgate.dev/key-certificate`.
    pub schema: KeyCertificateSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// The id of `public_key`.
    pub key_id: KeyId,
    /// The gateway's Ed25519 public key.
    pub public_key: PublicKey,
    /// The pod's namespace.
    pub namespace: DnsLabel,
    /// The pod's serviceAccount.
    pub service_account: DnsSubdomain,
    /// The pod's name.
    pub pod_name: DnsSubdomain,
    /// The pod's UID.
    pub pod_uid: PodUid,
    /// Start of validity; also taken as the issue time.
    pub not_before: Timestamp,
    /// End of validity (inclusive).
    pub not_after: Timestamp,
    /// The id of the CA key that signs this certificate.
    pub issuer_key_id: KeyId,
}

/// What a certificate binds a key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Namespace.
    pub namespace: DnsLabel,
    /// ServiceAccount.
    pub service_account: DnsSubdomain,
    /// Pod name.
    pub pod_name: DnsSubdomain,
    /// Pod UID.
    pub pod_uid: PodUid,
}

/// Why a certificate could not be issued or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// `not_after` is before `not_before`.
    #[error("not_after is before not_before")]
    EmptyWindow,
    /// `key_id` is not the id of `public_key`.
    #[error("key_id does not match public_key")]
    KeyIdMismatch,
    /// `issuer_key_id` is not the id of the signing CA key.
    #[error("issuer_key_id does not match the CA key")]
    IssuerMismatch,
    /// No canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// Bad signature.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl KeyCertificate {
    /// A certificate body for `gateway_key` bound to `pod`, to be signed by the CA
    /// whose id is `issuer_key_id`.
    pub fn new(
        gateway_key: PublicKey,
        pod: PodIdentity,
        not_before: Timestamp,
        not_after: Timestamp,
        issuer_key_id: KeyId,
    ) -> Result<Self, CertificateError> {
        let certificate = Self {
            schema: KeyCertificateSchema,
            schema_version: SchemaVersion1,
            key_id: gateway_key.key_id(),
            public_key: gateway_key,
            namespace: pod.namespace,
            service_account: pod.service_account,
            pod_name: pod.pod_name,
            pod_uid: pod.pod_uid,
            not_before,
            not_after,
            issuer_key_id,
        };
        certificate.validate()?;
        Ok(certificate)
    }

    /// Shape rules checked on parse: a non-empty window. (Whether `key_id` matches
    /// `public_key` is a content-hash check the verifier reports separately.)
    pub fn validate(&self) -> Result<(), CertificateError> {
        if self.not_after < self.not_before {
            return Err(CertificateError::EmptyWindow);
        }
        Ok(())
    }

    /// Whether `at` lies within `[not_before, not_after]`.
    pub fn covers(&self, at: Timestamp) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Whether this certificate binds the key to the pod named in a receipt.
    pub fn binds(&self, workload: &Workload) -> bool {
        self.namespace == workload.namespace
            && self.service_account == workload.service_account
            && self.pod_name == workload.pod
    }
}

/// A certificate with the CA's signature over its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "SignedKeyCertificateWire")]
pub struct SignedKeyCertificate {
    /// The signed body.
    pub certificate: KeyCertificate,
    /// Ed25519 over `JCS(certificate)` by the key `certificate.issuer_key_id`.
    pub signature: SignatureHex,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedKeyCertificateWire {
    certificate: KeyCertificate,
    signature: SignatureHex,
}

impl TryFrom<SignedKeyCertificateWire> for SignedKeyCertificate {
    type Error = CertificateError;
    fn try_from(wire: SignedKeyCertificateWire) -> Result<Self, CertificateError> {
        wire.certificate.validate()?;
        Ok(Self {
            certificate: wire.certificate,
            signature: wire.signature,
        })
    }
}

impl SignedKeyCertificate {
    /// Signs `certificate` with the CA key it names as issuer.
    pub fn issue(
        certificate: KeyCertificate,
        ca_key: &SigningKey,
    ) -> Result<Self, CertificateError> {
        certificate.validate()?;
        if certificate.key_id != certificate.public_key.key_id() {
            return Err(CertificateError::KeyIdMismatch);
        }
        if certificate.issuer_key_id != KeyId::of_signing_key(ca_key) {
            return Err(CertificateError::IssuerMismatch);
        }
        let signature = sign_canonical(&certificate, ca_key)?;
        Ok(Self {
            certificate,
            signature,
        })
    }

    /// Verifies the CA signature with `ca_key`, which must be the named issuer.
    pub fn verify_issuer(&self, ca_key: &PublicKey) -> Result<(), SignatureError> {
        verify_named(
            &self.certificate,
            &self.certificate.issuer_key_id,
            ca_key,
            &self.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    fn pod() -> PodIdentity {
        PodIdentity {
            namespace: DnsLabel::new("team-a").unwrap(),
            service_account: DnsSubdomain::new("default").unwrap(),
            pod_name: DnsSubdomain::new("app-7f9c").unwrap(),
            pod_uid: PodUid::new("6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab").unwrap(),
        }
    }

    #[test]
    fn issue_and_verify() {
        let ca = SigningKey::from_bytes(&[5; 32]);
        let gateway = PublicKey::of_signing_key(&SigningKey::from_bytes(&[6; 32]));
        let body = KeyCertificate::new(
            gateway,
            pod(),
            ts("2025-01-01T00:00:00.000Z"),
            ts("2025-01-02T00:00:00.000Z"),
            KeyId::of_signing_key(&ca),
        )
        .unwrap();
        let cert = SignedKeyCertificate::issue(body, &ca).unwrap();
        assert!(cert.verify_issuer(&PublicKey::of_signing_key(&ca)).is_ok());
        assert!(cert.certificate.covers(ts("2025-01-01T12:00:00.000Z")));
        assert!(!cert.certificate.covers(ts("2025-01-02T00:00:00.001Z")));
        let mut forged = cert.clone();
        forged.certificate.pod_name = DnsSubdomain::new("other").unwrap();
        assert_eq!(
            forged.verify_issuer(&PublicKey::of_signing_key(&ca)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn issuing_requires_the_named_ca_and_a_window() {
        let ca = SigningKey::from_bytes(&[5; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let gateway = PublicKey::of_signing_key(&SigningKey::from_bytes(&[6; 32]));
        let window = (
            ts("2025-01-01T00:00:00.000Z"),
            ts("2025-01-02T00:00:00.000Z"),
        );
        let body = KeyCertificate::new(
            gateway,
            pod(),
            window.0,
            window.1,
            KeyId::of_signing_key(&ca),
        )
        .unwrap();
        assert_eq!(
            SignedKeyCertificate::issue(body, &other).unwrap_err(),
            CertificateError::IssuerMismatch
        );
        assert_eq!(
            KeyCertificate::new(
                gateway,
                pod(),
                window.1,
                window.0,
                KeyId::of_signing_key(&ca)
            )
            .unwrap_err(),
            CertificateError::EmptyWindow
        );
    }
}

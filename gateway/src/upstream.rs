//! Dialing providers: only allowlisted hosts, TLS through rustls with the CA
//! bundle and SPKI pins the provider's TrustAnchor gives, the SHA-256 of the
//! peer's leaf certificate captured for every connection, and no redirects
//! (hyper's client never follows them, and the proxy refuses 3xx answers).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tollgate_wire::config::{CompiledProvider, HostTrust};

/// SHA-256 of the upstream leaf certificate (DER). The connector puts it in
/// the extensions of every response that came over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFingerprint(pub [u8; 32]);

/// Why a connection could not be made. Messages name hosts, never keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("host {0:?} is not in the provider's allowlist")]
    HostNotAllowed(String),
    #[error("plain http to {0:?} is refused: receipts must record the provider's TLS certificate")]
    PlainHttpRefused(String),
    #[error("connecting to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("connecting to {host} timed out")]
    Timeout { host: String },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("TLS with {host} gave no peer certificate to fingerprint")]
    NoPeerCertificate { host: String },
    #[error("invalid upstream URL")]
    BadUri,
}

/// Why a provider's client could not be built from config.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("provider {provider}: the CA bundle for {host} holds no usable certificate")]
    EmptyBundle { provider: String, host: String },
    #[error("provider {provider}: SPKI pin {pin:?} for {host} is not base64 of 32 bytes")]
    BadPin {
        provider: String,
        host: String,
        pin: String,
    },
    #[error("provider {provider}: cannot build the TLS verifier: {reason}")]
    Verifier { provider: String, reason: String },
}

/// Checks the chain with webpki, then requires an SPKI pin match when pins are set.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

/// SHA-256 of a certificate's DER-encoded SubjectPublicKeyInfo.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(Sha256::digest(parsed.tbs_certificate.subject_pki.raw).into())
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.pins.is_empty() {
            return Ok(verified);
        }
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(spki_sha256)
            .any(|spki| self.pins.contains(&spki));
        if pinned {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "no certificate in the chain matches the SPKI pins".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_config(
    provider: &str,
    host: &str,
    trust: Option<&HostTrust>,
) -> Result<Arc<ClientConfig>, TrustError> {
    use base64::Engine as _;
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match trust.and_then(|t| t.ca_bundle_pem.as_deref()) {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TrustError::EmptyBundle {
                    provider: provider.into(),
                    host: host.into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut pins = Vec::new();
    for pin in trust.map(|t| t.spki_pins.as_slice()).unwrap_or_default() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(pin)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        pins.push(bytes.ok_or_else(|| TrustError::BadPin {
            provider: provider.into(),
            host: host.into(),
            pin: pin.clone(),
        })?);
    }
    let verifier_error = |e: &dyn std::fmt::Display| TrustError::Verifier {
        provider: provider.into(),
        reason: e.to_string(),
    };
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto.clone())
        .build()
        .map_err(|e| verifier_error(&e))?;
    let mut config = ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .map_err(|e| verifier_error(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { inner, pins }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A hyper connector that enforces the allowlist and captures fingerprints.
#[derive(Clone, Debug)]
pub struct PinnedConnector {
    allowed_hosts: Arc<[String]>,
    tls_by_host: Arc<HashMap<String, Arc<ClientConfig>>>,
    connect_timeout: Duration,
    /// In unit tests, connections come from here instead of TCP and TLS.
    #[cfg(test)]
    fake: Option<fake::FakeDial>,
}

impl PinnedConnector {
    /// The connector for one provider's hosts and trust.
    pub fn for_provider(provider: &CompiledProvider) -> Result<Self, TrustError> {
        let mut tls_by_host = HashMap::new();
        for host in &provider.hosts {
            let trust = provider.upstream_trust.iter().find(|t| &t.host == host);
            tls_by_host.insert(host.clone(), tls_config(&provider.name, host, trust)?);
        }
        Ok(Self {
            allowed_hosts: provider.hosts.clone().into(),
            tls_by_host: Arc::new(tls_by_host),
            connect_timeout: Duration::from_millis(u64::from(provider.connect_timeout_ms)),
            #[cfg(test)]
            fake: None,
        })
    }

    async fn connect(self, uri: Uri) -> Result<UpstreamStream, ConnectError> {
        let host = uri
            .host()
            .ok_or(ConnectError::BadUri)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !self.allowed_hosts.iter().any(|h| h == &host) {
            return Err(ConnectError::HostNotAllowed(host));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => return Err(ConnectError::PlainHttpRefused(host)),
            _ => return Err(ConnectError::BadUri),
        }
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return fake.dial(&host);
        }
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout { host: host.clone() })?
        .map_err(|e| ConnectError::Connect {
            host: host.clone(),
            reason: e.kind().to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let config = self
            .tls_by_host
            .get(&host)
            .cloned()
            .ok_or_else(|| ConnectError::HostNotAllowed(host.clone()))?;
        let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::BadUri)?;
        let tls = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ConnectError::Timeout { host: host.clone() })?
        .map_err(|e| ConnectError::Tls {
            host: host.clone(),
            reason: e.to_string(),
        })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ConnectError::NoPeerCertificate { host: host.clone() })?;
        let fingerprint = TlsFingerprint(Sha256::digest(leaf.as_ref()).into());
        Ok(UpstreamStream {
            io: Io::Tls(Box::new(TokioIo::new(tls))),
            fingerprint: Some(fingerprint),
        })
    }
}

impl tower::Service<Uri> for PinnedConnector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A TLS connection to a provider, with its leaf certificate fingerprint.
#[derive(Debug)]
pub struct UpstreamStream {
    io: Io,
    /// Always set on a real connection (no fingerprint is a connect error).
    fingerprint: Option<TlsFingerprint>,
}

#[derive(Debug)]
enum Io {
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
    #[cfg(test)]
    Memory(TokioIo<tokio::io::DuplexStream>),
}

/// Calls `$method` on whichever stream `$io` is (static dispatch).
macro_rules! on_io {
    ($io:expr, $method:ident($($arg:expr),*)) => {
        match $io {
            Io::Tls(io) => Pin::new(io.as_mut()).$method($($arg),*),
            #[cfg(test)]
            Io::Memory(io) => Pin::new(io).$method($($arg),*),
        }
    };
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self.fingerprint {
            Some(fingerprint) => Connected::new().extra(fingerprint),
            None => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        on_io!(&mut self.get_mut().io, poll_read(cx, buf))
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        on_io!(&mut self.get_mut().io, poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_io!(&mut self.get_mut().io, poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_io!(&mut self.get_mut().io, poll_shutdown(cx))
    }
}

/// The pooled HTTP/1.1 client for one provider.
pub type ProviderClient = Client<PinnedConnector, Full<Bytes>>;

/// Builds the pooled client for a provider.
pub fn provider_client(provider: &CompiledProvider) -> Result<ProviderClient, TrustError> {
    Ok(pooled(PinnedConnector::for_provider(provider)?))
}

fn pooled(connector: PinnedConnector) -> ProviderClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// In-memory upstreams for unit tests: the connector keeps its host and
/// scheme checks, then takes the connection from a test function instead of
/// TCP and TLS, so the request path runs without sockets.
#[cfg(test)]
pub mod fake {
    use std::sync::Arc;

    use super::*;

    /// Makes the connection to `host`: the client's end of an in-memory pipe
    /// and the fingerprint its "TLS" had (`None` to simulate a connection with
    /// none), or a connect error.
    pub type DialFn = dyn Fn(&str) -> Result<(tokio::io::DuplexStream, Option<TlsFingerprint>), ConnectError>
        + Send
        + Sync;

    #[derive(Clone)]
    pub struct FakeDial(pub Arc<DialFn>);

    impl std::fmt::Debug for FakeDial {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FakeDial")
        }
    }

    impl FakeDial {
        pub(super) fn dial(&self, host: &str) -> Result<UpstreamStream, ConnectError> {
            let (io, fingerprint) = (self.0)(host)?;
            Ok(UpstreamStream {
                io: Io::Memory(TokioIo::new(io)),
                fingerprint,
            })
        }
    }

    /// The provider's client, dialing through `dial`.
    pub fn provider_client(
        provider: &CompiledProvider,
        dial: FakeDial,
    ) -> Result<ProviderClient, TrustError> {
        let mut connector = PinnedConnector::for_provider(provider)?;
        connector.fake = Some(dial);
        Ok(pooled(connector))
    }
}

/// The connector error behind a client error, if the failure was ours.
pub fn connect_error(err: &hyper_util::client::legacy::Error) -> Option<&ConnectError> {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pins_and_empty_bundles_are_config_errors() {
        let trust = HostTrust {
            host: "h".into(),
            ca_bundle_pem: None,
            spki_pins: vec!["not-base64!".into()],
        };
        assert!(matches!(
            tls_config("p", "h", Some(&trust)),
            Err(TrustError::BadPin { .. })
        ));
        let trust = HostTrust {
            host: "h".into(),
            ca_bundle_pem: Some("no pem here".into()),
            spki_pins: vec![],
        };
        assert!(matches!(
            tls_config("p", "h", Some(&trust)),
            Err(TrustError::EmptyBundle { .. })
        ));
        assert!(
            tls_config("p", "h", None).is_ok(),
            "system roots without pins"
        );
    }
}

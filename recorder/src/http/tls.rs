//! TLS for the recorder: its server config (with the front proxy's client CA)
//! and what each connection shows handlers ([`Peer`]); accepting and bounds are
//! `tollgate_wire::server`'s.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tollgate_wire::server::{OverloadCounters, PlainAccept, ServerLimits, TlsAccept, TlsStream};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the key or certificate.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server config from PEM certificate chain and private key files. With
/// `client_ca_pem`, clients may present a certificate, which must then chain to
/// that CA (the API server's front proxy); clients without one are still served.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| file_err(cert_path, e.to_string()))?;
    let key_pem = tollgate_wire::secret::read_secret_file(key_path)
        .map_err(|e| file_err(key_path, e.to_string()))?
        .into_bytes();
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(cert_path, "no PEM certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key_path, e.to_string()))?
        .ok_or_else(|| file_err(key_path, "no PEM private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::File {
                    path: "front-proxy client CA".into(),
                    message: e.to_string(),
                })?;
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::File {
                path: "front-proxy client CA".into(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The recorder's TLS connections: handshakes off the accept loop (bounded in
/// number and time, see [`tollgate_wire::server::TlsAccept`]), each connection
/// described to handlers as a [`Peer`].
pub fn tls_accept(
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    limits: &ServerLimits,
    counters: Arc<OverloadCounters>,
) -> TlsAccept<Peer> {
    TlsAccept::new(tcp, config, Peer::of, limits.write_stall_timeout, counters)
}

/// Plain connections (loopback only): no client certificate.
pub fn plain_accept(tcp: TcpListener) -> PlainAccept<Peer> {
    PlainAccept::new(tcp, Peer::default())
}

/// What the server knows of a connection's peer, for handlers
/// (`ConnectInfo<Peer>`): whether it presented a client certificate that rustls
/// verified against the front-proxy CA, and that certificate's common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The verified client certificate's subject common name, if one was presented.
    pub client_cn: Option<String>,
    /// Whether a verified client certificate was presented at all.
    pub client_cert: bool,
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(String::from)
}

impl Peer {
    /// What a finished TLS handshake shows of the client.
    fn of(stream: &TlsStream) -> Self {
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        Self {
            client_cn: leaf.and_then(|c| common_name(c.as_ref())),
            client_cert: leaf.is_some(),
        }
    }
}

//! A small HTTP/1.1 client for talking to the recorder (the shipper, the CLI) and
//! to checkpoint sinks: one connection per request, plain HTTP or rustls, bounded
//! response bodies, a timeout on the whole exchange.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not usable.
    #[error("bad url {0}")]
    BadUrl(String),
    /// Connecting, TLS or the exchange failed.
    #[error("{0}")]
    Transport(String),
    /// The exchange took too long.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The response body is over the limit.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    /// TLS configuration.
    #[error("tls: {0}")]
    Tls(String),
    /// The bearer token could not be read.
    #[error("token: {0}")]
    Token(String),
}

/// Where a bearer token comes from.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// The current token.
    fn token(&self) -> Result<String, ClientError>;
}

/// A token file, re-read on every request (projected tokens rotate).
#[derive(Debug, Clone)]
pub struct FileToken(PathBuf);

impl FileToken {
    /// Reads `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }
}

impl TokenSource for FileToken {
    fn token(&self) -> Result<String, ClientError> {
        std::fs::read_to_string(&self.0)
            .map(|t| t.trim().to_string())
            .map_err(|e| ClientError::Token(format!("{}: {e}", self.0.display())))
    }
}

/// A fixed token.
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> Result<String, ClientError> {
        Ok(self.0.clone())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// `Retry-After` seconds, if sent.
    pub retry_after: Option<u64>,
    /// The `ETag` header, if sent.
    pub etag: Option<String>,
    /// Body.
    pub body: Bytes,
}

/// The client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    tls: Arc<ClientConfig>,
    timeout: Duration,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config trusting `roots`.
pub fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, ClientError> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A TLS client config trusting the public web PKI roots.
pub fn public_roots() -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    tls_config(roots)
}

/// A TLS client config trusting the PEM CA certificates in `path` (e.g. the
/// recorder's serving CA).
pub fn roots_from_pem_file(path: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let pem =
        std::fs::read(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(format!(
            "{}: no PEM certificates",
            path.display()
        )));
    }
    tls_config(roots)
}

impl HttpClient {
    /// A client using `tls` for https URLs.
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration) -> Self {
        Self { tls, timeout }
    }

    /// Sends a request and reads at most `max_body` bytes of the response.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        json_body: Option<Bytes>,
        max_body: usize,
    ) -> Result<Response, ClientError> {
        self.send_with_headers(method, url, bearer, &[], json_body, max_body)
            .await
    }

    /// [`Self::send`] with extra request headers (e.g. `If-None-Match`).
    pub async fn send_with_headers(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        headers: &[(http::header::HeaderName, String)],
        json_body: Option<Bytes>,
        max_body: usize,
    ) -> Result<Response, ClientError> {
        tokio::time::timeout(
            self.timeout,
            self.exchange(method, url, bearer, headers, json_body, max_body),
        )
        .await
        .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        headers: &[(http::header::HeaderName, String)],
        json_body: Option<Bytes>,
        max_body: usize,
    ) -> Result<Response, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ClientError::BadUrl(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::BadUrl(url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json_body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(json_body.unwrap_or_default()))
            .map_err(|e| ClientError::BadUrl(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| ClientError::Transport(format!("connecting to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| ClientError::BadUrl(url.into()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Transport(format!("tls with {host}: {e}")))?;
            send_on(tls, request, max_body).await
        } else {
            send_on(tcp, request, max_body).await
        }
    }
}

async fn send_on<S>(
    io: S,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = |e: hyper::Error| ClientError::Transport(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(transport)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(transport)?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let etag = response
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ClientError::TooLarge(max_body)
            } else {
                ClientError::Transport(e.to_string())
            }
        })?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        retry_after,
        etag,
        body,
    })
}

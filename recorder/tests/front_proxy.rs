//! The aggregated usage API over real TLS: the recorder believes the user named
//! in front-proxy headers only on a connection whose client certificate chains to
//! the front-proxy CA and carries an allowed common name, and then serves only
//! what the access reviewer allows that user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;

use futures::future::BoxFuture;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_recorder::auth::StaticTokens;
use tollgate_recorder::cluster::{AccessReviewer, FrontProxy};
use tollgate_recorder::error::RecorderError;
use tollgate_recorder::http::tls::{server_config, tls_accept};
use tollgate_recorder::http::{AppState, router};
use tollgate_recorder::settings::Settings;

/// Alice may list usage in team-a only; the auditor may list everything.
#[derive(Debug)]
struct Rbac;

impl AccessReviewer for Rbac {
    fn allowed<'a>(
        &'a self,
        user: &'a str,
        _groups: &'a [String],
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, RecorderError>> {
        let ok = match user {
            "auditor" => true,
            "alice" => resource == "usage" && namespace == Some("team-a"),
            _ => false,
        };
        Box::pin(async move { Ok(ok) })
    }
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// A leaf signed by `ca`, for a server (`localhost`) or a client.
fn leaf_of(ca: &Ca, cn: &str, server: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let names = if server {
        vec!["localhost".to_string()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

/// A client certificate and key for the TLS client.
fn leaf(ca: &Ca, cn: &str, server: bool) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let l = leaf_of(ca, cn, server);
    (l.cert, l.key)
}

struct Server {
    addr: std::net::SocketAddr,
    server_ca: Ca,
}

async fn server(front_proxy_ca: &Ca) -> Server {
    let (rec, _clock) = common::recorder(common::sqlite("front-proxy"), Settings::default()).await;
    let server_ca = ca("recorder-ca");
    let served = leaf_of(&server_ca, "recorder", true);
    let dir = common::temp_dir("front-proxy-tls");
    std::fs::write(dir.join("tls.crt"), &served.cert_pem).unwrap();
    tollgate_test_support::process::write_private(&dir.join("tls.key"), &served.key_pem).unwrap();
    let front_proxy = FrontProxy {
        client_ca_pem: front_proxy_ca.pem.clone(),
        allowed_names: vec!["front-proxy-client".into()],
        username_headers: vec!["X-Remote-User".into()],
        group_headers: vec!["X-Remote-Group".into()],
    };
    let config = server_config(
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        Some(&front_proxy.client_ca_pem),
    )
    .unwrap();
    let app = router(AppState {
        recorder: rec,
        auth: Arc::new(StaticTokens::local("local-token")),
        max_body_bytes: 1 << 20,
        front_proxy: Some(Arc::new(front_proxy)),
        access: Some(Arc::new(Rbac)),
        quotas: None,
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(tollgate_wire::server::serve(
        tls_accept(
            tcp,
            config,
            &tollgate_wire::server::ServerLimits::CONTROL,
            Arc::default(),
        ),
        app,
        tollgate_wire::server::ServerLimits::CONTROL,
        std::future::pending(),
    ));
    Server { addr, server_ca }
}

/// GET `path` over TLS, presenting `client` if given, with `user` in the
/// front-proxy header: the status code, or None when the handshake fails.
async fn get(
    server: &Server,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    user: &str,
    path: &str,
) -> Option<u16> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut server.server_ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Remote-User: {user}\r\n\
         X-Remote-Group: system:authenticated\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    // With TLS 1.3 a refused client certificate surfaces on the first read.
    tls.read_to_end(&mut response).await.ok()?;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

const BASE: &str = "/apis/usage.tollgate.dev/v1alpha1";

#[tokio::test]
async fn front_proxy_headers_count_only_with_the_front_proxy_certificate() {
    let front_proxy_ca = ca("front-proxy-ca");
    let s = server(&front_proxy_ca).await;
    let proxy = || Some(leaf(&front_proxy_ca, "front-proxy-client", false));
    let team_a = format!("{BASE}/namespaces/team-a/usage");

    // The API server's front proxy, vouching for alice: her namespace only.
    assert_eq!(get(&s, proxy(), "alice", &team_a).await, Some(200));
    let team_b = format!("{BASE}/namespaces/team-b/usage");
    assert_eq!(get(&s, proxy(), "alice", &team_b).await, Some(403));
    assert_eq!(
        get(&s, proxy(), "alice", &format!("{BASE}/usage")).await,
        Some(403)
    );
    assert_eq!(
        get(&s, proxy(), "alice", &format!("{BASE}/bundles")).await,
        Some(403)
    );
    // An auditor the reviewer allows everything.
    assert_eq!(
        get(&s, proxy(), "auditor", &format!("{BASE}/usage")).await,
        Some(200)
    );
    // (404: past authorization, the log is still empty.)
    assert_eq!(
        get(&s, proxy(), "auditor", &format!("{BASE}/bundles")).await,
        Some(404)
    );
    // Discovery, the public recorder key and the newest checkpoint need no user.
    assert_eq!(get(&s, None, "", BASE).await, Some(200));
    assert_eq!(
        get(&s, None, "", &format!("{BASE}/recorderkeys")).await,
        Some(200)
    );
    assert_eq!(
        get(&s, None, "", &format!("{BASE}/checkpoints")).await,
        Some(200)
    );

    // The same headers without a client certificate are not believed.
    assert_eq!(get(&s, None, "auditor", &team_a).await, Some(401));
    // A certificate from the right CA but another name is not the front proxy.
    let other = Some(leaf(&front_proxy_ca, "someone-else", false));
    assert_eq!(get(&s, other, "auditor", &team_a).await, Some(401));
    // A certificate from another CA does not get through the handshake.
    let rogue_ca = ca("rogue-ca");
    let rogue = Some(leaf(&rogue_ca, "front-proxy-client", false));
    assert_eq!(get(&s, rogue, "auditor", &team_a).await, None);
    // The bearer-token API is unchanged on the same listener.
    assert_eq!(get(&s, None, "auditor", "/v1/usage").await, Some(401));
}

//! Building and running a recorder server: data directory, settings, recorder key,
//! trust anchors, storage, authentication, the sealing timer and the listener
//! (TLS, or plain HTTP on loopback only). `main.rs` parses flags into
//! [`ServeOptions`] and calls [`start`]; tests call it too.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tollgate_wire::server::ServerLimits;

use crate::auth::{AUDIENCE, Authenticator, Policy, StaticTokens, TokenReviewer};
use crate::clock::{Clock, SystemClock};
use crate::dashboard::QuotaCatalog;
use crate::http::{AppState, router};
use crate::identity::{
    IdentityError, LOCAL_TOKEN_FILE, TRUST_ANCHOR_FILE, default_origin, load_or_create_key,
    load_or_create_token, read_key_file,
};
use crate::metrics::Metrics;
use crate::recorder::{Recorder, RecorderOptions};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;

/// How often the recorder runs a retention pass.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Which storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageChoice {
    /// SQLite at this path.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL.
    Postgres(String),
}

/// How callers authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthChoice {
    /// Local mode: loopback only, one generated bearer token in this 0600 file.
    Local {
        /// The token file.
        token_file: PathBuf,
    },
    /// In a cluster: projected ServiceAccount tokens checked by TokenReview.
    TokenReview,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data directory (key, SQLite database, trust anchor).
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// A `RecorderConfig` YAML file.
    pub config: Option<PathBuf>,
    /// TrustAnchor files holding the receipt CA keys.
    pub trust_anchors: Vec<PathBuf>,
    /// Storage.
    pub storage: StorageChoice,
    /// Authentication.
    pub auth: AuthChoice,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The recorder key file (64 hex); default `DATA_DIR/recorder.key`, created if missing.
    pub key_file: Option<PathBuf>,
    /// Readers of usage and exports (see [`Policy`]).
    pub readers: Vec<String>,
    /// The server's bounds (default [`ServerLimits::RECORDER`]).
    pub limits: ServerLimits,
    /// The quotas the dashboard shows burn-downs of (local mode gives its
    /// manifests'; none in a cluster, where the operator writes quota status).
    pub quota_catalog: Option<Arc<dyn QuotaCatalog>>,
}

impl ServeOptions {
    /// Local-mode defaults for `data_dir` and `listen`: SQLite in the data dir,
    /// the token file in the data dir, no TLS.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            storage: StorageChoice::Sqlite(data_dir.join("recorder.db")),
            auth: AuthChoice::Local {
                token_file: data_dir.join(LOCAL_TOKEN_FILE),
            },
            data_dir,
            listen,
            config: None,
            trust_anchors: Vec::new(),
            tls: None,
            key_file: None,
            readers: Vec::new(),
            limits: ServerLimits::RECORDER,
            quota_catalog: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad combination of options.
    #[error("{0}")]
    Options(String),
    /// Settings.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// Trust anchors.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustLoadError),
    /// Keys and tokens.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The recorder.
    #[error(transparent)]
    Recorder(#[from] crate::error::RecorderError),
    /// Authentication setup.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    /// I/O.
    #[error("{0}")]
    Io(String),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The recorder behind it.
    pub recorder: Arc<Recorder>,
    /// Ends when the server has shut down.
    pub handle: JoinHandle<()>,
}

/// Opens the configured storage.
pub async fn open_store(storage: &StorageChoice) -> Result<Arc<dyn Store>, ServeError> {
    Ok(match storage {
        StorageChoice::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        StorageChoice::Postgres(url) => Arc::new(PostgresStore::connect(url, 8).await?),
    })
}

/// Starts the server; it stops when `shutdown` completes.
pub async fn start(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServeError> {
    let loopback = options.listen.ip().is_loopback();
    if options.tls.is_none() && !loopback {
        return Err(ServeError::Options(format!(
            "{} is not loopback: serve TLS (--tls-cert, --tls-key) or listen on 127.0.0.1",
            options.listen
        )));
    }
    if matches!(options.auth, AuthChoice::Local { .. }) && !loopback {
        return Err(ServeError::Options(
            "local mode (a generated bearer token) is allowed only on loopback".into(),
        ));
    }
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| ServeError::Io(format!("{}: {e}", options.data_dir.display())))?;
    let settings = match &options.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let key = match &options.key_file {
        Some(path) => read_key_file(path)?,
        None => load_or_create_key(&options.data_dir.join(crate::identity::KEY_FILE))?,
    };
    let origin = default_origin(&key).map_err(|e| ServeError::Options(format!("origin: {e}")))?;
    let trust = crate::trust::load_trust_roots(&options.trust_anchors)?;
    if !trust
        .keys
        .iter()
        .any(|k| k.role == tollgate_evidence::KeyRole::ReceiptCa)
    {
        tracing::warn!(
            "no receiptCA trust anchor file given: receipt batches are refused until one is known \
             (in a cluster, from its TrustAnchors)"
        );
    }
    let store = open_store(&options.storage).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let overload = metrics.overload.clone();
    let max_body_bytes = settings.max_body_bytes;
    let seal_every = Duration::from_millis((settings.seal_max_age_ms / 4).clamp(100, 1_000));
    let recorder = Arc::new(
        Recorder::open(
            store,
            RecorderOptions {
                settings,
                trust,
                key,
                origin,
                clock,
                metrics,
                policy: Policy {
                    readers: options.readers.clone(),
                },
                verify_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            },
        )
        .await?,
    );
    let anchor_path = options.data_dir.join(TRUST_ANCHOR_FILE);
    std::fs::write(&anchor_path, recorder.trust_anchor_yaml())
        .map_err(|e| ServeError::Io(format!("{}: {e}", anchor_path.display())))?;
    // In a cluster the recorder also follows the cluster's TrustAnchors and, when
    // the API server has a front proxy, serves the aggregated usage API.
    let mut front_proxy = None;
    let mut access: Option<Arc<dyn crate::cluster::AccessReviewer>> = None;
    let mut trust_follower = None;
    let auth: Arc<dyn Authenticator> = match &options.auth {
        AuthChoice::Local { token_file } => {
            Arc::new(StaticTokens::local(&load_or_create_token(token_file)?))
        }
        AuthChoice::TokenReview => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| ServeError::Options(format!("kubernetes client: {e}")))?;
            trust_follower = Some(
                crate::cluster::follow_trust_anchors(
                    client.clone(),
                    options.trust_anchors.clone(),
                    recorder.clone(),
                )
                .await,
            );
            match crate::cluster::FrontProxy::load(client.clone()).await {
                Ok(Some(fp)) if options.tls.is_some() => {
                    tracing::info!(
                        allowed_names = ?fp.allowed_names,
                        "serving /apis/usage.tollgate.dev/v1alpha1 to the API server's front proxy"
                    );
                    front_proxy = Some(Arc::new(fp));
                    access = Some(Arc::new(crate::cluster::SubjectAccessReviewer::new(
                        client.clone(),
                    )));
                }
                Ok(Some(_)) => tracing::info!(
                    "the aggregated usage API needs TLS (--tls-cert, --tls-key): it is off"
                ),
                Ok(None) => tracing::info!(
                    "no front proxy (requestheader) configured: the aggregated usage API is off"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "reading kube-system/extension-apiserver-authentication failed: the aggregated usage API is off"
                ),
            }
            Arc::new(TokenReviewer::with_client(client, AUDIENCE))
        }
    };
    let client_ca = front_proxy.as_ref().map(|fp| fp.client_ca_pem.clone());
    let app = router(AppState {
        recorder: recorder.clone(),
        auth,
        max_body_bytes,
        front_proxy,
        access,
        quotas: options.quota_catalog.clone(),
    });
    let tcp = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| ServeError::Io(format!("binding {}: {e}", options.listen)))?;
    let local_addr = tcp
        .local_addr()
        .map_err(|e| ServeError::Io(e.to_string()))?;

    let sealer = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(seal_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = recorder.seal_if_due().await {
                    tracing::warn!(error = %e, "sealing failed; will retry");
                }
            }
        })
    };
    // Retention on its own task, so sealing never waits for it.
    let retainer = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = recorder.apply_retention().await {
                    tracing::warn!(error = %e, "retention failed; will retry");
                }
            }
        })
    };
    // Bounded servers (tollgate_wire::server): slow, big or many clients get
    // cut off or 503, never a hang.
    let limits = options.limits;
    let served = match &options.tls {
        Some((cert, key)) => {
            let config = crate::http::tls::server_config(cert, key, client_ca.as_deref())?;
            let accept = crate::http::tls::tls_accept(tcp, config, &limits, overload.clone());
            tokio::spawn(tollgate_wire::server::serve_counted(
                accept, app, limits, overload, shutdown,
            ))
        }
        None => {
            let accept = crate::http::tls::plain_accept(tcp);
            tokio::spawn(tollgate_wire::server::serve_counted(
                accept, app, limits, overload, shutdown,
            ))
        }
    };
    let handle = tokio::spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "server failed");
        }
        sealer.abort();
        retainer.abort();
        if let Some(t) = trust_follower {
            t.abort();
        }
    });
    Ok(Running {
        local_addr,
        recorder,
        handle,
    })
}

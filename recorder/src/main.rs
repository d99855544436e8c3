//! `tollgate-recorder`: thin. Parse flags, start the server, wait for a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate_recorder::server::{AuthChoice, ServeOptions, StorageChoice, start};

/// The Tollgate recorder: receipt ingestion, storage, sealing, quota leases, usage
/// and bundle export.
#[derive(Parser, Debug)]
#[command(name = "tollgate-recorder", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the recorder API.
    Serve(ServeArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    Sqlite,
    Postgres,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// Loopback only, with a generated bearer token in a 0600 file.
    Local,
    /// Projected ServiceAccount tokens checked by TokenReview (in a cluster).
    TokenReview,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory: recorder key, SQLite database, trust anchor, local token.
    #[arg(long, env = "TOLLGATE_RECORDER_DATA_DIR")]
    data_dir: PathBuf,
    /// Listen address. Without TLS it must be loopback.
    #[arg(
        long,
        env = "TOLLGATE_RECORDER_LISTEN",
        default_value = "127.0.0.1:15090"
    )]
    listen: SocketAddr,
    /// A RecorderConfig YAML file (defaults apply without one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A TrustAnchor file with the receipt CA key(s). Repeatable.
    #[arg(long = "trust-anchor")]
    trust_anchor: Vec<PathBuf>,
    /// Storage backend.
    #[arg(long, value_enum, default_value = "sqlite")]
    storage: Storage,
    /// File holding the PostgreSQL URL (for --storage postgres), e.g. a mounted Secret.
    #[arg(long)]
    postgres_url_file: Option<PathBuf>,
    /// Authentication mode.
    #[arg(long, value_enum, default_value = "local")]
    auth: Auth,
    /// Local-mode token file (default DATA_DIR/local-token), created 0600 if missing.
    #[arg(long)]
    local_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Recorder key file (64 hex, e.g. from a Secret); default DATA_DIR/recorder.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Who may read usage and export bundles besides the local token: a username,
    /// system:serviceaccount:NS:NAME, or group:NAME. Repeatable.
    #[arg(long = "reader")]
    reader: Vec<String>,
    /// The server's bounds: --max-connections, --max-requests-in-flight,
    /// --header-read-timeout, --body-idle-timeout.
    #[command(flatten)]
    limits: tollgate_wire::server::LimitFlags,
}

fn options(args: ServeArgs) -> anyhow::Result<ServeOptions> {
    let storage = match args.storage {
        Storage::Sqlite => StorageChoice::Sqlite(args.data_dir.join("recorder.db")),
        Storage::Postgres => {
            let path = args
                .postgres_url_file
                .ok_or_else(|| anyhow::anyhow!("--storage postgres needs --postgres-url-file"))?;
            let url = tollgate_wire::secret::read_secret_file(&path)?;
            StorageChoice::Postgres(url.trim().to_string())
        }
    };
    let auth = match args.auth {
        Auth::Local => AuthChoice::Local {
            token_file: args.local_token_file.unwrap_or_else(|| {
                args.data_dir
                    .join(tollgate_recorder::identity::LOCAL_TOKEN_FILE)
            }),
        },
        Auth::TokenReview => AuthChoice::TokenReview,
    };
    Ok(ServeOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        config: args.config,
        trust_anchors: args.trust_anchor,
        storage,
        auth,
        tls: args.tls_cert.zip(args.tls_key),
        key_file: args.key_file,
        readers: args.reader,
        limits: args
            .limits
            .apply(tollgate_wire::server::ServerLimits::RECORDER),
        quota_catalog: None,
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tollgate_wire::server::raise_open_file_limit();
    let running = start(options(args)?, wait_for_signal()).await?;
    eprintln!(
        "tollgate-recorder: listening on {} origin={} backend={}",
        running.local_addr,
        running.recorder.origin(),
        running.recorder.store().backend()
    );
    running.handle.await?;
    eprintln!("tollgate-recorder: stopped");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a collected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate-recorder: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-recorder: {e:#}");
            ExitCode::from(2)
        }
    }
}

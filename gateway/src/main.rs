//! `tollgate-gateway`: thin entry point. Parse, dispatch, exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_gateway::init_network;

/// The Tollgate gateway sidecar.
#[derive(Parser, Debug)]
#[command(name = "tollgate-gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the governed API on loopback for the pod's containers.
    Run(Box<tollgate_gateway::run::RunArgs>),
    /// Write the iptables and ip6tables rules that let only the gateway's UID
    /// reach destinations outside the allowed CIDRs (run as an init container).
    InitNetwork(init_network::InitNetworkArgs),
}

fn run_gateway(args: tollgate_gateway::run::RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()?;
    runtime.block_on(tollgate_gateway::run::run(args))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::InitNetwork(args) => init_network::run(&args, &mut stdout),
        Command::Run(args) => run_gateway(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

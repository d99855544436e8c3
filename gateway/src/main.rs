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
    /// Write the iptables and ip6tables rules that let only the gateway's UID
    /// reach destinations outside the allowed CIDRs (run as an init container).
    InitNetwork(init_network::InitNetworkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::InitNetwork(args) => init_network::run(&args, &mut stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

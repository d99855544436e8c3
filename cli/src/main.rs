//! `kubectl-tollgate`: the Tollgate kubectl plugin. Thin: parse, dispatch, exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod compile;
mod crds;
mod verify;

/// Tollgate: governed, provable LLM egress for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "kubectl-tollgate", bin_name = "kubectl tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the Tollgate CRDs as YAML, ready for `kubectl apply -f -`.
    Crds,
    /// Compile manifests into the gateway config a namespace would get.
    Compile(compile::CompileArgs),
    /// Verify an exported evidence bundle offline against trust anchors.
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Crds => crds::run(&mut stdout),
        Command::Compile(args) => compile::run(&args, &mut stdout),
        Command::Verify(args) => verify::run(&args, &mut stdout),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kubectl-tollgate: {err:#}");
            ExitCode::from(2)
        }
    }
}

//! `kubectl-tollgate`: the Tollgate kubectl plugin. Thin: parse, dispatch, exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bundle;
mod cluster;
mod compile;
mod crds;
mod dashboard;
mod doctor;
mod inject;
mod keys;
mod lint;
mod local;
mod prices;
mod reconcile;
mod usage;
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
    /// Run a gateway and a recorder on this machine from a manifest directory.
    Local(local::LocalArgs),
    /// Check a setup: config, keys, trust anchors, recorder and spool; exit 1 on a failure.
    Doctor(doctor::DoctorArgs),
    /// Compile manifests into the gateway config a namespace would get.
    Compile(compile::CompileArgs),
    /// Verify an exported evidence bundle offline against trust anchors.
    Verify(verify::VerifyArgs),
    /// Tokens, requests and cost by namespace, serviceAccount, provider, model and time.
    Usage(usage::UsageArgs),
    /// Open the usage dashboard of the cluster in kubeconfig: a local proxy on
    /// loopback that reaches the recorder through the API server as you.
    Dashboard(dashboard::DashboardArgs),
    /// Export evidence bundles from a recorder.
    Bundle(bundle::BundleArgs),
    /// Print the cluster's trust anchors (receipt CA and recorder keys) as the
    /// TrustAnchor YAML an auditor keeps for `verify --trust-anchor`.
    Keys(keys::KeysArgs),
    /// Compare receipts in a bundle with a provider's usage export.
    Reconcile(reconcile::ReconcileArgs),
    /// Each model's price table and the SHA-256 receipts record for it.
    Prices(prices::PricesArgs),
    /// Inject the gateway into pods and workload templates offline, as the webhook would.
    Inject(inject::InjectArgs),
    /// Check pods and workload templates against the admission rules.
    Lint(lint::LintArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Crds => crds::run(&mut stdout),
        Command::Local(args) => local::run(&args, &mut stdout),
        Command::Doctor(args) => doctor::run(&args, &mut stdout),
        Command::Compile(args) => compile::run(&args, &mut stdout),
        Command::Verify(args) => verify::run(&args, &mut stdout),
        Command::Usage(args) => usage::run(&args, &mut stdout),
        Command::Dashboard(args) => dashboard::run(&args, &mut stdout),
        Command::Bundle(args) => bundle::run(&args, &mut stdout),
        Command::Keys(args) => keys::run(&args, &mut stdout),
        Command::Reconcile(args) => reconcile::run(&args, &mut stdout),
        Command::Prices(args) => prices::run(&args, &mut stdout),
        Command::Inject(args) => inject::run(&args, &mut stdout),
        Command::Lint(args) => lint::run(&args, &mut stdout),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kubectl-tollgate: {err:#}");
            ExitCode::from(2)
        }
    }
}

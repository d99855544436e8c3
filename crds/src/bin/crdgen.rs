//! Writes the generated CRD YAML and CRD reference, or checks them with `--check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Generate Tollgate's CRD YAML and CRD reference docs from the Rust types.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The repository root.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Compare instead of writing; exit 1 if any file differs.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut stale = Vec::new();
    for file in tollgate_crds::generate::all_files()? {
        let path = args.root.join(&file.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == file.content {
            continue;
        }
        if args.check {
            stale.push(file.path);
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, &file.content)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("crdgen: wrote {}", file.path);
        }
    }
    if stale.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for path in &stale {
        eprintln!(
            "crdgen: {path} differs from the Rust types; run `cargo run -p tollgate-crds --bin crdgen`"
        );
    }
    Ok(ExitCode::FAILURE)
}

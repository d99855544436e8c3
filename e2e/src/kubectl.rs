//! Running the kubectl built for the same Kubernetes version as the API
//! server (`TOLLGATE_KUBECTL`, set by `e2e/cluster.sh env`), never whatever
//! kubectl is on PATH.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use crate::cluster::{RUN_HINT, kubeconfig_path};

/// Every invocation gives up on the API server after this long.
pub const REQUEST_TIMEOUT: &str = "30s";

/// What one kubectl run printed.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The cached kubectl, bound to the e2e kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// From `TOLLGATE_KUBECTL` and `KUBECONFIG`.
    pub fn from_env() -> Result<Self> {
        let kubeconfig = kubeconfig_path()?;
        let bin = std::env::var_os("TOLLGATE_KUBECTL")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("TOLLGATE_KUBECTL is not set: {RUN_HINT}"))?;
        if !bin.is_file() {
            bail!("TOLLGATE_KUBECTL={} does not exist", bin.display());
        }
        Ok(Self { bin, kubeconfig })
    }

    /// Runs `kubectl ARGS`, feeding `stdin` if given, and captures the output
    /// whatever the exit status.
    pub async fn output(&self, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
        let mut command = Command::new(&self.bin);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--request-timeout={REQUEST_TIMEOUT}"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = stdin.map(str::to_owned);
        let shown = args.join(" ");
        tokio::task::spawn_blocking(move || -> Result<KubectlOutput> {
            let mut child = command.spawn().context("starting kubectl")?;
            if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
                pipe.write_all(input.as_bytes())
                    .context("writing kubectl's stdin")?;
            }
            let out = child.wait_with_output().context("waiting for kubectl")?;
            Ok(KubectlOutput {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        })
        .await
        .context("kubectl task")?
        .with_context(|| format!("kubectl {shown}"))
    }

    /// Runs `kubectl ARGS` and returns stdout; an error, with stderr, unless
    /// it exits 0.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        self.checked(args, None).await
    }

    /// Like [`Kubectl::run`], with `stdin` fed to kubectl (e.g. `apply -f -`).
    pub async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        self.checked(args, Some(stdin)).await
    }

    async fn checked(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.output(args, stdin).await?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                out.stderr,
                out.stdout
            );
        }
        Ok(out.stdout)
    }
}

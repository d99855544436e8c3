//! The workspace's binaries as child processes.
//!
//! [`workspace_binary`] finds a binary where cargo put it for this build
//! (`cargo test --workspace` builds every package's binaries before any test
//! runs, and `make unit` builds them explicitly), so tests never run cargo
//! themselves. [`Listening::start`] spawns one, echoes its stderr with a tag,
//! and waits for the line on which it says where it listens.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a binary may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a binary could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "{path} does not exist: build the workspace's binaries first \
         (`cargo build --workspace --bins`; `make unit` and `e2e/run.sh` do)"
    )]
    NotBuilt { path: PathBuf },
    #[error("cannot tell where cargo puts binaries: {0}")]
    NoTargetDir(String),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited or stayed silent for {timeout:?} without printing {prefix:?}")]
    NotListening {
        program: String,
        prefix: String,
        timeout: Duration,
    },
    #[error("signalling {program}: {message}")]
    Signal { program: String, message: String },
}

/// The directory cargo put this build's binaries in: the test executable runs
/// from `<target>/<profile>/deps/`, the binaries sit in `<target>/<profile>/`.
pub fn binary_dir() -> Result<PathBuf, ProcessError> {
    let exe = std::env::current_exe().map_err(|e| ProcessError::NoTargetDir(e.to_string()))?;
    let deps = exe
        .parent()
        .ok_or_else(|| ProcessError::NoTargetDir(exe.display().to_string()))?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// A binary of this workspace, as this build made it: `$env_override` when set
/// and not empty (to test another build, such as a release one), else the
/// binary next to the test executable.
pub fn workspace_binary(env_override: &str, bin: &str) -> Result<PathBuf, ProcessError> {
    if let Some(path) = std::env::var_os(env_override).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let path = binary_dir()?.join(bin);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProcessError::NotBuilt { path })
    }
}

/// The gateway binary (`TOLLGATE_GATEWAY_BIN` overrides).
pub fn gateway_binary() -> Result<PathBuf, ProcessError> {
    workspace_binary("TOLLGATE_GATEWAY_BIN", "tollgate-gateway")
}

/// The recorder binary (`TOLLGATE_RECORDER_BIN` overrides).
pub fn recorder_binary() -> Result<PathBuf, ProcessError> {
    workspace_binary("TOLLGATE_RECORDER_BIN", "tollgate-recorder")
}

/// The operator binary (`TOLLGATE_OPERATOR_BIN` overrides).
pub fn operator_binary() -> Result<PathBuf, ProcessError> {
    workspace_binary("TOLLGATE_OPERATOR_BIN", "tollgate-operator")
}

/// The kubectl plugin, `kubectl-tollgate` (`TOLLGATE_CLI_BIN` overrides).
pub fn cli_binary() -> Result<PathBuf, ProcessError> {
    workspace_binary("TOLLGATE_CLI_BIN", "kubectl-tollgate")
}

/// A started child that said where it listens.
#[derive(Debug)]
pub struct Listening {
    /// The child; its stderr is echoed by a thread, tagged.
    pub child: Child,
    /// The first word after the listening prefix (usually `host:port`).
    pub address: String,
    program: String,
}

impl Listening {
    /// Spawns `command` with stderr piped, echoes each stderr line as
    /// `[tag] line`, and waits up to [`START_TIMEOUT`] for a line starting with
    /// `prefix`; the word after it is [`Listening::address`]. A child that never
    /// says so is killed.
    pub fn start(mut command: Command, tag: &str, prefix: &str) -> Result<Self, ProcessError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child =
            command
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| ProcessError::Spawn {
                    program: program.clone(),
                    source,
                })?;
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let tag = tag.to_owned();
            let prefix = prefix.to_owned();
            std::thread::spawn(move || echo_until_listening(stderr, &tag, &prefix, tx));
        }
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => Ok(Self {
                child,
                address,
                program,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ProcessError::NotListening {
                    program,
                    prefix: prefix.to_owned(),
                    timeout: START_TIMEOUT,
                })
            }
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> Result<ExitStatus, ProcessError> {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !signalled.is_ok_and(|s| s.success()) {
            return Err(ProcessError::Signal {
                program: self.program,
                message: "kill -TERM failed".into(),
            });
        }
        self.child.wait().map_err(|e| ProcessError::Signal {
            program: self.program.clone(),
            message: e.to_string(),
        })
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_9(mut self) -> Result<(), ProcessError> {
        let signal = |e: std::io::Error| ProcessError::Signal {
            program: self.program.clone(),
            message: e.to_string(),
        };
        self.child.kill().map_err(signal)?;
        self.child.wait().map_err(signal)?;
        Ok(())
    }
}

fn echo_until_listening(
    stderr: impl std::io::Read,
    tag: &str,
    prefix: &str,
    tx: mpsc::Sender<String>,
) {
    let mut tx = Some(tx);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix(prefix)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        eprintln!("[{tag}] {line}");
    }
}

/// A fresh, empty directory `<base>/<name>-<pid>-<n>`.
pub fn fresh_dir(base: &Path, name: &str) -> std::io::Result<PathBuf> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes a file holding a secret (a key, a token) readable by its owner only,
/// as the binaries require of such files.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_line_gives_the_address() {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo 'starting' >&2; echo 'demo: listening on 127.0.0.1:4242 (http)' >&2; sleep 30",
        ]);
        let started = Listening::start(command, "demo", "demo: listening on ").unwrap();
        assert_eq!(started.address, "127.0.0.1:4242");
        started.kill_9().unwrap();
    }

    #[test]
    fn a_child_that_exits_silently_is_an_error_not_a_hang() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'no port for you' >&2; exit 3"]);
        let err = Listening::start(command, "demo", "demo: listening on ").unwrap_err();
        assert!(matches!(err, ProcessError::NotListening { .. }), "{err}");
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = workspace_binary("TOLLGATE_TEST_SUPPORT_UNSET", "no-such-binary").unwrap_err();
        assert!(
            err.to_string().contains("cargo build --workspace --bins"),
            "{err}"
        );
    }
}

//! Running the real binaries: the recorder on loopback, and the CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tollgate_evidence::{KeyRole, PublicKey, Timestamp};
use tollgate_recorder::testkit::key_from;

/// The recorder binary cargo built for these tests.
pub fn recorder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate-recorder"))
}

/// Another workspace binary next to the recorder's, brought up to date once per
/// test process (cargo builds only this package's binaries for its tests).
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = recorder_bin().with_file_name(bin);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {bin}");
        built.push(bin.to_string());
    }
    path
}

/// Writes the receipt CA's TrustAnchor (the testkit CA) into `dir`.
pub fn ca_anchor(dir: &Path) -> PathBuf {
    let path = dir.join("ca-anchor.yaml");
    std::fs::write(
        &path,
        tollgate_recorder::trust::anchor_yaml(
            "receipt-ca",
            &PublicKey::of_signing_key(&key_from("receipt-ca")),
            KeyRole::ReceiptCa,
            Timestamp::UNIX_EPOCH,
        ),
    )
    .unwrap();
    path
}

/// A running recorder process.
pub struct RecorderProcess {
    pub child: Child,
    pub url: String,
    pub token: String,
}

impl RecorderProcess {
    /// Starts `tollgate-recorder serve` on 127.0.0.1:0 with `extra` flags and waits
    /// for its listening line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(recorder_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("tollgate-recorder: listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                eprintln!("[recorder] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the recorder did not start");
        let token = std::fs::read_to_string(data_dir.join("local-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child,
            url: format!("http://{addr}"),
            token,
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap();
    }
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn kubectl_tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(workspace_bin("tollgate-cli", "kubectl-tollgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

//! Running the real binaries: the recorder on loopback, and the CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tollgate_evidence::{KeyRole, PublicKey, Timestamp};
use tollgate_test_support::fixtures::key_from;
use tollgate_test_support::process::{Listening, cli_binary};

/// The recorder binary cargo built for these tests.
pub fn recorder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate-recorder"))
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
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// [`RecorderProcess::start`] on the address `listen` (to restart a
    /// recorder where its clients already point).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(recorder_bin());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let started = Listening::start(command, "recorder", "tollgate-recorder: listening on ")
            .expect("the recorder did not start");
        let token = std::fs::read_to_string(data_dir.join("local-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            url: format!("http://{}", started.address),
            child: started.child,
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

impl Drop for RecorderProcess {
    /// A test that fails midway leaves no recorder behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn kubectl_tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cli_binary().unwrap())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compiles `examples/quickstart` for namespace `demo` into `dir/cfg.json`.
pub fn quickstart_config(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let config = dir.join("cfg.json");
    let (code, _, err) = kubectl_tollgate(&[
        "compile",
        "--manifests",
        root.join("examples/quickstart").to_str().unwrap(),
        "-n",
        "demo",
        "-o",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    config
}

/// A local receipt CA from a fixed seed named `label`: its key file (for
/// `--ca-key-file`) and its TrustAnchor (for the recorder and the verifier).
pub fn local_ca(dir: &Path, label: &str) -> (PathBuf, PathBuf) {
    let ca = key_from(label);
    let key_file = dir.join(format!("{label}.key"));
    tollgate_test_support::process::write_private(&key_file, hex::encode(ca.to_bytes())).unwrap();
    let anchor_file = dir.join(format!("{label}-anchor.yaml"));
    std::fs::write(
        &anchor_file,
        tollgate_recorder::trust::anchor_yaml(
            label,
            &PublicKey::of_signing_key(&ca),
            KeyRole::ReceiptCa,
            Timestamp::UNIX_EPOCH,
        ),
    )
    .unwrap();
    (key_file, anchor_file)
}

/// `tollgate-gateway run` as pod `demo/POD_NAME` on `config`, on loopback
/// ports of its choosing, spooling to `spool`, certified by `ca_key_file`.
fn demo_gateway_command(
    config: &Path,
    spool: &Path,
    ca_key_file: &Path,
    pod_name: &str,
) -> Command {
    let mut command = Command::new(tollgate_test_support::process::gateway_binary().unwrap());
    command
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .args(["--namespace", "demo", "--service-account", "app"])
        .args([
            "--pod-name",
            pod_name,
            "--pod-uid",
            "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
        ])
        .args(["--ca-key-file", ca_key_file.to_str().unwrap()]);
    command
}

/// Starts `tollgate-gateway run` as pod `demo/app-0` on `config`, spooling
/// to `spool`, certified by the local CA `ca_key_file`, with `extra` flags.
pub fn start_demo_gateway(
    config: &Path,
    spool: &Path,
    ca_key_file: &Path,
    extra: &[&str],
) -> Listening {
    let mut command = demo_gateway_command(config, spool, ca_key_file, "app-0");
    command.args(extra);
    Listening::start(command, "gateway", "tollgate-gateway: listening api=")
        .expect("gateway did not start")
}

/// Compiles the quickstart provider and policy plus one EgressQuota `name`
/// of `requests` a day with `fail_mode`, for namespace `demo`.
pub fn quota_config(dir: &Path, name: &str, requests: u64, fail_mode: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let m = dir.join(format!("manifests-{name}-{fail_mode}"));
    std::fs::create_dir_all(&m).unwrap();
    for f in ["provider.yaml", "policy.yaml"] {
        std::fs::copy(root.join("examples/quickstart").join(f), m.join(f)).unwrap();
    }
    std::fs::write(
        m.join("quota.yaml"),
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: EgressQuota\nmetadata:\n  name: {name}\nspec:\n  limits:\n  - name: daily-requests\n    window: day\n    requests: {requests}\n  enforcement: enforce\n  failMode: {fail_mode}\n"
        ),
    )
    .unwrap();
    let config = dir.join(format!("config-{name}-{fail_mode}.json"));
    let (code, _, err) = kubectl_tollgate(&[
        "compile",
        "--manifests",
        m.to_str().unwrap(),
        "-n",
        "demo",
        "-o",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    config
}

/// A gateway process (pod `demo/NAME`) that ships to a recorder and takes
/// its quota leases there.
pub struct GatewayProcess {
    pub child: Child,
    /// Its API address.
    pub api: String,
    /// Its spool directory.
    pub spool: PathBuf,
}

impl GatewayProcess {
    /// Starts `tollgate-gateway run` on `config`, spooling under `dir`.
    pub fn start(
        dir: &Path,
        name: &str,
        config: &Path,
        ca_key: &Path,
        recorder_url: &str,
        token: &Path,
    ) -> Self {
        let spool = dir.join(format!("spool-{name}"));
        let mut command = demo_gateway_command(config, &spool, ca_key, name);
        command
            .args(["--recorder-url", recorder_url])
            .args(["--recorder-token-file", token.to_str().unwrap()])
            .env("RUST_LOG", "warn");
        let started = Listening::start(command, name, "tollgate-gateway: listening api=")
            .expect("gateway did not start");
        Self {
            child: started.child,
            api: started.address,
            spool,
        }
    }

    /// SIGTERM; the gateway must exit cleanly.
    pub fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for GatewayProcess {
    /// A test that fails midway leaves no gateway behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

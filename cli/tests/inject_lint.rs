#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! `kubectl-tollgate inject` and `lint`, run as the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: chat
  namespace: team-a
spec:
  containers:
  - name: app
    image: example/app:1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: team-a
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example/web:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team-a
data:
  key: value
"#;

const BROKEN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sneaky
  namespace: team-a
spec:
  selector:
    matchLabels: {app: sneaky}
  template:
    metadata:
      labels: {app: sneaky}
    spec:
      hostNetwork: true
      containers:
      - name: app
        image: example/app:1
        env:
        - name: HTTPS_PROXY
          value: http://198.18.0.5:3128
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-tollgate"))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn docs(yaml: &[u8]) -> Vec<Value> {
    serde_saphyr::from_multiple(std::str::from_utf8(yaml).unwrap()).unwrap()
}

fn init_names(pod_spec: &Value) -> Vec<String> {
    pod_spec["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn inject_adds_the_gateway_to_pods_and_templates_and_is_idempotent() {
    let dir = tempdir("inject");
    let input = write(&dir, "in.yaml", MANIFESTS);
    let out = run(&[
        "inject",
        "-f",
        input.to_str().unwrap(),
        "--gateway-image",
        "tollgate/gateway:test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = docs(&out.stdout);
    assert_eq!(injected.len(), 3);
    let want = vec![
        "tollgate-init-network".to_string(),
        "tollgate-gateway".to_string(),
    ];
    assert_eq!(init_names(&injected[0]["spec"]), want);
    assert_eq!(init_names(&injected[1]["spec"]["template"]["spec"]), want);
    assert_eq!(
        injected[0]["spec"]["initContainers"][1]["image"],
        "tollgate/gateway:test"
    );
    assert_eq!(
        injected[0]["metadata"]["annotations"]["tollgate.dev/injected"],
        "v1"
    );
    assert_eq!(injected[2]["data"]["key"], "value");

    // Injecting the output again changes nothing.
    let again_input = write(
        &dir,
        "again.yaml",
        std::str::from_utf8(&out.stdout).unwrap(),
    );
    let again = run(&[
        "inject",
        "-f",
        again_input.to_str().unwrap(),
        "--gateway-image",
        "tollgate/gateway:test",
    ]);
    assert!(again.status.success());
    assert_eq!(docs(&again.stdout), injected);

    // And the injected output lints clean, pods checked as admitted pods.
    let lint = run(&[
        "lint",
        "-f",
        again_input.to_str().unwrap(),
        "--gateway-image",
        "tollgate/gateway:test",
    ]);
    assert_eq!(
        lint.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    assert!(lint.stdout.is_empty());
}

#[test]
fn lint_reports_each_rule_with_file_kind_and_name_and_exits_1() {
    let dir = tempdir("lint");
    write(&dir, "good.yaml", MANIFESTS);
    let sub = dir.join("nested");
    std::fs::create_dir_all(&sub).unwrap();
    let broken = write(&sub, "broken.yaml", BROKEN);
    let out = run(&["lint", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let prefix = format!("{}: Deployment/sneaky: ", broken.display());
    assert!(
        lines[0].starts_with(&format!("{prefix}host-network ")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{prefix}proxy-env ")),
        "{stdout}"
    );
}

#[test]
fn lint_exits_2_on_unreadable_input() {
    let dir = tempdir("unreadable");
    let out = run(&["lint", "-f", dir.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let bad = write(&dir, "bad.yaml", "kind: [unclosed\n");
    let out = run(&["lint", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
}

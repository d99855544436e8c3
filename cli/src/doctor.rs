//! `kubectl tollgate doctor`: one report on a Tollgate setup (local mode's data
//! directory and manifests, or a recorder URL): config validity, keys, trust
//! anchors, recorder reachability and the receipt spool. Exits 1 if any check
//! fails, 0 otherwise (warnings included).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tollgate_evidence::{KeyRole, PublicKey};
use tollgate_wire::client::{HttpClient, public_roots};

use crate::compile::ManifestObjects;
use crate::local::{RECEIPT_CA_KEY_FILE, TRUST_ANCHOR_FILE};

/// Flags of `doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Manifests to check (as `local --manifests` reads them).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// The namespace the manifests are for.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// A local-mode data directory: keys, trust anchor, recorder and spool.
    #[arg(long, default_value = "tollgate-data")]
    pub data_dir: PathBuf,
    /// The recorder to probe (default: local mode's, http://127.0.0.1:15090).
    #[arg(long)]
    pub recorder: Option<String>,
    /// Bearer token file for --recorder (default: DATA_DIR/local-token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A gateway's admin address, whose provider keys' health to check
    /// (default: local mode's, http://127.0.0.1:15081; unreachable is then
    /// only a warning).
    #[arg(long)]
    pub gateway_admin: Option<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// The manifests compile without problems and every Secret reference resolves.
pub fn check_config(dir: &Path, namespace: &str) -> Check {
    let objects = match ManifestObjects::read(dir, namespace) {
        Ok(o) => o,
        Err(e) => return check("config", Status::Fail, format!("{}: {e:#}", dir.display())),
    };
    let compiled = objects.compile(namespace, &Default::default());
    if let Some(p) = compiled.problems.first() {
        return check(
            "config",
            Status::Fail,
            format!(
                "{}: {}: {} ({} problem(s))",
                p.object,
                p.reason,
                p.message,
                compiled.problems.len()
            ),
        );
    }
    if let Err(e) = crate::local::credentials_for(&objects, &compiled.config) {
        return check("config", Status::Fail, format!("{e:#}"));
    }
    let providers = compiled.config.providers.len();
    let policies = compiled.config.policies.len();
    if policies == 0 {
        return check(
            "config",
            Status::Warn,
            "no EgressPolicy applies: every request will be refused",
        );
    }
    check(
        "config",
        Status::Ok,
        format!(
            "{providers} provider(s), {policies} policy(ies), policy hash {}",
            &compiled.config.policy_hash
        ),
    )
}

fn key_mode_ok(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        true
    }
}

/// The receipt CA and recorder keys exist, parse and are private; the trust
/// anchor holds both public halves with the right roles.
pub fn check_keys_and_anchor(data: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let mut publics = Vec::new();
    for (file, role) in [
        (RECEIPT_CA_KEY_FILE, KeyRole::ReceiptCa),
        (tollgate_recorder::identity::KEY_FILE, KeyRole::Recorder),
    ] {
        let path = data.join(file);
        match tollgate_recorder::identity::read_key_file(&path) {
            Ok(key) if key_mode_ok(&path) => {
                let public = PublicKey::of_signing_key(&key);
                out.push(check(
                    "keys",
                    Status::Ok,
                    format!("{file}: key id {}", public.key_id()),
                ));
                publics.push((public, role));
            }
            Ok(_) => out.push(check(
                "keys",
                Status::Fail,
                format!("{}: readable by others (want mode 0600)", path.display()),
            )),
            Err(e) => out.push(check(
                "keys",
                Status::Fail,
                format!("{}: {e}", path.display()),
            )),
        }
    }
    let anchor = data.join(TRUST_ANCHOR_FILE);
    match tollgate_recorder::trust::load_trust_roots(&[&anchor]) {
        Err(e) => out.push(check(
            "trust anchors",
            Status::Fail,
            format!("{}: {e}", anchor.display()),
        )),
        Ok(roots) => {
            let missing: Vec<String> = publics
                .iter()
                .filter(|(public, role)| {
                    !roots
                        .keys
                        .iter()
                        .any(|k| k.public_key == *public && k.role == *role)
                })
                .map(|(public, _)| public.key_id().to_string())
                .collect();
            if missing.is_empty() {
                out.push(check(
                    "trust anchors",
                    Status::Ok,
                    format!(
                        "{}: {} key(s), matching the data directory",
                        anchor.display(),
                        roots.keys.len()
                    ),
                ));
            } else {
                out.push(check(
                    "trust anchors",
                    Status::Fail,
                    format!(
                        "{} does not hold key(s) {}: bundles will not verify against it",
                        anchor.display(),
                        missing.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// Spool files still present are streams not yet fully shipped.
pub fn check_spool(spool: &Path) -> Check {
    let entries = match std::fs::read_dir(spool) {
        Ok(e) => e,
        Err(_) => {
            return check(
                "spool",
                Status::Warn,
                format!("{}: no spool yet", spool.display()),
            );
        }
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in entries.flatten() {
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            files += 1;
            bytes += meta.len();
        }
    }
    let probe = spool.join(".doctor-probe");
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    if !writable {
        return check(
            "spool",
            Status::Fail,
            format!("{}: not writable", spool.display()),
        );
    }
    match files {
        0 => check("spool", Status::Ok, "empty: everything is shipped"),
        n => check(
            "spool",
            Status::Warn,
            format!(
                "{n} stream file(s), {bytes} bytes not yet fully shipped (a running gateway keeps one open)"
            ),
        ),
    }
}

/// The client doctor's HTTP checks use: public roots, 5 s per call.
fn probe_client() -> Result<HttpClient, String> {
    public_roots()
        .map(|tls| HttpClient::new(tls, Duration::from_secs(5)))
        .map_err(|e| e.to_string())
}

async fn check_recorder(url: &str, token_file: &Path) -> Check {
    let client = match probe_client() {
        Ok(client) => client,
        Err(e) => return check("recorder", Status::Fail, e),
    };
    match client
        .send(http::Method::GET, &format!("{url}/ready"), None, None, 4096)
        .await
    {
        Ok(r) if r.status.is_success() => {}
        Ok(r) => {
            return check(
                "recorder",
                Status::Fail,
                format!("{url}/ready answered {}", r.status),
            );
        }
        Err(e) => return check("recorder", Status::Fail, format!("{url}: {e}")),
    }
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            return check(
                "recorder",
                Status::Warn,
                format!(
                    "{url} is ready, but the token {} is unreadable: {e}",
                    token_file.display()
                ),
            );
        }
    };
    match client
        .send(
            http::Method::GET,
            &format!("{url}/v1/usage?since=1h"),
            Some(&token),
            None,
            1 << 20,
        )
        .await
    {
        Ok(r) if r.status.is_success() => check(
            "recorder",
            Status::Ok,
            format!("{url}: ready, token accepted"),
        ),
        Ok(r) => check(
            "recorder",
            Status::Fail,
            format!("{url}: the token was refused ({})", r.status),
        ),
        Err(e) => check("recorder", Status::Fail, format!("{url}: {e}")),
    }
}

/// The provider keys' health from a gateway's `/keys` answer: a refused key
/// fails the check, naming provider and key index (never the key). Pure.
pub fn check_key_health(answer: &serde_json::Value) -> Check {
    let Some(keys) = answer["keys"].as_array() else {
        return check(
            "provider keys",
            Status::Fail,
            "the gateway's /keys answer has no keys list",
        );
    };
    let refused: Vec<String> = keys
        .iter()
        .filter(|k| k["state"] != "healthy")
        .map(|k| {
            format!(
                "{} key #{} refused with {} (out of routing; probed again at {})",
                k["provider"].as_str().unwrap_or("?"),
                k["index"],
                k["last_status"],
                k["next_probe_ms"]
                    .as_u64()
                    .and_then(|ms| tollgate_evidence::Timestamp::from_unix_millis(ms).ok())
                    .map_or_else(|| "?".into(), |t| t.to_canonical_string()),
            )
        })
        .collect();
    if keys.is_empty() {
        check(
            "provider keys",
            Status::Ok,
            "no provider keys (keyless or dry-run providers)",
        )
    } else if refused.is_empty() {
        check(
            "provider keys",
            Status::Ok,
            format!("{} key(s), all accepted by their providers", keys.len()),
        )
    } else {
        check("provider keys", Status::Fail, refused.join("; "))
    }
}

async fn check_gateway_keys(url: &str, explicit: bool) -> Check {
    let unreachable = |why: String| {
        let status = if explicit { Status::Fail } else { Status::Warn };
        check("provider keys", status, why)
    };
    let client = match probe_client() {
        Ok(client) => client,
        Err(e) => return unreachable(e),
    };
    match client
        .send(
            http::Method::GET,
            &format!("{url}/keys"),
            None,
            None,
            1 << 20,
        )
        .await
    {
        Ok(r) if r.status.is_success() => match serde_json::from_slice(&r.body) {
            Ok(answer) => check_key_health(&answer),
            Err(e) => unreachable(format!("{url}/keys is not JSON: {e}")),
        },
        Ok(r) => unreachable(format!("{url}/keys answered {}", r.status)),
        Err(e) => unreachable(format!("no gateway at {url}: {e}")),
    }
}

/// Runs every check and prints the report.
pub fn run(args: &DoctorArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    if let Some(dir) = &args.manifests {
        checks.push(check_config(dir, &args.namespace));
    }
    checks.extend(check_keys_and_anchor(&args.data_dir));
    let url = args
        .recorder
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:15090".into());
    let token = args.token_file.clone().unwrap_or_else(|| {
        args.data_dir
            .join(tollgate_recorder::identity::LOCAL_TOKEN_FILE)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    checks.push(runtime.block_on(check_recorder(url.trim_end_matches('/'), &token)));
    let admin = args
        .gateway_admin
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:15081".into());
    checks.push(runtime.block_on(check_gateway_keys(
        admin.trim_end_matches('/'),
        args.gateway_admin.is_some(),
    )));
    checks.push(check_spool(&args.data_dir.join("spool")));

    for c in &checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        writeln!(out, "{status:<5} {:<14} {}", c.name, c.detail)?;
    }
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    writeln!(
        out,
        "doctor: {}",
        match worst {
            Status::Ok => "all checks passed",
            Status::Warn => "passed with warnings",
            Status::Fail => "FAILED",
        }
    )?;
    Ok(if worst == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tg-doctor-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn quickstart() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
    }

    #[test]
    fn the_quickstart_is_a_valid_config_and_a_broken_reference_is_not() {
        let ok = check_config(&quickstart(), "default");
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        let dir = temp("config");
        std::fs::write(
            dir.join("policy.yaml"),
            "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: p\nspec:\n  mode: enforce\n  allow:\n  - providerRef: missing\n    models: [\"*\"]\n",
        )
        .unwrap();
        let bad = check_config(&dir, "default");
        assert_eq!(bad.status, Status::Fail, "{bad:?}");
        assert!(bad.detail.contains("missing"), "{bad:?}");
    }

    #[test]
    fn keys_must_match_the_trust_anchor() {
        let dir = temp("keys");
        let missing = check_keys_and_anchor(&dir);
        assert!(
            missing.iter().all(|c| c.status == Status::Fail),
            "{missing:?}"
        );

        let ca = tollgate_recorder::identity::load_or_create_key(&dir.join(RECEIPT_CA_KEY_FILE))
            .unwrap();
        let rec = tollgate_recorder::identity::load_or_create_key(
            &dir.join(tollgate_recorder::identity::KEY_FILE),
        )
        .unwrap();
        std::fs::write(
            dir.join(TRUST_ANCHOR_FILE),
            crate::local::trust_anchor_yaml(
                &PublicKey::of_signing_key(&ca),
                &PublicKey::of_signing_key(&rec),
            ),
        )
        .unwrap();
        let good = check_keys_and_anchor(&dir);
        assert!(good.iter().all(|c| c.status == Status::Ok), "{good:?}");

        // An anchor for other keys: bundles would not verify.
        let other = tollgate_evidence::SigningKey::from_bytes(&[9; 32]);
        std::fs::write(
            dir.join(TRUST_ANCHOR_FILE),
            crate::local::trust_anchor_yaml(
                &PublicKey::of_signing_key(&other),
                &PublicKey::of_signing_key(&rec),
            ),
        )
        .unwrap();
        let bad = check_keys_and_anchor(&dir);
        let anchor = bad.iter().find(|c| c.name == "trust anchors").unwrap();
        assert_eq!(anchor.status, Status::Fail, "{anchor:?}");
    }

    #[test]
    fn a_refused_provider_key_fails_the_check_by_index() {
        let healthy = serde_json::json!({"keys": [
            {"provider": "openai", "index": 0, "state": "healthy"},
            {"provider": "openai", "index": 1, "state": "healthy"},
        ]});
        let ok = check_key_health(&healthy);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.detail.contains("2 key(s)"), "{ok:?}");
        let refused = serde_json::json!({"keys": [
            {"provider": "openai", "index": 0, "state": "healthy"},
            {"provider": "openai", "index": 1, "state": "unhealthy", "since_ms": 1_765_000_000_000u64,
             "next_probe_ms": 1_765_000_030_000u64, "last_status": 401},
        ]});
        let bad = check_key_health(&refused);
        assert_eq!(bad.status, Status::Fail, "{bad:?}");
        assert!(
            bad.detail
                .starts_with("openai key #1 refused with 401 (out of routing; probed again at 2025-12-06T05:47:10"),
            "{bad:?}"
        );
        assert_eq!(
            check_key_health(&serde_json::json!({})).status,
            Status::Fail
        );
    }

    #[test]
    fn a_spool_with_files_is_a_warning_and_an_empty_one_is_fine() {
        let dir = temp("spool");
        assert_eq!(check_spool(&dir).status, Status::Ok);
        std::fs::write(dir.join("stream.jsonl"), b"{}\n").unwrap();
        let c = check_spool(&dir);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("1 stream file"), "{c:?}");
    }
}

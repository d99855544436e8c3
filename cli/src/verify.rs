//! `kubectl tollgate verify`: checks an evidence bundle offline against TrustAnchor
//! objects and prints the verifier's report.
//!
//! Exit codes (docs/evidence.md): 0 when every phase passes against a trust
//! anchor, or when the only finding is streams without a close record (the
//! streams of gateways still running, which a bundle exported from a live
//! cluster always has; `--require-closed` makes them fatal); 1 on any integrity
//! failure or other warning (no trust anchor); input and usage errors are
//! returned as `Err`, which `main` turns into 2.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use tollgate_evidence::report::{BundleSummary, PhaseReport};
use tollgate_evidence::{
    KeyId, KeyRole, KeyState, PublicKey, SignedCheckpoint, Timestamp, TrustRoots, TrustedKey,
    Verdict, VerificationReport, VerifyLimits, VerifyOptions, report_oversized_input,
    verify_bundle,
};

/// Largest TrustAnchor file read.
const MAX_ANCHOR_BYTES: u64 = 1024 * 1024;
/// Largest checkpoint file read.
const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;
/// The TrustAnchor API version this reads.
const TRUST_ANCHOR_API_VERSION: &str = "tollgate.dev/v1alpha1";

/// How the report is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A report for people.
    Text,
    /// The machine report (JSON).
    Json,
}

/// Flags of `verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The evidence bundle (JSON) to verify.
    pub bundle: PathBuf,
    /// A TrustAnchor file (YAML or JSON; several documents or a List allowed).
    /// Repeatable. Without one the verdict is at best a warning.
    #[arg(long = "trust-anchor")]
    pub trust_anchor: Vec<PathBuf>,
    /// A signed checkpoint kept outside the recorder: one checkpoint's JSON, or a
    /// file sink's JSON lines (its last line, the newest, is used). The bundle
    /// must reach and agree with it. Repeatable.
    #[arg(long = "checkpoint")]
    pub checkpoint: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Fail (exit 1) when a stream has no close record, as for a bundle that
    /// should hold only stopped gateways.
    #[arg(long)]
    pub require_closed: bool,
    /// Largest bundle accepted, in bytes (default 256 MiB).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Most segments (default 100000).
    #[arg(long)]
    pub max_segments: Option<u64>,
    /// Most envelopes in one segment (default 1000000).
    #[arg(long)]
    pub max_envelopes_per_segment: Option<u64>,
    /// Most envelopes in the bundle (default 2000000).
    #[arg(long)]
    pub max_envelopes: Option<u64>,
    /// Most key certificates (default 100000).
    #[arg(long)]
    pub max_certificates: Option<u64>,
    /// Most hashes in one proof (default 128).
    #[arg(long)]
    pub max_proof_len: Option<u64>,
}

impl VerifyArgs {
    fn limits(&self) -> VerifyLimits {
        let defaults = VerifyLimits::default();
        VerifyLimits {
            max_bundle_bytes: self.max_bytes.unwrap_or(defaults.max_bundle_bytes),
            max_segments: self.max_segments.unwrap_or(defaults.max_segments),
            max_envelopes_per_segment: self
                .max_envelopes_per_segment
                .unwrap_or(defaults.max_envelopes_per_segment),
            max_envelopes: self.max_envelopes.unwrap_or(defaults.max_envelopes),
            max_certificates: self.max_certificates.unwrap_or(defaults.max_certificates),
            max_proof_len: self.max_proof_len.unwrap_or(defaults.max_proof_len),
            ..defaults
        }
    }
}

/// Verifies the bundle and prints the report to `out`.
pub fn run(args: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let trust = load_trust_roots(&args.trust_anchor)?;
    let known_checkpoints = args
        .checkpoint
        .iter()
        .map(|path| load_checkpoint(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trusted_keys = trust.as_ref().map_or(0, |t| t.keys.len());
    let options = VerifyOptions {
        trust,
        known_checkpoints,
        limits: args.limits(),
    };
    let report = match read_bounded(&args.bundle, options.limits.max_bundle_bytes)? {
        Bounded::Within(bytes) => verify_bundle(&bytes, &options),
        // Refused before reading: the same report the verifier gives for it.
        Bounded::TooLarge(len) => report_oversized_input(len, &options),
    };
    match args.output {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &report).context("writing the report")?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_text_report(
            out,
            &args.bundle,
            trusted_keys,
            &report,
            args.require_closed,
        )?,
    }
    Ok(
        if report.passed() || (report.passed_but_open_streams() && !args.require_closed) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

enum Bounded {
    Within(Vec<u8>),
    TooLarge(u64),
}

/// Reads `path` unless it is over `limit` bytes. Checks the size first and reads at
/// most `limit + 1` bytes, so a file that grows meanwhile is still refused.
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Bounded> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > limit {
        return Ok(Bounded::TooLarge(len));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let read = bytes.len() as u64;
    Ok(if read > limit {
        Bounded::TooLarge(read)
    } else {
        Bounded::Within(bytes)
    })
}

fn read_small_file(path: &Path, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    match read_bounded(path, limit)? {
        Bounded::Within(bytes) => Ok(bytes),
        Bounded::TooLarge(len) => {
            bail!(
                "{what} {} is {len} bytes, over the {limit}-byte limit",
                path.display()
            )
        }
    }
}

/// Reads a held checkpoint: a file holding one checkpoint's JSON, or a file
/// checkpoint sink's JSON lines, of which the last line (the newest checkpoint)
/// is read. Only the file's last 64 KiB are read, however long it grew.
pub fn load_checkpoint(path: &Path) -> anyhow::Result<SignedCheckpoint> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let start = len.saturating_sub(MAX_CHECKPOINT_BYTES);
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CHECKPOINT_BYTES)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    // A whole small file is one checkpoint (possibly pretty-printed) or lines.
    if start == 0
        && let Ok(checkpoint) = SignedCheckpoint::from_json(&bytes)
    {
        return Ok(checkpoint);
    }
    // The newest line; if a sink is still writing it (no newline yet), the one
    // before.
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .rev();
    let newest = lines.next().map(SignedCheckpoint::from_json);
    let outcome = match newest {
        Some(Err(_)) if !bytes.ends_with(b"\n") => lines.next().map(SignedCheckpoint::from_json),
        other => other,
    };
    outcome.and_then(Result::ok).with_context(|| {
        format!(
            "{} is neither a signed checkpoint nor checkpoint lines ending in one",
            path.display()
        )
    })
}

/// One Kubernetes object or a List of them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectDoc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<TrustAnchorSpecDoc>,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ObjectMeta {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustAnchorSpecDoc {
    // `upstream` (TLS trust for gateways) is not the verifier's concern.
    #[serde(default)]
    receipt_keys: Vec<ReceiptKeyDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReceiptKeyDoc {
    key_id: String,
    public_key: String,
    #[serde(default)]
    role: RoleDoc,
    not_before: String,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    state: StateDoc,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum RoleDoc {
    #[default]
    #[serde(rename = "receiptCA")]
    ReceiptCa,
    #[serde(rename = "recorder")]
    Recorder,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum StateDoc {
    #[default]
    Active,
    Retired,
    Revoked,
}

/// Reads every TrustAnchor in `paths` into trust roots; `None` when no path is given.
pub fn load_trust_roots(paths: &[PathBuf]) -> anyhow::Result<Option<TrustRoots>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut roots = TrustRoots::default();
    for path in paths {
        let bytes = read_small_file(path, MAX_ANCHOR_BYTES, "trust anchor file")?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        let keys = trust_anchor_keys(text).with_context(|| format!("in {}", path.display()))?;
        roots.keys.extend(keys);
    }
    ensure!(
        !roots.keys.is_empty(),
        "the trust anchors hold no receipt keys"
    );
    roots.validate().context("trust anchors")?;
    Ok(Some(roots))
}

/// The receipt keys of every TrustAnchor in a YAML or JSON text.
fn trust_anchor_keys(text: &str) -> anyhow::Result<Vec<TrustedKey>> {
    let documents: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).context("parsing JSON")?]
    } else {
        serde_saphyr::from_multiple(text).context("parsing YAML")?
    };
    let mut keys = Vec::new();
    let mut pending = documents;
    let mut anchors = 0usize;
    while let Some(document) = pending.pop() {
        let object: ObjectDoc =
            serde_json::from_value(document).context("not a Kubernetes object")?;
        match object.kind.as_deref() {
            Some("List" | "TrustAnchorList") => pending.extend(object.items),
            Some("TrustAnchor") => {
                anchors += 1;
                let name = object
                    .metadata
                    .name
                    .unwrap_or_else(|| "(unnamed)".to_owned());
                ensure!(
                    object.api_version.as_deref() == Some(TRUST_ANCHOR_API_VERSION),
                    "TrustAnchor {name}: apiVersion must be {TRUST_ANCHOR_API_VERSION}"
                );
                let spec = object
                    .spec
                    .with_context(|| format!("TrustAnchor {name} has no spec"))?;
                for (i, key) in spec.receipt_keys.into_iter().enumerate() {
                    let trusted = trusted_key(key)
                        .with_context(|| format!("TrustAnchor {name}, receiptKeys[{i}]"))?;
                    keys.push(trusted);
                }
            }
            other => bail!(
                "expected a TrustAnchor, found kind {}",
                other.unwrap_or("(none)")
            ),
        }
    }
    ensure!(anchors > 0, "no TrustAnchor found");
    Ok(keys)
}

fn trusted_key(doc: ReceiptKeyDoc) -> anyhow::Result<TrustedKey> {
    let key_id = KeyId::parse(&doc.key_id).context("keyId")?;
    let public_key = PublicKey::from_base64(&doc.public_key).context("publicKey")?;
    ensure!(
        public_key.key_id() == key_id,
        "keyId is not the SHA-256 of publicKey (that is {})",
        public_key.key_id()
    );
    let not_before = Timestamp::parse_rfc3339(&doc.not_before).context("notBefore")?;
    let not_after = doc
        .not_after
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .context("notAfter")?;
    let role = match doc.role {
        RoleDoc::ReceiptCa => KeyRole::ReceiptCa,
        RoleDoc::Recorder => KeyRole::Recorder,
    };
    let state = match doc.state {
        StateDoc::Active => KeyState::Active,
        StateDoc::Retired => KeyState::Retired,
        StateDoc::Revoked => KeyState::Revoked,
    };
    Ok(TrustedKey {
        key_id,
        public_key,
        role,
        not_before,
        not_after,
        state,
    })
}

fn write_text_report(
    out: &mut dyn Write,
    bundle: &Path,
    trusted_keys: usize,
    report: &VerificationReport,
    require_closed: bool,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Bundle:       {} ({} bytes)",
        bundle.display(),
        report.input_bytes
    )?;
    if report.trust_root_given {
        writeln!(out, "Trust roots:  {trusted_keys} trusted keys")?;
    } else {
        writeln!(out, "Trust roots:  none given (pass --trust-anchor)")?;
    }
    if let Some(s) = &report.summary {
        writeln!(
            out,
            "Contents:     {} segments, {} envelopes ({} receipts, {} forward decisions, \
             {} close records), {} streams ({} open), {} certificates, {} checkpoints",
            s.segments,
            s.envelopes,
            s.receipts,
            s.decisions,
            s.close_records,
            s.streams,
            s.open_streams,
            s.certificates,
            s.checkpoints
        )?;
        if let Some(base) = &s.base_checkpoint {
            writeln!(
                out,
                "Range:        continues the checkpoint of log size {} (root {}, issued {}); \
                 {} stream(s) began before it, {} receipt(s) name a forward decision before it",
                base.size,
                base.root.to_hex(),
                base.issued_at,
                s.streams_continued,
                s.decisions_before_range
            )?;
        }
        write_guard_checks(out, s)?;
        if s.forwarded_outcome_unknown > 0 {
            writeln!(
                out,
                "Forwarded:    {} request attempt(s) went upstream with no receipt of how they \
                 ended ({} in open streams, possibly still in flight)",
                s.forwarded_outcome_unknown, s.forwarded_outcome_unknown_in_open_streams
            )?;
        }
    }
    writeln!(out)?;
    for phase in &report.phases {
        write_phase(out, phase)?;
    }
    writeln!(out)?;
    let open = report.summary.as_ref().map_or(0, |s| s.open_streams);
    let verdict = match report.verdict {
        Verdict::Pass => "PASS".to_string(),
        Verdict::Warn if report.passed_but_open_streams() && !require_closed => {
            let covered = report
                .summary
                .as_ref()
                .and_then(|s| s.last_checkpoint)
                .map_or_else(
                    || "the bundle's last checkpoint".to_string(),
                    |c| {
                        format!(
                            "checkpoint {} (log size {}, root {}, issued {})",
                            c.index.unwrap_or_default(),
                            c.size,
                            c.root.to_hex(),
                            c.issued_at
                        )
                    },
                );
            format!(
                "PASS with {open} open stream(s): their gateways are still running (or stopped \
                 without a close record); every receipt in the bundle, theirs included, is \
                 covered by {covered}"
            )
        }
        Verdict::Warn if report.passed_but_open_streams() => {
            format!("FAIL: {open} open stream(s) and --require-closed")
        }
        Verdict::Warn => "WARN (not a pass)".to_string(),
        Verdict::Fail | Verdict::Skipped => "FAIL".to_string(),
    };
    writeln!(out, "Verdict: {verdict}")
}

/// One line per guard: how often it passed, denied or only audited, and how
/// many receipts list no checks (older gateways), so "not denied" is never
/// read as "checked".
fn write_guard_checks(out: &mut dyn Write, s: &BundleSummary) -> std::io::Result<()> {
    for (i, (guard, t)) in s.guard_checks.iter().enumerate() {
        let label = if i == 0 { "Guards:" } else { "" };
        writeln!(
            out,
            "{label:<13} {guard}: {} passed, {} denied, {} audit-only",
            t.passed, t.denied, t.audit_only
        )?;
    }
    if s.receipts_without_checks > 0 {
        writeln!(
            out,
            "{:<13} {} receipt(s) list no guard checks (written by an older gateway)",
            if s.guard_checks.is_empty() {
                "Guards:"
            } else {
                ""
            },
            s.receipts_without_checks
        )?;
    }
    Ok(())
}

fn write_phase(out: &mut dyn Write, phase: &PhaseReport) -> std::io::Result<()> {
    let title = format!("{} {}", phase.phase.number(), phase.phase.title());
    writeln!(out, "  {title:<34} {}", phase.verdict.as_str())?;
    for finding in &phase.findings {
        let severity = if finding.code.is_warning() {
            "warn"
        } else {
            "FAIL"
        };
        write!(
            out,
            "      {severity} {} at {}",
            finding.code, finding.location
        )?;
        if finding.detail.is_empty() {
            writeln!(out)?;
        } else {
            writeln!(out, ": {}", finding.detail)?;
        }
    }
    if phase.suppressed > 0 {
        writeln!(out, "      … and {} more", phase.suppressed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_evidence::certificate::{KeyCertificate, PodIdentity, SignedKeyCertificate};
    use tollgate_evidence::fields::{Code, DnsLabel, DnsSubdomain, HostName, Identifier, PodUid};
    use tollgate_evidence::receipt::*;
    use tollgate_evidence::{
        BundleBuilder, CloseReason, LogWriter, ReceiptId, SafeU64, Segment, SigningKey,
        StreamChainWriter, sha256,
    };

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    fn body(n: u64) -> ReceiptBody {
        ReceiptBody {
            api: Api::Openai,
            caller_hash: None,
            correlation_id: None,
            decision_id: None,
            completed_at: at("2025-03-01T00:00:01.000Z"),
            cost_micro_usd: SafeU64::new(10 + n).unwrap(),
            id: ReceiptId::new(format!("01955c00-0000-7000-8000-{n:012x}")).unwrap(),
            lane: Lane::DryRun,
            latency: Latency {
                first_byte_ms: None,
                total_ms: SafeU64::new(1000).unwrap(),
            },
            method: HttpMethod::Post,
            model_requested: None,
            model_served: None,
            policy_hash: sha256(b"policy"),
            pricing: None,
            provider: Some(DnsSubdomain::new("dry-run").unwrap()),
            quota: None,
            request_id: Identifier::new(format!("req-{n}")).unwrap(),
            request_sha256: sha256(b"request"),
            response_length: SafeU64::new(2).unwrap(),
            response_sha256: sha256(b"{}"),
            response_status: HttpStatus::new(200).unwrap(),
            route: Route::ChatCompletions,
            schema: ReceiptSchema,
            schema_version: Default::default(),
            started_at: at("2025-03-01T00:00:00.000Z"),
            upstream: Some(Upstream {
                host: HostName::new("dry-run.local").unwrap(),
                key_count: 1,
                key_route: None,
                key_index: 0,
                provider_request_id: None,
                tls_cert_sha256: None,
            }),
            usage: None,
            verdict: RequestVerdict {
                checks: None,
                decision: Decision::Allow,
                guards: GuardCodes::default(),
                reason: Code::new("allowed").unwrap(),
            },
            workload: Workload {
                namespace: DnsLabel::new("team-a").unwrap(),
                pod: DnsSubdomain::new("app-1").unwrap(),
                service_account: DnsSubdomain::new("default").unwrap(),
            },
        }
    }

    struct Scratch {
        dir: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("tollgate-verify-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A one-segment bundle and a TrustAnchor YAML for its CA and recorder keys.
    fn bundle_and_anchor() -> (Vec<u8>, String) {
        bundle_and_anchor_with_stream(true)
    }

    /// A bundle of one stream (closed, or still open as a running gateway's).
    fn bundle_and_anchor_with_stream(closed: bool) -> (Vec<u8>, String) {
        let ca = SigningKey::from_bytes(&[1; 32]);
        let recorder = SigningKey::from_bytes(&[2; 32]);
        let gateway = SigningKey::from_bytes(&[3; 32]);
        let mut writer = StreamChainWriter::new(Identifier::new("stream-1").unwrap());
        let mut envelopes: Vec<_> = (0..2)
            .map(|n| writer.sign_and_append(body(n), &gateway).unwrap())
            .collect();
        if closed {
            envelopes.push(
                writer
                    .close(
                        CloseReason::Shutdown,
                        at("2025-03-01T01:00:00.000Z"),
                        &gateway,
                    )
                    .unwrap(),
            );
        }
        let mut log = LogWriter::new(Identifier::new("test-log").unwrap());
        let genesis = log.open_segment(at("2025-03-01T01:00:00.000Z")).unwrap();
        for e in &envelopes {
            log.append(e).unwrap();
        }
        let sealed = log.seal(at("2025-03-01T01:01:00.000Z"), &recorder).unwrap();
        let pod = PodIdentity {
            namespace: DnsLabel::new("team-a").unwrap(),
            service_account: DnsSubdomain::new("default").unwrap(),
            pod_name: DnsSubdomain::new("app-1").unwrap(),
            pod_uid: PodUid::new("6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab").unwrap(),
        };
        let cert = KeyCertificate::new(
            PublicKey::of_signing_key(&gateway),
            pod,
            at("2025-02-28T00:00:00.000Z"),
            at("2025-03-02T00:00:00.000Z"),
            KeyId::of_signing_key(&ca),
        )
        .unwrap();
        let mut builder = BundleBuilder::new(
            Identifier::new("test-log").unwrap(),
            at("2025-03-01T02:00:00.000Z"),
        );
        builder.add_certificate(SignedKeyCertificate::issue(cert, &ca).unwrap());
        builder
            .add_segment(
                Segment {
                    genesis,
                    envelopes,
                    seal: sealed.seal,
                },
                sealed.checkpoint,
            )
            .unwrap();
        let bundle = builder.build(&recorder).unwrap().to_json().unwrap();
        let entry = |key: &SigningKey, role: &str| {
            let public = PublicKey::of_signing_key(key);
            format!(
                "    - keyId: {}\n      publicKey: {}\n      role: {role}\n      notBefore: \"2025-01-01T00:00:00Z\"\n      state: active\n",
                public.key_id(),
                public.to_base64()
            )
        };
        let anchor = format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: TrustAnchor\nmetadata:\n  name: cluster\nspec:\n  receiptKeys:\n{}{}  upstream:\n    - host: api.openai.com\n      spkiPins: [\"abc\"]\n",
            entry(&ca, "receiptCA"),
            entry(&recorder, "recorder")
        );
        (bundle, anchor)
    }

    fn args(bundle: PathBuf, anchors: Vec<PathBuf>, output: OutputFormat) -> VerifyArgs {
        VerifyArgs {
            bundle,
            trust_anchor: anchors,
            checkpoint: vec![],
            output,
            require_closed: false,
            max_bytes: None,
            max_segments: None,
            max_envelopes_per_segment: None,
            max_envelopes: None,
            max_certificates: None,
            max_proof_len: None,
        }
    }

    fn run_to_string(args: &VerifyArgs) -> (ExitCode, String) {
        let mut out = Vec::new();
        let code = run(args, &mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn valid_bundle_with_trust_anchor_exits_0() {
        let scratch = Scratch::new("valid");
        let (bundle, anchor) = bundle_and_anchor();
        let bundle = scratch.write("bundle.json", &bundle);
        let anchor = scratch.write("anchor.yaml", anchor.as_bytes());
        let (code, text) = run_to_string(&args(
            bundle.clone(),
            vec![anchor.clone()],
            OutputFormat::Text,
        ));
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
        assert!(text.contains("Verdict: PASS"), "{text}");
        assert!(text.contains("Trust roots:  2 trusted keys"), "{text}");
        assert!(
            text.contains(
                "1 segments, 3 envelopes (2 receipts, 0 forward decisions, 1 close records)"
            ),
            "{text}"
        );

        let (code, json) = run_to_string(&args(bundle, vec![anchor], OutputFormat::Json));
        assert_eq!(code, ExitCode::SUCCESS);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["verdict"], "pass");
        assert_eq!(report["phases"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn without_trust_anchor_the_verdict_is_a_warning_and_exit_1() {
        let scratch = Scratch::new("untrusted");
        let (bundle, _) = bundle_and_anchor();
        let bundle = scratch.write("bundle.json", &bundle);
        let (code, text) = run_to_string(&args(bundle, vec![], OutputFormat::Text));
        assert_eq!(code, ExitCode::from(1));
        assert!(text.contains("warn no_trust_root"), "{text}");
        assert!(text.contains("Verdict: WARN"), "{text}");
    }

    #[test]
    fn open_streams_of_a_running_system_pass_unless_closed_streams_are_required() {
        let scratch = Scratch::new("open");
        let (bundle, anchor) = bundle_and_anchor_with_stream(false);
        let bundle = scratch.write("bundle.json", &bundle);
        let anchor = scratch.write("anchor.yaml", anchor.as_bytes());
        let mut args = args(bundle.clone(), vec![anchor], OutputFormat::Text);
        let (code, text) = run_to_string(&args);
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
        assert!(text.contains("(1 open)"), "{text}");
        assert!(text.contains("Verdict: PASS with 1 open stream"), "{text}");
        assert!(
            text.contains("covered by checkpoint 0 (log size "),
            "{text}"
        );
        args.output = OutputFormat::Json;
        let (code, json) = run_to_string(&args);
        assert_eq!(code, ExitCode::SUCCESS);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["open_streams_only"], true, "{json}");
        assert_eq!(report["summary"]["last_checkpoint"]["index"], 0, "{json}");
        args.output = OutputFormat::Text;
        args.require_closed = true;
        let (code, text) = run_to_string(&args);
        assert_eq!(code, ExitCode::from(1), "{text}");
        assert!(text.contains("--require-closed"), "{text}");
        // Open streams without a trust anchor are still only a warning.
        let (code, _) = run_to_string(&self::args(bundle, vec![], OutputFormat::Text));
        assert_eq!(code, ExitCode::from(1));
    }

    #[test]
    fn tampered_bundle_exits_1_with_the_finding() {
        let scratch = Scratch::new("tampered");
        let (bundle, anchor) = bundle_and_anchor();
        let text = String::from_utf8(bundle).unwrap().replacen(
            "\"cost_micro_usd\":10",
            "\"cost_micro_usd\":99",
            1,
        );
        let bundle = scratch.write("bundle.json", text.as_bytes());
        let anchor = scratch.write("anchor.yaml", anchor.as_bytes());
        let (code, json) = run_to_string(&args(bundle, vec![anchor], OutputFormat::Json));
        assert_eq!(code, ExitCode::from(1));
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["verdict"], "fail");
        assert_eq!(
            report["phases"][1]["findings"][0]["code"],
            "envelope_hash_mismatch"
        );
    }

    #[test]
    fn oversized_bundle_is_refused_without_reading() {
        let scratch = Scratch::new("oversized");
        let (bundle, anchor) = bundle_and_anchor();
        let bundle = scratch.write("bundle.json", &bundle);
        let anchor = scratch.write("anchor.yaml", anchor.as_bytes());
        let mut args = args(bundle, vec![anchor], OutputFormat::Text);
        args.max_bytes = Some(100);
        let (code, text) = run_to_string(&args);
        assert_eq!(code, ExitCode::from(1));
        assert!(text.contains("FAIL input_too_large"), "{text}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let scratch = Scratch::new("inputs");
        let (bundle, anchor) = bundle_and_anchor();
        let bundle = scratch.write("bundle.json", &bundle);
        let missing = args(scratch.dir.join("nope.json"), vec![], OutputFormat::Text);
        assert!(run(&missing, &mut Vec::new()).is_err());

        let wrong_id = anchor.replacen("keyId: ", "keyId: 00", 1);
        let wrong_id = scratch.write("wrong-id.yaml", wrong_id.as_bytes());
        let error = run(
            &args(bundle.clone(), vec![wrong_id], OutputFormat::Text),
            &mut Vec::new(),
        );
        assert!(format!("{:#}", error.unwrap_err()).contains("receiptKeys[0]"));

        let wrong_kind = scratch.write(
            "kind.yaml",
            anchor
                .replace("kind: TrustAnchor", "kind: Secret")
                .as_bytes(),
        );
        assert!(
            run(
                &args(bundle.clone(), vec![wrong_kind], OutputFormat::Text),
                &mut Vec::new()
            )
            .is_err()
        );

        let huge = scratch.write("huge.yaml", &vec![b'#'; MAX_ANCHOR_BYTES as usize + 1]);
        let error = run(
            &args(bundle, vec![huge], OutputFormat::Text),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("over the"), "{error}");
    }

    #[test]
    fn anchors_in_json_and_lists_are_read() {
        let (_, anchor) = bundle_and_anchor();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&anchor).unwrap();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
        let keys = trust_anchor_keys(&list.to_string()).unwrap();
        assert_eq!(keys.len(), 2);
        let two_docs = format!("{anchor}---\n{anchor}");
        assert_eq!(trust_anchor_keys(&two_docs).unwrap().len(), 4);
        let retired = anchor.replacen(
            "state: active",
            "state: retired\n      notAfter: \"2026-01-01T00:00:00+01:00\"",
            1,
        );
        let keys = trust_anchor_keys(&retired).unwrap();
        let retired_key = keys.iter().find(|k| k.state == KeyState::Retired).unwrap();
        assert_eq!(retired_key.not_after, Some(at("2025-12-31T23:00:00.000Z")));
    }

    #[test]
    fn a_held_checkpoint_is_one_json_or_the_newest_complete_sink_line() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let checkpoint = |size: u32| {
            tollgate_evidence::SignedCheckpoint::sign(
                tollgate_evidence::Checkpoint {
                    schema: tollgate_evidence::checkpoint::CheckpointSchema,
                    schema_version: tollgate_evidence::fields::SchemaVersion1,
                    origin: Identifier::new("test-log").unwrap(),
                    size: tollgate_evidence::SafeU64::from(size),
                    root: tollgate_evidence::sha256(b"root"),
                    prev_checkpoint_hash: tollgate_evidence::PrevHash::Genesis,
                    seal_hash: tollgate_evidence::sha256(b"seal"),
                    issued_at: at("2025-03-01T00:00:00.000Z"),
                },
                &key,
            )
            .unwrap()
        };
        let line = |size| serde_json::to_string(&checkpoint(size)).unwrap();
        let scratch = Scratch::new("held");
        let pretty = serde_json::to_vec_pretty(&checkpoint(3)).unwrap();
        let one = scratch.write("one.json", &pretty);
        assert_eq!(load_checkpoint(&one).unwrap().checkpoint.size.get(), 3);
        let lines = format!("{}\n{}\n{}\n", line(3), line(7), line(12));
        let sink = scratch.write("sink.jsonl", lines.as_bytes());
        assert_eq!(load_checkpoint(&sink).unwrap().checkpoint.size.get(), 12);
        // A line the sink is still writing is passed over for the one before.
        let partial = format!("{}\n{}\n{}", line(3), line(7), &line(12)[..40]);
        let sink = scratch.write("partial.jsonl", partial.as_bytes());
        assert_eq!(load_checkpoint(&sink).unwrap().checkpoint.size.get(), 7);
        // A long sink file is read from its tail only.
        let long: String = (0..2_000).map(|i| line(i) + "\n").collect();
        assert!(long.len() as u64 > MAX_CHECKPOINT_BYTES);
        let sink = scratch.write("long.jsonl", long.as_bytes());
        assert_eq!(load_checkpoint(&sink).unwrap().checkpoint.size.get(), 1_999);
        let junk = scratch.write("junk.jsonl", b"{}\nnot json\n");
        let err = load_checkpoint(&junk).unwrap_err().to_string();
        assert!(err.contains("neither a signed checkpoint"), "{err}");
    }
}

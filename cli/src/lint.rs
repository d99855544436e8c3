//! `kubectl tollgate lint -f FILE|DIR`: the admission rule table, offline,
//! over pods and the pod templates of workloads. Prints one line per
//! finding, `file: kind/name: RULE-ID detail`; exits 1 on any finding and 2
//! on unreadable input.
//!
//! A pod that carries `tollgate.dev/injected` is checked as an admitted pod
//! (the gateway must be exactly right); any other pod is checked as a
//! template, since the webhook injects it on admission.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use tollgate_admission::rules::{Subject, check_pod};
use tollgate_admission::workload::pod_template;
use tollgate_admission::{ANNOTATION_INJECTED, Violation};

use crate::inject::{Document, InstallationArgs, namespace_view, read_documents};

/// Most files read from one directory tree.
const MAX_FILES: usize = 1_000;

/// Flags of `lint`.
#[derive(clap::Args, Debug)]
pub struct LintArgs {
    /// A manifest file, or a directory read recursively (.yaml, .yml, .json).
    #[arg(long, short = 'f')]
    pub filename: PathBuf,
    #[command(flatten)]
    pub installation: InstallationArgs,
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !path.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let p = entry
            .with_context(|| format!("reading {}", path.display()))?
            .path();
        if p.is_dir() {
            collect(&p, files)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
        if files.len() > MAX_FILES {
            anyhow::bail!("{}: more than {MAX_FILES} manifest files", path.display());
        }
    }
    Ok(())
}

/// The findings for one document.
pub fn lint_document(
    doc: &Document,
    docs: &[Document],
    installation: &InstallationArgs,
) -> anyhow::Result<Vec<Violation>> {
    let settings = installation.settings();
    let namespace = doc.namespace_or(&installation.namespace).to_string();
    let ns = namespace_view(docs, &installation.namespace, &namespace);
    let what = format!("{}/{}", doc.kind(), doc.name());
    let empty = PodSpec::default();
    if doc.kind() == "Pod" {
        let pod: Pod = serde_json::from_value(doc.value.clone())
            .with_context(|| format!("{what} is malformed"))?;
        let injected = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_INJECTED));
        let subject = if injected {
            Subject::Pod
        } else {
            Subject::Template
        };
        return Ok(check_pod(
            subject,
            &pod.metadata,
            pod.spec.as_ref().unwrap_or(&empty),
            &ns,
            &settings,
        )?);
    }
    let Some(template) = pod_template(&doc.value) else {
        return Ok(Vec::new());
    };
    let template = template.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(check_pod(
        Subject::Template,
        &template.metadata.unwrap_or_default(),
        template.spec.as_ref().unwrap_or(&empty),
        &ns,
        &settings,
    )?)
}

/// Runs `lint`.
pub fn run(args: &LintArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    collect(&args.filename, &mut files)?;
    files.sort();
    let mut findings = 0usize;
    let mut checked = 0usize;
    for file in &files {
        let docs = read_documents(file)?;
        for doc in &docs {
            if doc.kind() != "Pod" && pod_template(&doc.value).is_none() {
                continue;
            }
            checked += 1;
            for v in lint_document(doc, &docs, &args.installation)? {
                findings += 1;
                writeln!(
                    out,
                    "{}: {}/{}: {} {}",
                    file.display(),
                    doc.kind(),
                    doc.name(),
                    v.rule,
                    v.detail
                )?;
            }
        }
    }
    eprintln!("kubectl-tollgate lint: {checked} object(s) checked, {findings} finding(s)");
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

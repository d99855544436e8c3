//! `kubectl tollgate crds`: the generated CRD YAML, for installing without Helm.

use std::io::Write;
use std::process::ExitCode;

/// Writes every CRD as one multi-document YAML stream.
pub fn run(out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    for crd in tollgate_crds::generate::all_crds() {
        let file = tollgate_crds::generate::crd_file(&crd)?;
        writeln!(out, "---\n{}", file.content.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_all_six_crds_as_parseable_yaml() {
        let mut out = Vec::new();
        run(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let kinds: Vec<&str> = docs
            .iter()
            .filter_map(|d| d.pointer("/spec/names/kind")?.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "LLMProvider",
                "EgressPolicy",
                "EgressQuota",
                "ClusterEgressQuota",
                "TrustAnchor",
                "RecorderConfig"
            ]
        );
    }
}

//! Reading YAML manifests from the repository: `examples/`, the generated
//! CRDs and the invalid fixtures in `crds/testdata/invalid/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One document of a YAML file.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    /// Position of the document within its file, from 0.
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `path#index (Kind name)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}#{} ({} {})",
            self.path.display(),
            self.index,
            self.kind(),
            self.name()
        )
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// YAML files directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && is_yaml(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// YAML files anywhere under `dir`, sorted.
pub fn yaml_files_recursive(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_yaml(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every non-empty document of a (possibly multi-document) YAML text.
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Reads every non-empty document of a YAML file.
pub fn load_documents(path: &Path) -> Result<Vec<Document>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let values = parse_documents(&text).with_context(|| format!("in {}", path.display()))?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            path: path.to_path_buf(),
            index,
            value,
        })
        .collect())
}

/// The expected error from a fixture's leading `# expect: <substring>` line.
pub fn expected_message(text: &str) -> Result<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        if let Some(expect) = comment.trim_start().strip_prefix("expect:") {
            let expect = expect.trim();
            if expect.is_empty() {
                bail!("`# expect:` has no text");
            }
            return Ok(expect.to_owned());
        }
    }
    bail!("no leading `# expect: <substring of the API server's error>` comment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_skip_empty_documents() {
        let docs = parse_documents(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: b}\nstringData: {k: v}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "Namespace");
        assert_eq!(docs[1]["stringData"]["k"], "v");
    }

    #[test]
    fn yaml_keeps_strings_that_look_like_other_types_as_written() {
        let docs = parse_documents("a: \"1.0\"\nb: 1\nc: 'true'\n").unwrap();
        assert_eq!(docs[0]["a"], "1.0");
        assert_eq!(docs[0]["b"], 1);
        assert_eq!(docs[0]["c"], "true");
    }

    #[test]
    fn expectation_comes_from_the_leading_comment() {
        let text =
            "# An invalid provider.\n# expect: spec.baseURL: Invalid value\napiVersion: v1\n";
        assert_eq!(
            expected_message(text).unwrap(),
            "spec.baseURL: Invalid value"
        );
        assert!(expected_message("apiVersion: v1\n# expect: too late\n").is_err());
        assert!(expected_message("# expect:   \n").is_err());
        assert!(expected_message("").is_err());
    }
}

//! `kubectl tollgate prices --manifests DIR`: each model's price table and
//! its SHA-256, the hash receipts record in `pricing.table_sha256`, so a
//! receipt's cost (and `reconcile`'s costs by table) traces to the prices
//! that made it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tollgate_crds::LLMProvider;
use tollgate_wire::pricing::table_sha256;

use crate::compile::ManifestObjects;

/// Flags of `prices`.
#[derive(clap::Args, Debug)]
pub struct PricesArgs {
    /// Directory of manifests (YAML or JSON), read recursively.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Print each table too, as JSON lines.
    #[arg(long)]
    pub tables: bool,
}

/// One model's table: provider, model, hash and the table's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRow {
    pub provider: String,
    pub model: String,
    pub table_sha256: String,
    pub table_json: String,
}

/// The rows of `providers`, ordered by provider then model. Pure.
pub fn price_rows(providers: &[LLMProvider]) -> Vec<PriceRow> {
    let mut rows: Vec<PriceRow> = providers
        .iter()
        .flat_map(|p| {
            let provider = p.metadata.name.clone().unwrap_or_default();
            p.spec.models.iter().map(move |m| PriceRow {
                provider: provider.clone(),
                model: m.name.clone(),
                table_sha256: table_sha256(&m.pricing).to_string(),
                table_json: serde_json::to_string(&m.pricing).unwrap_or_default(),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
    rows
}

/// Runs `prices`.
pub fn run(args: &PricesArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let objects = ManifestObjects::read(&args.manifests, "default")?;
    let rows = price_rows(&objects.providers);
    let width = |f: fn(&PriceRow) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (pw, mw) = (
        width(|r| &r.provider, "PROVIDER"),
        width(|r| &r.model, "MODEL"),
    );
    writeln!(out, "{:pw$}  {:mw$}  TABLE-SHA256", "PROVIDER", "MODEL")?;
    for r in &rows {
        writeln!(
            out,
            "{:pw$}  {:mw$}  {}",
            r.provider, r.model, r.table_sha256
        )?;
        if args.tables {
            writeln!(out, "  {}", r.table_json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_model_gets_the_hash_of_its_canonical_table() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kinds");
        let objects = ManifestObjects::read(&dir, "default").unwrap();
        let rows = price_rows(&objects.providers);
        let models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(models, ["gpt-4o-mini", "gpt-5", "text-embedding-3-small"]);
        for r in &rows {
            let table: serde_json::Value = serde_json::from_str(&r.table_json).unwrap();
            let canonical = tollgate_evidence::to_canonical_bytes(&table).unwrap();
            assert_eq!(
                r.table_sha256,
                tollgate_evidence::sha256(&canonical).to_string()
            );
        }
        assert_ne!(rows[0].table_sha256, rows[1].table_sha256);
        let mut out = Vec::new();
        run(
            &PricesArgs {
                manifests: dir,
                tables: true,
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&rows[1].table_sha256), "{text}");
        assert!(
            text.contains("\"serviceTiers\":[{\"name\":\"flex\""),
            "{text}"
        );
    }
}

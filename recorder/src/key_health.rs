//! Provider key health across the cluster. Each gateway keeps its own keys'
//! health (a 401 or 403 takes a key out of its routing) and reports it every
//! 30 seconds (`PUT /v1/key-health`); the recorder keeps each reporter's
//! latest report and answers `GET /v1/key-health` with, per provider and key,
//! how many gateways reported it within [`REPORT_TTL_MS`] and how many of
//! them route around it. The operator writes that into each `LLMProvider`'s
//! status. A report names keys by their place in `credentialsRef.keys`,
//! never by value.
//!
//! Pure: the report's parsing with its bounds, and the answer's shape.

use std::collections::HashSet;

pub use tollgate_wire::key_health::{
    KeyHealthAnswer, KeyHealthReport, KeyHealthState, KeySummary, ProviderKeys,
};

use crate::error::RecorderError;
use crate::store::{KeyHealthCell, ReportedKey};

pub use tollgate_wire::key_health::{MAX_KEY_INDEX, MAX_REPORT_BYTES, MAX_REPORTED_KEYS};
/// Reports older than this are forgotten: a gateway that stopped reporting
/// (its pod is gone) no longer counts. Gateways report every 30 seconds.
pub const REPORT_TTL_MS: u64 = 120_000;
/// Most provider-and-key cells in one answer.
pub const MAX_CELLS: usize = 10_000;

/// The keys of a report body, checked: `{"keys": [{"provider", "index",
/// "state": "healthy"|"unhealthy", "since_ms"?, "last_status"?}]}`.
pub fn parse_report(body: &[u8]) -> Result<Vec<ReportedKey>, RecorderError> {
    tollgate_evidence::strict_json::validate(body)
        .map_err(|e| RecorderError::BadRequest(format!("not a key health report: {e}")))?;
    let report: KeyHealthReport = serde_json::from_slice(body)
        .map_err(|e| RecorderError::BadRequest(format!("not a key health report: {e}")))?;
    if report.keys.len() > MAX_REPORTED_KEYS {
        return Err(RecorderError::TooLarge {
            what: "a key health report's keys",
            limit: MAX_REPORTED_KEYS as u64,
        });
    }
    let mut seen = HashSet::new();
    report
        .keys
        .into_iter()
        .map(|k| {
            if !is_provider_name(&k.provider) {
                return Err(RecorderError::BadRequest(format!(
                    "{:?} is not an LLMProvider name",
                    k.provider
                )));
            }
            if k.index > MAX_KEY_INDEX {
                return Err(RecorderError::BadRequest(format!(
                    "key index {} is over {MAX_KEY_INDEX}",
                    k.index
                )));
            }
            if !seen.insert((k.provider.clone(), k.index)) {
                return Err(RecorderError::BadRequest(format!(
                    "key {} of {} is reported twice",
                    k.index, k.provider
                )));
            }
            let refused = k.state == KeyHealthState::Unhealthy;
            Ok(ReportedKey {
                provider: k.provider,
                index: k.index,
                refused,
                since_ms: k.since_ms.filter(|_| refused),
                last_status: k.last_status.filter(|_| refused),
            })
        })
        .collect()
}

/// A DNS-1123 subdomain, as Kubernetes names cluster-scoped objects.
fn is_provider_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=253).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The answer from the store's cells (in provider, then index order).
pub fn answer(cells: Vec<KeyHealthCell>, limit: usize) -> KeyHealthAnswer {
    let truncated = cells.len() > limit;
    let mut providers: Vec<ProviderKeys> = Vec::new();
    for cell in cells.into_iter().take(limit) {
        let key = KeySummary {
            index: cell.index,
            gateways: cell.reporters,
            refused_by: cell.refused_by,
            refused_since_ms: cell.refused_since_ms,
            last_status: cell.last_status,
        };
        match providers.last_mut() {
            Some(p) if p.provider == cell.provider => p.keys.push(key),
            _ => providers.push(ProviderKeys {
                provider: cell.provider,
                keys: vec![key],
            }),
        }
    }
    KeyHealthAnswer {
        window_ms: REPORT_TTL_MS,
        providers,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_report_parses_into_keys_without_values() {
        let body = br#"{"keys":[
            {"provider":"openai","index":0,"state":"healthy"},
            {"provider":"openai","index":1,"state":"unhealthy","since_ms":5,"next_probe_ms":9,"last_status":401}]}"#;
        let keys = parse_report(body).unwrap();
        assert_eq!(
            keys,
            [
                ReportedKey {
                    provider: "openai".into(),
                    index: 0,
                    refused: false,
                    since_ms: None,
                    last_status: None
                },
                ReportedKey {
                    provider: "openai".into(),
                    index: 1,
                    refused: true,
                    since_ms: Some(5),
                    last_status: Some(401)
                },
            ]
        );
    }

    #[test]
    fn bad_reports_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"[]", "not a key health report"),
            (
                br#"{"keys":[{"provider":"Open AI","index":0,"state":"healthy"}]}"#,
                "not an LLMProvider name",
            ),
            (
                br#"{"keys":[{"provider":"p","index":32,"state":"healthy"}]}"#,
                "over 31",
            ),
            (
                br#"{"keys":[{"provider":"p","index":0,"state":"sick"}]}"#,
                "unknown variant",
            ),
            (
                br#"{"keys":[{"provider":"p","index":0,"state":"healthy","key":"sk-1"}]}"#,
                "unknown field",
            ),
            (
                br#"{"keys":[{"provider":"p","index":0,"state":"healthy"},{"provider":"p","index":0,"state":"unhealthy"}]}"#,
                "reported twice",
            ),
            (
                br#"{"keys":[{"provider":"-p","index":0,"state":"healthy"}]}"#,
                "not an LLMProvider name",
            ),
        ];
        for (body, want) in cases {
            let err = parse_report(body).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        let many = format!(
            "{{\"keys\":[{}]}}",
            (0..=MAX_REPORTED_KEYS)
                .map(|i| format!("{{\"provider\":\"p{i}\",\"index\":0,\"state\":\"healthy\"}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(matches!(
            parse_report(many.as_bytes()),
            Err(RecorderError::TooLarge { .. })
        ));
    }

    fn cell(provider: &str, index: u32, reporters: u64, refused_by: u64) -> KeyHealthCell {
        KeyHealthCell {
            provider: provider.into(),
            index,
            reporters,
            refused_by,
            refused_since_ms: (refused_by > 0).then_some(7),
            last_status: (refused_by > 0).then_some(401),
        }
    }

    #[test]
    fn cells_group_by_provider_and_the_limit_is_said() {
        let cells = vec![cell("a", 0, 3, 0), cell("a", 1, 3, 2), cell("b", 0, 1, 0)];
        let full = answer(cells.clone(), 10);
        assert!(!full.truncated);
        assert_eq!(full.providers.len(), 2);
        assert_eq!(full.providers[0].keys.len(), 2);
        assert_eq!(full.providers[0].keys[1].refused_by, 2);
        assert_eq!(full.providers[0].keys[1].last_status, Some(401));
        let cut = answer(cells, 2);
        assert!(cut.truncated);
        assert_eq!(cut.providers.len(), 1);
    }
}

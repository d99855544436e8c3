//! The secret guard: refuses request bodies that carry credentials (private
//! keys, cloud and API tokens) before they can leave for a provider.
//!
//! It runs on every request body, so it is a single forward pass of small byte
//! matchers with no regex and no allocation. A body is matched as raw bytes, so
//! secrets are found both as plain text and inside JSON strings, where quotes
//! and newlines arrive escaped (`\"`, `\n`).

/// The kind of secret found. [`SecretKind::code`] is a bounded reason code,
/// safe for metrics labels and receipts; the secret itself is never reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    PemPrivateKey,
    AwsAccessKeyId,
    GcpServiceAccountKey,
    OpenAiApiKey,
    AnthropicApiKey,
    GithubToken,
    SlackToken,
}

impl SecretKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::PemPrivateKey => "pem_private_key",
            Self::AwsAccessKeyId => "aws_access_key_id",
            Self::GcpServiceAccountKey => "gcp_service_account_key",
            Self::OpenAiApiKey => "openai_api_key",
            Self::AnthropicApiKey => "anthropic_api_key",
            Self::GithubToken => "github_token",
            Self::SlackToken => "slack_token",
        }
    }
}

/// The first secret in `body`, in body order.
///
/// A service-account key file is reported as such when both of its markers
/// (`"type": "service_account"` and `"private_key"`) have been seen by the time
/// the embedded PEM key is reached, as they are in the files Google issues;
/// otherwise the PEM key is reported on its own. Either way the body is refused.
pub fn find_secret(body: &[u8]) -> Option<SecretKind> {
    // Every pattern has one of three anchor bytes at a fixed offset: `-` (PEM,
    // `sk-`, `xoxb-`), `_` (`ghp_`, `github_`, `service_`, `private_`) or the
    // `A` of `AKIA`/`ASIA`. All three are rare in prose: a branch-free pass
    // the compiler vectorises marks them in 32-byte blocks, and matchers run
    // only at marked bytes.
    const BLOCK: usize = 32;
    let mut markers = ServiceAccountMarkers::default();
    let (blocks, tail) = body.as_chunks::<BLOCK>();
    for (n, block) in blocks.iter().enumerate() {
        let mut anchors = block
            .iter()
            .enumerate()
            .fold(0u32, |mask, (k, b)| mask | (u32::from(is_anchor(*b)) << k));
        while anchors != 0 {
            let i = n * BLOCK + anchors.trailing_zeros() as usize;
            if let Some(kind) = check_anchor(body, i, &mut markers) {
                return Some(kind);
            }
            anchors &= anchors - 1;
        }
    }
    let tail_start = body.len() - tail.len();
    (tail_start..body.len())
        .filter(|i| is_anchor(body[*i]))
        .find_map(|i| check_anchor(body, i, &mut markers))
}

fn is_anchor(b: u8) -> bool {
    (b == b'-') | (b == b'_') | (b == b'A')
}

/// Whether a key file's two markers have been seen so far.
#[derive(Debug, Default)]
struct ServiceAccountMarkers {
    type_service_account: bool,
    private_key_field: bool,
}

impl ServiceAccountMarkers {
    fn both(&self) -> bool {
        self.type_service_account && self.private_key_field
    }
}

/// The secret anchored at `i`, reporting a key file once both its markers
/// have been seen.
fn check_anchor(body: &[u8], i: usize, markers: &mut ServiceAccountMarkers) -> Option<SecretKind> {
    match secret_at_anchor(body, i, markers) {
        Some(SecretKind::PemPrivateKey) | None if markers.both() => {
            Some(SecretKind::GcpServiceAccountKey)
        }
        other => other,
    }
}

/// The secret whose anchor byte is at `i`, if any; records key-file markers.
fn secret_at_anchor(
    body: &[u8],
    i: usize,
    markers: &mut ServiceAccountMarkers,
) -> Option<SecretKind> {
    let before = |n: usize| i.checked_sub(n).map(|start| &body[start..i]);
    match body[i] {
        b'A' => aws_access_key_id_at(body, i).then_some(SecretKind::AwsAccessKeyId),
        b'-' => {
            if pem_private_key_at(body, i) {
                Some(SecretKind::PemPrivateKey)
            } else if before(2) == Some(b"sk") {
                sk_api_key_at(body, i - 2)
            } else if before(4).is_some_and(|w| w.starts_with(b"xox")) {
                slack_token_at(body, i - 4).then_some(SecretKind::SlackToken)
            } else {
                None
            }
        }
        b'_' => {
            if before(3).is_some_and(|w| w.starts_with(b"gh")) {
                github_token_at(body, i - 3).then_some(SecretKind::GithubToken)
            } else if before(6) == Some(b"github") {
                github_token_at(body, i - 6).then_some(SecretKind::GithubToken)
            } else if before(7) == Some(b"service") {
                if quoted_at(body, i - 7, b"service_account") && follows_type_key(body, i - 7) {
                    markers.type_service_account = true;
                }
                None
            } else if before(7) == Some(b"private") {
                if quoted_at(body, i - 7, b"private_key") {
                    markers.private_key_field = true;
                }
                None
            } else {
                None
            }
        }
        _ => None,
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Bytes that may continue a token; a pattern must not start in the middle of
/// one ("ask-...", "mask-...", "dAKIA...").
fn is_token_byte(b: u8) -> bool {
    is_alnum(b) || b == b'_' || b == b'-'
}

/// Whether a token may start at `i`: start of body, a non-token byte before
/// it, or a JSON escape such as `\n`, `\t` or `\u000a` right before it (the
/// escape ends in a letter or digit but stands for a separator).
fn starts_token(body: &[u8], i: usize) -> bool {
    let Some(&before) = i.checked_sub(1).and_then(|p| body.get(p)) else {
        return true;
    };
    if !is_token_byte(before) {
        return true;
    }
    if matches!(before, b'n' | b't' | b'r' | b'b' | b'f') && i >= 2 && escapes_next(body, i - 2) {
        return true;
    }
    // `\uXXXX`
    if i >= 6 && body[i - 5] == b'u' && body[i - 4..i].iter().all(u8::is_ascii_hexdigit) {
        return escapes_next(body, i - 6);
    }
    false
}

/// Whether the byte at `i` is a backslash that escapes the byte after it, i.e.
/// it is preceded by an even number of further backslashes.
fn escapes_next(body: &[u8], i: usize) -> bool {
    if body.get(i) != Some(&b'\\') {
        return false;
    }
    let run = body[..=i].iter().rev().take_while(|b| **b == b'\\').count();
    run % 2 == 1
}

/// Length of the run of bytes satisfying `class` starting at `i`.
fn run_len(body: &[u8], i: usize, class: impl Fn(u8) -> bool) -> usize {
    body.get(i..)
        .map_or(0, |rest| rest.iter().take_while(|b| class(**b)).count())
}

/// Random key material almost always mixes in a digit or capital; a run of
/// lowercase words joined by `-`/`_` is prose ("sk-learn-style-pipelines").
fn looks_random(token: &[u8]) -> bool {
    token
        .iter()
        .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// `-----BEGIN <label>PRIVATE KEY-----`, for any label made of capitals and
/// spaces (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP ... BLOCK).
fn pem_private_key_at(body: &[u8], i: usize) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const PRIVATE_KEY: &[u8] = b"PRIVATE KEY";
    const MAX_LABEL: usize = 48;
    if !body[i..].starts_with(BEGIN) {
        return false;
    }
    let label_start = i + BEGIN.len();
    let label_len = run_len(body, label_start, |b| b.is_ascii_uppercase() || b == b' ');
    if label_len > MAX_LABEL {
        return false;
    }
    let label = &body[label_start..label_start + label_len];
    let after = &body[label_start + label_len..];
    if !after.starts_with(b"-----") {
        return false;
    }
    label.ends_with(PRIVATE_KEY) || label.ends_with(b"PRIVATE KEY BLOCK")
}

/// `AKIA`/`ASIA` followed by exactly 16 capitals or digits, as a whole word.
fn aws_access_key_id_at(body: &[u8], i: usize) -> bool {
    let rest = &body[i..];
    if !(rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA")) || !starts_token(body, i) {
        return false;
    }
    let tail = run_len(body, i + 4, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    });
    if tail != 16 {
        return false;
    }
    body.get(i + 20).is_none_or(|b| !is_alnum(*b))
}

/// `sk-ant-` + 20 or more key bytes (Anthropic), else `sk-` + 20 or more
/// (OpenAI, including `sk-proj-`, `sk-svcacct-`, `sk-admin-`).
fn sk_api_key_at(body: &[u8], i: usize) -> Option<SecretKind> {
    const MIN_TAIL: usize = 20;
    let rest = &body[i..];
    if !rest.starts_with(b"sk-") || !starts_token(body, i) {
        return None;
    }
    let key_byte = |b: u8| is_alnum(b) || b == b'_' || b == b'-';
    let (kind, tail_start) = if rest.starts_with(b"sk-ant-") {
        (SecretKind::AnthropicApiKey, i + 7)
    } else {
        (SecretKind::OpenAiApiKey, i + 3)
    };
    let tail_len = run_len(body, tail_start, key_byte);
    let tail = &body[tail_start..tail_start + tail_len];
    (tail_len >= MIN_TAIL && looks_random(tail)).then_some(kind)
}

/// `ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_` or `github_pat_` + 20 or more of
/// `[A-Za-z0-9_]`.
fn github_token_at(body: &[u8], i: usize) -> bool {
    const MIN_TAIL: usize = 20;
    let rest = &body[i..];
    let prefix_len = if rest.starts_with(b"github_pat_") {
        11
    } else if rest.len() >= 4
        && rest.starts_with(b"gh")
        && matches!(rest[2], b'p' | b'o' | b's' | b'u' | b'r')
        && rest[3] == b'_'
    {
        4
    } else {
        return false;
    };
    if !starts_token(body, i) {
        return false;
    }
    let tail_start = i + prefix_len;
    let tail_len = run_len(body, tail_start, |b| is_alnum(b) || b == b'_');
    tail_len >= MIN_TAIL && looks_random(&body[tail_start..tail_start + tail_len])
}

/// `xoxa-`, `xoxb-`, `xoxp-`, `xoxr-` or `xoxs-` + 10 or more of `[A-Za-z0-9-]`.
fn slack_token_at(body: &[u8], i: usize) -> bool {
    const MIN_TAIL: usize = 10;
    let rest = &body[i..];
    if rest.len() < 5
        || !rest.starts_with(b"xox")
        || !matches!(rest[3], b'a' | b'b' | b'p' | b'r' | b's')
        || rest[4] != b'-'
        || !starts_token(body, i)
    {
        return false;
    }
    let tail_len = run_len(body, i + 5, |b| is_alnum(b) || b == b'-');
    tail_len >= MIN_TAIL && looks_random(&body[i + 5..i + 5 + tail_len])
}

/// Whether `word` sits at `i` as a JSON string, quoted either plainly
/// (`"word"`) or escaped inside another JSON string (`\"word\"`).
fn quoted_at(body: &[u8], i: usize, word: &[u8]) -> bool {
    if i == 0 || body[i - 1] != b'"' || !body[i..].starts_with(word) {
        return false;
    }
    let close = &body[i + word.len()..];
    let escaped_open = i >= 2 && body[i - 2] == b'\\';
    if escaped_open {
        close.starts_with(b"\\\"")
    } else {
        close.starts_with(b"\"")
    }
}

/// Whether the quoted value at `i` is the value of a `type` key:
/// `"type": "service_account"` in any spacing, plain or escaped.
fn follows_type_key(body: &[u8], i: usize) -> bool {
    // Step back over the value's opening quote (`"` or `\"`).
    let mut end = i - 1;
    if end >= 1 && body[end - 1] == b'\\' {
        end -= 1;
    }
    // Then over the separator: blanks, `:`, and escaped blanks (`\n`, `\t`, `\r`).
    let mut colons = 0;
    loop {
        match end.checked_sub(1).map(|p| body[p]) {
            Some(b' ' | b'\t' | b'\r' | b'\n') => end -= 1,
            Some(b':') => {
                colons += 1;
                end -= 1;
            }
            Some(b'n' | b't' | b'r') if end >= 2 && body[end - 2] == b'\\' => end -= 2,
            _ => break,
        }
    }
    colons == 1 && (body[..end].ends_with(b"\"type\"") || body[..end].ends_with(b"\\\"type\\\""))
}

/// What a scrubbed credential is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Prefixes of credentials a provider may echo in an error body, often
/// partly masked (`sk-proj-****abcd`): what follows each, up to the end of the
/// token, is replaced.
const ECHOED_PREFIXES: [&[u8]; 10] = [
    b"sk-",
    b"AKIA",
    b"ASIA",
    b"AIza",
    b"ghp_",
    b"gho_",
    b"ghs_",
    b"github_pat_",
    b"xox",
    b"Bearer ",
];

/// Shortest token after a prefix that is scrubbed (shorter is a word, not a key).
const MIN_ECHOED_TOKEN: usize = 6;

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b'.' | b'~' | b'+' | b'/' | b'=')
}

/// `body` with anything that looks like a credential replaced by
/// [`REDACTED`]: for provider error bodies relayed to the app, which can quote
/// the (masked) key that was refused. A prefix counts only at the start of a
/// token, so `task-force` keeps its `sk-`.
pub fn scrub_credentials(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let at_token_start = i == 0 || !body[i - 1].is_ascii_alphanumeric();
        let matched = at_token_start
            .then(|| ECHOED_PREFIXES.iter().find(|p| body[i..].starts_with(p)))
            .flatten();
        if let Some(prefix) = matched {
            let start = i + prefix.len();
            let mut end = start + body[start..].iter().take_while(|b| token_byte(**b)).count();
            // A sentence's full stop is not part of the key.
            while end > start && body[end - 1] == b'.' {
                end -= 1;
            }
            if end - start >= MIN_ECHOED_TOKEN {
                out.extend_from_slice(prefix);
                out.extend_from_slice(REDACTED.as_bytes());
                i = end;
                continue;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPENAI_KEY: &str = "sk-proj-Ab3dEf5hIj7lMn9pQr1tUv3xYz5aBc7eFg9iJk";
    const OPENAI_LEGACY_KEY: &str = "sk-T3BlbkFJa1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8";
    const ANTHROPIC_KEY: &str = "sk-ant-api03-Xy7Q9r2T4v6W8z0A1b3C5d7E9f1G3h5J7k9L1m3N5p7Q9r1S3t5V7w9X1y3Z5a7B9c1D3e5F7g9H1j-Ab1Cd2AA";
    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const AWS_SESSION_KEY: &str = "ASIAY34FZKBOKMUTVV7A";
    const GITHUB_TOKEN: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    const GITHUB_PAT: &str =
        "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV";
    const SLACK_TOKEN: &str = "xoxb-2401516784-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";

    fn kind(text: &str) -> Option<&'static str> {
        find_secret(text.as_bytes()).map(SecretKind::code)
    }

    /// `text` as the user turn of a chat request, the way clients send it.
    fn in_chat_request(text: &str) -> String {
        serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": text}],
        })
        .to_string()
    }

    fn pem(label: &str) -> String {
        format!(
            "-----BEGIN {label}-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END {label}-----\n"
        )
    }

    /// A key file as Google issues it: `type` first, the PEM key JSON-escaped.
    fn gcp_key_file() -> String {
        let private_key = serde_json::to_string(&pem("PRIVATE KEY")).unwrap();
        format!(
            "{{\n  \"type\": \"service_account\",\n  \"project_id\": \"demo\",\n  \
             \"private_key_id\": \"0123456789abcdef\",\n  \"private_key\": {private_key},\n  \
             \"client_email\": \"svc@demo.iam.gserviceaccount.com\"\n}}\n"
        )
    }

    #[test]
    fn codes_are_stable() {
        let codes = [
            SecretKind::PemPrivateKey,
            SecretKind::AwsAccessKeyId,
            SecretKind::GcpServiceAccountKey,
            SecretKind::OpenAiApiKey,
            SecretKind::AnthropicApiKey,
            SecretKind::GithubToken,
            SecretKind::SlackToken,
        ]
        .map(SecretKind::code);
        assert_eq!(
            codes,
            [
                "pem_private_key",
                "aws_access_key_id",
                "gcp_service_account_key",
                "openai_api_key",
                "anthropic_api_key",
                "github_token",
                "slack_token",
            ]
        );
    }

    #[test]
    fn pem_private_keys_of_every_label() {
        for label in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "DSA PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "PGP PRIVATE KEY BLOCK",
        ] {
            let key = pem(label);
            assert_eq!(kind(&key), Some("pem_private_key"), "{label}");
            assert_eq!(
                kind(&in_chat_request(&format!("fix this:\n{key}"))),
                Some("pem_private_key"),
                "{label}"
            );
        }
    }

    #[test]
    fn pem_near_misses() {
        for text in [
            pem("CERTIFICATE"),
            pem("PUBLIC KEY"),
            pem("RSA PUBLIC KEY"),
            "-----BEGIN PRIVATE KEY".to_string(),
            "----BEGIN PRIVATE KEY-----".to_string(),
            "-----BEGIN private key-----".to_string(),
            "-----BEGIN PRIVATE KEYS-----".to_string(),
            "-----BEGIN  ---- PRIVATE KEY-----".to_string(),
        ] {
            assert_eq!(kind(&text), None, "{text}");
        }
    }

    #[test]
    fn aws_access_key_ids() {
        for key in [AWS_KEY, AWS_SESSION_KEY] {
            assert_eq!(kind(key), Some("aws_access_key_id"));
            assert_eq!(
                kind(&format!("aws_access_key_id = {key}\n")),
                Some("aws_access_key_id")
            );
            assert_eq!(
                kind(&format!("export AWS_ACCESS_KEY_ID={key};")),
                Some("aws_access_key_id")
            );
            assert_eq!(
                kind(&in_chat_request(&format!("creds:\n{key}"))),
                Some("aws_access_key_id")
            );
            assert_eq!(
                kind(&in_chat_request(&format!("\t{key}\t"))),
                Some("aws_access_key_id")
            );
        }
    }

    #[test]
    fn aws_near_misses() {
        for text in [
            "AKIAIOSFODNN7EXAMPL",   // 15 after the prefix
            "AKIAIOSFODNN7EXAMPLE1", // 17
            "AKIAIOSFODNN7EXAMPLe",  // lowercase
            "XAKIAIOSFODNN7EXAMPLE", // inside a word
            "AKIAIOSFODNN7EXAMPLEs", // runs on into a word
            "ABIAIOSFODNN7EXAMPLE",  // other prefix
            "the AKIA prefix is documented",
        ] {
            assert_eq!(kind(text), None, "{text}");
        }
    }

    #[test]
    fn gcp_service_account_key_files() {
        let file = gcp_key_file();
        let parsed: serde_json::Value = serde_json::from_str(&file).unwrap();
        assert_eq!(parsed["type"], "service_account");
        assert_eq!(kind(&file), Some("gcp_service_account_key"));
        // Pasted into a prompt: every quote arrives as \" and newline as \n.
        let request = in_chat_request(&format!("why does this fail?\n{file}"));
        assert!(request.contains(r#"\"type\": \"service_account\""#));
        assert_eq!(kind(&request), Some("gcp_service_account_key"));
        // Compact, redacted key: no PEM, both markers still there.
        let compact =
            r#"{"type":"service_account","private_key":"<redacted>","client_email":"a@b"}"#;
        assert_eq!(kind(compact), Some("gcp_service_account_key"));
        assert_eq!(
            kind(&in_chat_request(compact)),
            Some("gcp_service_account_key")
        );
    }

    #[test]
    fn gcp_near_misses() {
        for text in [
            r#"{"type": "service_account", "client_email": "a@b"}"#,
            r#"{"type": "authorized_user", "private_key": "<redacted>"}"#,
            r#"{"kind": "service_account", "private_key_id": "abc"}"#,
            r#"{"type": "service_account_x", "private_key": "x"}"#,
            "type: service_account and private_key are field names",
            r#"{"type": "service_account", "private_key_id": "abc"}"#,
        ] {
            assert_eq!(kind(text), None, "{text}");
            assert_eq!(kind(&in_chat_request(text)), None, "{text}");
        }
    }

    #[test]
    fn openai_api_keys() {
        for key in [
            OPENAI_KEY,
            OPENAI_LEGACY_KEY,
            "sk-svcacct-Zz9_Yy8-Xx7Ww6Vv5Uu4Tt3",
        ] {
            assert_eq!(kind(key), Some("openai_api_key"), "{key}");
            assert_eq!(
                kind(&format!("Authorization: Bearer {key}")),
                Some("openai_api_key")
            );
            assert_eq!(
                kind(&format!("OPENAI_API_KEY=\"{key}\"")),
                Some("openai_api_key")
            );
            assert_eq!(
                kind(&in_chat_request(&format!("my key is\n{key}"))),
                Some("openai_api_key")
            );
        }
        // A JSON \u escape before the key is a separator too.
        assert_eq!(
            kind(&format!(r"key:\u000a{OPENAI_KEY}")),
            Some("openai_api_key")
        );
    }

    #[test]
    fn anthropic_api_keys() {
        assert_eq!(kind(ANTHROPIC_KEY), Some("anthropic_api_key"));
        assert_eq!(
            kind(&format!("x-api-key: {ANTHROPIC_KEY}")),
            Some("anthropic_api_key")
        );
        assert_eq!(
            kind(&in_chat_request(&format!("use\n{ANTHROPIC_KEY}"))),
            Some("anthropic_api_key")
        );
        assert_eq!(
            kind("sk-ant-0123456789abcdefghij"),
            Some("anthropic_api_key")
        );
    }

    #[test]
    fn sk_near_misses() {
        for text in [
            "ask-me-anything-about-the-weather-today",
            "task-1234567890abcdefghijklmnop",
            "risk-0123456789ABCDEFGHIJ",
            "sk-short1234",
            "sk-ant-short1",
            "use sk-learn-style-pipelines-for-everything",
            "sk-",
            "sk-ant-",
            r"\\nsk-0123456789abcdefghijXYZ", // an escaped backslash then a literal 'n'
        ] {
            assert_eq!(kind(text), None, "{text}");
        }
    }

    #[test]
    fn github_tokens() {
        for token in [
            GITHUB_TOKEN,
            "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghu_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghr_16C7e42F292c6912E7710c838347Ae178B4a",
            GITHUB_PAT,
        ] {
            assert_eq!(kind(token), Some("github_token"), "{token}");
            assert_eq!(kind(&format!("GH_TOKEN={token}")), Some("github_token"));
            assert_eq!(
                kind(&in_chat_request(&format!("token:\n{token}"))),
                Some("github_token")
            );
        }
        for text in [
            "ghp_short123",
            "ghx_16C7e42F292c6912E7710c838347Ae178B4a",
            "sighp_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghp_only_lowercase_words_joined_together",
            "github_pat_",
        ] {
            assert_eq!(kind(text), None, "{text}");
        }
    }

    #[test]
    fn slack_tokens() {
        for token in [
            SLACK_TOKEN,
            "xoxp-1234567890-abc",
            "xoxa-2-AbCdEfGhIjK",
            "xoxs-0123456789",
            "xoxr-9876543210",
        ] {
            assert_eq!(kind(token), Some("slack_token"), "{token}");
            assert_eq!(
                kind(&in_chat_request(&format!("slack:\n{token}"))),
                Some("slack_token")
            );
        }
        for text in [
            "xoxb-123",
            "xoxc-1234567890abc",
            "boxoxb-1234567890abc",
            "xoxb-helloworld-again",
        ] {
            assert_eq!(kind(text), None, "{text}");
        }
    }

    #[test]
    fn found_at_every_offset_across_block_edges() {
        for (key, code) in [
            (AWS_KEY, "aws_access_key_id"),
            (OPENAI_KEY, "openai_api_key"),
            (GITHUB_TOKEN, "github_token"),
            (SLACK_TOKEN, "slack_token"),
            ("-----BEGIN EC PRIVATE KEY-----", "pem_private_key"),
        ] {
            for offset in 0..70 {
                for trailing in [0, 1, 33] {
                    let text = format!("{}{key}{}", " ".repeat(offset), " ".repeat(trailing));
                    assert_eq!(kind(&text), Some(code), "{key} at {offset}+{trailing}");
                }
            }
        }
    }

    #[test]
    fn first_secret_in_body_order_wins() {
        assert_eq!(
            kind(&format!("{GITHUB_TOKEN} {AWS_KEY}")),
            Some("github_token")
        );
        assert_eq!(
            kind(&format!("{AWS_KEY} {GITHUB_TOKEN}")),
            Some("aws_access_key_id")
        );
    }

    #[test]
    fn ordinary_requests_pass() {
        let prose = "Please summarise: the task-runner asks for skills; ask-me-anything sessions \
                     happen at -----BREAK----- time. AKIA is AWS's prefix. xox marks the spot. \
                     github_pat is a name. The service_account field and private_key_id differ.";
        assert_eq!(kind(prose), None);
        assert_eq!(kind(&in_chat_request(prose)), None);
        assert_eq!(kind(""), None);
        assert_eq!(find_secret(&[0xff, 0xfe, b's', b'k', b'-', 0x80]), None);
    }

    #[test]
    fn secret_at_the_very_end_or_cut_off() {
        assert_eq!(kind(&format!("x {AWS_KEY}")), Some("aws_access_key_id"));
        for cut in 1..AWS_KEY.len() {
            assert_eq!(kind(&AWS_KEY[..cut]), None);
        }
        for cut in 1..10 {
            assert_eq!(kind(&"-----BEGIN PRIVATE KEY-----"[..cut]), None);
        }
    }

    const PREFIXES: [&str; 12] = [
        "-----BEGIN",
        "AKIA",
        "ASIA",
        "sk-",
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "ghr_",
        "github_pat_",
        "xox",
        "service_account",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_ascii_without_prefixes_is_never_flagged(text in "[ -~\t\n]{0,400}") {
            prop_assume!(!PREFIXES.iter().any(|p| text.contains(p)));
            prop_assert_eq!(kind(&text), None);
        }

        /// Near-miss soup: fragments of every pattern, glued at random.
        #[test]
        fn fragment_soup_without_prefixes_is_never_flagged(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "sk", "s", "k-", "-", "--", "-----", "BEGIN ", "PRIVATE KEY", "AKI", "ASI", "A",
                    "gh", "p_", "github_", "pat_", "xo", "xb-", "\\\"", "\"", "type", ":", " ",
                    "service", "_account", "private_key", "\\n", "Zz9", "0123456789ABCDEF",
                ]),
                0..60,
            )
        ) {
            let text = parts.concat();
            // Flagged implies a pattern prefix is present; no rejection sampling,
            // so the many soups that do contain one still exercise the matchers.
            if kind(&text).is_some() {
                prop_assert!(PREFIXES.iter().any(|p| text.contains(p)), "{text}");
            }
        }

        #[test]
        fn embedded_keys_are_always_found(
            before in "[ -~]{0,200}",
            after in "[ -~]{0,200}",
            which in 0usize..7,
        ) {
            let (key, code) = [
                (OPENAI_KEY, "openai_api_key"),
                (ANTHROPIC_KEY, "anthropic_api_key"),
                (AWS_KEY, "aws_access_key_id"),
                (GITHUB_TOKEN, "github_token"),
                (GITHUB_PAT, "github_token"),
                (SLACK_TOKEN, "slack_token"),
                ("-----BEGIN RSA PRIVATE KEY-----", "pem_private_key"),
            ][which];
            prop_assume!(!PREFIXES.iter().any(|p| before.contains(p)));
            let text = format!("{before} {key} {after}");
            prop_assert_eq!(kind(&text), Some(code));
            prop_assert_eq!(kind(&in_chat_request(&text)), Some(code));
        }
    }

    #[test]
    fn echoed_credentials_are_scrubbed_from_error_bodies() {
        let scrub = |text: &str| String::from_utf8(scrub_credentials(text.as_bytes())).unwrap();
        assert_eq!(
            scrub(
                r#"{"error":{"message":"Incorrect API key provided: sk-proj-****************abcd. Check it."}}"#
            ),
            r#"{"error":{"message":"Incorrect API key provided: sk-[redacted]. Check it."}}"#
        );
        assert_eq!(
            scrub("x-api-key sk-ant-api03-AbCdEf123456"),
            "x-api-key sk-[redacted]"
        );
        assert_eq!(
            scrub("key AKIAIOSFODNN7EXAMPLE denied"),
            "key AKIA[redacted] denied"
        );
        assert_eq!(
            scrub("Authorization: Bearer eyJhbGciOi.xyz"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(scrub("AIzaSyA-1234567890abcdef"), "AIza[redacted]");
        // Words and short tails are left alone.
        for keep in [
            "task-force-alpha",
            "sk-1",
            "the risk-averse ASIAN market",
            "Bearer x",
        ] {
            assert_eq!(scrub(keep), keep);
        }
        assert_eq!(scrub(""), "");
    }
}

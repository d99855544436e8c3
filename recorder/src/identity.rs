//! The recorder's identity on disk: its Ed25519 checkpoint key (0600, created on
//! first start, or mounted from a Secret), the log origin derived from it, the
//! local-mode bearer token (0600), and the trust anchor auditors verify with.

use std::io::Write;
use std::path::{Path, PathBuf};

use tollgate_evidence::{Identifier, KeyId, SigningKey};

/// File name of the recorder key inside the data directory.
pub const KEY_FILE: &str = "recorder.key";
/// File name of the recorder's trust anchor inside the data directory.
pub const TRUST_ANCHOR_FILE: &str = "recorder-trust-anchor.yaml";
/// File name of the local-mode token inside the data directory.
pub const LOCAL_TOKEN_FILE: &str = "local-token";

/// Why key material could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// No randomness.
    #[error("no randomness available: {0}")]
    Random(String),
    /// A secret file that is too open, too large or unreadable.
    #[error(transparent)]
    Secret(#[from] tollgate_wire::secret::SecretFileError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// 32 random bytes.
pub fn random_bytes() -> Result<[u8; 32], IdentityError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Writes `content` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private_file(path: &Path, content: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(content).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads a key file: 64 hex characters (the Ed25519 seed), whitespace trimmed.
pub fn read_key_file(path: &Path) -> Result<SigningKey, IdentityError> {
    let text = tollgate_wire::secret::read_secret_file(path)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| IdentityError::Invalid {
        path: path.to_path_buf(),
        reason: "expected 64 hex characters (an Ed25519 seed)".into(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The recorder key at `path`, created (0600) if the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, IdentityError> {
    if path.exists() {
        return read_key_file(path);
    }
    let seed = random_bytes()?;
    write_private_file(path, hex::encode(seed).as_bytes())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The log origin for a recorder key: `tollgate.dev/recorder/<first 16 hex of key id>`.
pub fn default_origin(key: &SigningKey) -> Result<Identifier, tollgate_evidence::FieldError> {
    let id = KeyId::of_signing_key(key).to_string();
    let short = id.get(..16).unwrap_or(&id);
    Identifier::new(format!("tollgate.dev/recorder/{short}"))
}

/// The local-mode bearer token at `path`, created (0600, 64 hex characters) if missing.
pub fn load_or_create_token(path: &Path) -> Result<String, IdentityError> {
    if path.exists() {
        let token = tollgate_wire::secret::read_secret_file(path)?;
        let token = token.trim().to_string();
        if token.len() < 32 {
            return Err(IdentityError::Invalid {
                path: path.to_path_buf(),
                reason: "token is shorter than 32 characters".into(),
            });
        }
        return Ok(token);
    }
    let token = hex::encode(random_bytes()?);
    write_private_file(path, token.as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_are_created_private_and_reread() {
        let dir = std::env::temp_dir().join(format!("tg-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_path = dir.join(KEY_FILE);
        let key = load_or_create_key(&key_path).unwrap();
        let again = load_or_create_key(&key_path).unwrap();
        assert_eq!(key.to_bytes(), again.to_bytes());
        let token_path = dir.join(LOCAL_TOKEN_FILE);
        let token = load_or_create_token(&token_path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&token_path).unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&key_path, &token_path] {
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
        // A key others can read is refused, with how to fix it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create_key(&key_path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(
            default_origin(&key)
                .unwrap()
                .as_str()
                .starts_with("tollgate.dev/recorder/")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Secrets on disk and in memory: files holding keys, tokens or passwords are
//! read with a size bound and refused when other users may read them; secret
//! strings are compared in constant time.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest secret file read (a PEM chain with its key fits many times over).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is larger than a secret file can be.
    #[error("{path} is over {MAX_SECRET_FILE_BYTES} bytes, too large for a key or token file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Users other than the owner may read it.
    #[error(
        "{path} holds a secret but its mode is {mode:04o}, readable beyond its owner: run \
         `chmod 600 {path}` (in Kubernetes, mount the Secret with defaultMode: 0400)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a file holding a secret: at most [`MAX_SECRET_FILE_BYTES`], and only
/// if neither its group nor others have any permission on it (on Unix).
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        path: path.to_path_buf(),
    })
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only:
/// for tokens and MACs, so that a caller cannot learn a secret byte by byte
/// from how long a refusal takes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-secret-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("secret")
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    #[cfg(unix)]
    fn only_owner_only_files_are_read() {
        let path = scratch("modes");
        std::fs::write(&path, "s3cret\n").unwrap();
        for mode in [0o600, 0o400] {
            set_mode(&path, mode);
            assert_eq!(read_secret_file(&path).unwrap(), "s3cret\n");
        }
        for mode in [0o644, 0o640, 0o604, 0o660] {
            set_mode(&path, mode);
            let err = read_secret_file(&path).unwrap_err().to_string();
            assert!(
                err.contains("chmod 600") && err.contains(&format!("{mode:04o}")),
                "{err}"
            );
        }
    }

    #[test]
    #[cfg(unix)]
    fn big_and_binary_files_are_refused() {
        let path = scratch("size");
        std::fs::write(&path, vec![b'a'; 70_000]).unwrap();
        set_mode(&path, 0o600);
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::TooLarge { .. })
        ));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::NotText { .. })
        ));
        assert!(matches!(
            read_secret_file(&path.with_extension("missing")),
            Err(SecretFileError::Io { .. })
        ));
    }

    #[test]
    fn equality_is_by_content() {
        assert!(constant_time_eq(b"token-1", b"token-1"));
        assert!(!constant_time_eq(b"token-1", b"token-2"));
        assert!(!constant_time_eq(b"token-1", b"token-12"));
        assert!(constant_time_eq(b"", b""));
    }
}

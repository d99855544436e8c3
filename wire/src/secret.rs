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
    /// Users it is not meant for may read it.
    #[error(
        "{path} holds a secret but its mode is {mode:04o}, open beyond its owner: run \
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

/// Reads a file holding a secret: at most [`MAX_SECRET_FILE_BYTES`], and on
/// Unix only if others have no permission on it and its group none either,
/// except read when root owns it: a Kubernetes Secret volume with `fsGroup`
/// is root-owned with its group given read (0400 becomes 0440), the rule
/// PostgreSQL applies to its key files.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = metadata.permissions().mode() & 0o7777;
        if !private_enough(mode, metadata.uid()) {
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

/// Whether a secret file with permission bits `mode`, owned by `owner`, is
/// closed enough: nothing for others; for the group nothing, or read alone
/// when root owns the file.
pub fn private_enough(mode: u32, owner: u32) -> bool {
    let others = mode & 0o007;
    let group = mode & 0o070;
    others == 0 && (group == 0 || (owner == 0 && group == 0o040))
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
    fn who_may_read_a_secret_file() {
        // Owner only, any owner.
        for owner in [0, 1000] {
            assert!(private_enough(0o600, owner));
            assert!(private_enough(0o400, owner));
            for open in [0o644, 0o604, 0o660, 0o620, 0o670, 0o606] {
                assert!(!private_enough(open, owner), "{open:o} owner {owner}");
            }
        }
        // Group read only for root-owned files (a Secret volume with fsGroup).
        assert!(private_enough(0o440, 0));
        assert!(private_enough(0o640, 0));
        assert!(!private_enough(0o440, 1000));
        assert!(!private_enough(0o640, 1000));
    }

    #[test]
    #[cfg(unix)]
    fn closed_files_are_read_and_open_ones_refused_with_the_fix() {
        let path = scratch("modes");
        std::fs::write(&path, "s3cret\n").unwrap();
        for mode in [0o600, 0o400] {
            set_mode(&path, mode);
            assert_eq!(read_secret_file(&path).unwrap(), "s3cret\n");
        }
        for mode in [0o644, 0o604, 0o660] {
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

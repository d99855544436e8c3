//! The operator's own random secrets, each a Secret of the operator namespace
//! holding 32 random bytes as 64 hex digits, created if absent with a plain
//! create so that replicas racing at start end with one value: the loser of
//! the race reads the winner's.
//!
//! - the receipt CA seed ([`crate::receipt_ca`]);
//! - the caller key ([`CALLER_KEY_NAME`]): end-user ids are hashed under it
//!   into receipts' `caller_hash`. Every gateway gets it in its config
//!   document; it never goes to an application namespace. It is not rotated:
//!   a new key gives every end user a new hash, so deleting the Secret (and
//!   restarting the operator) starts usage by caller afresh.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tollgate_wire::caller::CallerKey;

use crate::receipt_ca::FIELD_MANAGER;

/// The Secret holding the caller key.
pub const CALLER_KEY_NAME: &str = "tollgate-caller-key";
/// Its key.
pub const CALLER_KEY_KEY: &str = "hmac-sha256.key";

/// Why a secret could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum ClusterSecretError {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no randomness for a new key: {0}")]
    Random(String),
    #[error("Secret {name} key {key} must be 64 lowercase hex characters")]
    Malformed {
        name: &'static str,
        key: &'static str,
    },
}

/// The Secret `name`, created with 32 random bytes under `key` if absent.
pub async fn load_or_create(
    secrets: &Api<Secret>,
    name: &'static str,
    key: &'static str,
) -> Result<Secret, ClusterSecretError> {
    if let Some(secret) = secrets.get_opt(name).await? {
        return Ok(secret);
    }
    let mut value = [0u8; 32];
    getrandom::fill(&mut value).map_err(|e| ClusterSecretError::Random(e.to_string()))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some([(key.to_owned(), ByteString(hex::encode(value).into_bytes()))].into()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!("created the Secret {name}");
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(secrets.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The hex value under `key`, checked: 64 lowercase hex digits (a trailing
/// newline is allowed).
pub fn hex_value<'a>(
    secret: &'a Secret,
    name: &'static str,
    key: &'static str,
) -> Result<&'a str, ClusterSecretError> {
    let malformed = || ClusterSecretError::Malformed { name, key };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(malformed)?;
    let text = std::str::from_utf8(&value.0)
        .map_err(|_| malformed())?
        .trim();
    let lower_hex = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if lower_hex {
        Ok(text)
    } else {
        Err(malformed())
    }
}

/// Wall-clock now in unix milliseconds.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The cluster's caller key, created on first start.
pub async fn load_or_create_caller_key(
    secrets: &Api<Secret>,
) -> Result<CallerKey, ClusterSecretError> {
    let secret = load_or_create(secrets, CALLER_KEY_NAME, CALLER_KEY_KEY).await?;
    caller_key_of(&secret)
}

fn caller_key_of(secret: &Secret) -> Result<CallerKey, ClusterSecretError> {
    let text = hex_value(secret, CALLER_KEY_NAME, CALLER_KEY_KEY)?;
    CallerKey::from_hex(text).map_err(|_| ClusterSecretError::Malformed {
        name: CALLER_KEY_NAME,
        key: CALLER_KEY_KEY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> Secret {
        Secret {
            data: Some(
                [(
                    CALLER_KEY_KEY.to_owned(),
                    ByteString(value.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn values_are_64_lowercase_hex_digits() {
        let key = caller_key_of(&secret(&format!("{}\n", "3c".repeat(32)))).unwrap();
        assert_eq!(key, CallerKey::from_bytes([0x3c; 32]));
        for bad in [
            "",
            "3c",
            &"3C".repeat(32),
            &"zz".repeat(32),
            &"3c".repeat(33),
        ] {
            let err = caller_key_of(&secret(bad)).unwrap_err();
            assert!(err.to_string().contains(CALLER_KEY_NAME), "{err}");
        }
        assert!(caller_key_of(&Secret::default()).is_err());
    }
}

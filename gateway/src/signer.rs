//! The stream key as the spool signs with it. Two Ed25519 signatures per
//! request (the forward decision and the receipt) are the largest single cost
//! of a request, so records are signed with AWS-LC, whose Ed25519 runs
//! s2n-bignum assembly on x86-64 and aarch64 (`docs/decisions.md` has the
//! measurements). Ed25519 is deterministic: both libraries sign a message
//! with the same 64 bytes, which the tests and each signer's self-check
//! confirm, and everything that verifies keeps using ed25519-dalek.

use aws_lc_rs::signature::Ed25519KeyPair;
use tollgate_evidence::{KeyId, RecordSigner, SignatureHex, SigningKey};

/// What each signer signs both ways when it is loaded.
const SELF_CHECK_MESSAGE: &[u8] = b"tollgate stream signer self-check";

/// Why a stream key could not be prepared for signing.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// AWS-LC refused the key, or derived another public key from it.
    #[error("the stream key cannot be loaded into the signer: {0}")]
    Rejected(String),
    /// AWS-LC and ed25519-dalek signed the self-check message differently.
    #[error("the signer's self-check failed: AWS-LC and ed25519-dalek disagree")]
    SelfCheck,
}

/// A stream's signing key, loaded once into AWS-LC, with its key id computed
/// once (every record carries it).
pub struct StreamSigner {
    key: SigningKey,
    key_id: KeyId,
    aws_lc: Ed25519KeyPair,
}

impl StreamSigner {
    /// Loads `key`. AWS-LC derives the public half from the seed again and
    /// refuses if it differs from ed25519-dalek's; then both sign a fixed
    /// message, and the key is refused unless the bytes agree.
    pub fn new(key: SigningKey) -> Result<Self, SignerError> {
        let aws_lc = Ed25519KeyPair::from_seed_and_public_key(
            key.as_bytes(),
            key.verifying_key().as_bytes(),
        )
        .map_err(|e| SignerError::Rejected(e.to_string()))?;
        let signer = Self {
            key_id: KeyId::of_signing_key(&key),
            key,
            aws_lc,
        };
        if signer.sign_with_aws_lc(SELF_CHECK_MESSAGE)
            != Some(signer.key.sign_message(SELF_CHECK_MESSAGE))
        {
            return Err(SignerError::SelfCheck);
        }
        Ok(signer)
    }

    /// The key itself, for the record signed once per stream (its close).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// AWS-LC's signature; `None` if it failed (it allocates).
    fn sign_with_aws_lc(&self, message: &[u8]) -> Option<SignatureHex> {
        let signature = self.aws_lc.try_sign(message).ok()?;
        let bytes = <[u8; 64]>::try_from(signature.as_ref()).ok()?;
        Some(SignatureHex::from_bytes(bytes))
    }
}

impl RecordSigner for StreamSigner {
    fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// AWS-LC's signature, or, should AWS-LC fail (it can only fail to
    /// allocate), ed25519-dalek's: the same bytes, computed more slowly.
    fn sign_message(&self, message: &[u8]) -> SignatureHex {
        self.sign_with_aws_lc(message)
            .unwrap_or_else(|| self.key.sign_message(message))
    }
}

impl std::fmt::Debug for StreamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("StreamSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// AWS-LC and ed25519-dalek sign every message with the same bytes,
        /// and the signature verifies strictly.
        #[test]
        fn signs_as_ed25519_dalek_does(seed in any::<[u8; 32]>(), message in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let key = SigningKey::from_bytes(&seed);
            let signer = StreamSigner::new(key.clone()).unwrap();
            let signature = signer.sign_with_aws_lc(&message).unwrap();
            prop_assert_eq!(signature, key.sign_message(&message));
            prop_assert_eq!(signer.sign_message(&message), signature);
            prop_assert_eq!(signer.key_id(), KeyId::of_signing_key(&key));
            let dalek = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
            prop_assert!(key.verifying_key().verify_strict(&message, &dalek).is_ok());
        }
    }

    /// RFC 8032 section 7.1, tests 1 to 3: secret key, public key, message,
    /// signature.
    const RFC_8032_VECTORS: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn signs_rfc_8032_test_vectors() {
        for (secret, public, message, expected) in RFC_8032_VECTORS {
            let seed: [u8; 32] = hex::decode(secret).unwrap().try_into().unwrap();
            let key = SigningKey::from_bytes(&seed);
            assert_eq!(hex::encode(key.verifying_key().as_bytes()), public);
            let signer = StreamSigner::new(key).unwrap();
            let message = hex::decode(message).unwrap();
            let signature = signer.sign_with_aws_lc(&message).unwrap();
            assert_eq!(hex::encode(signature.as_bytes()), expected);
            assert_eq!(signer.signing_key().sign_message(&message), signature);
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let shown = format!("{:?}", StreamSigner::new(key.clone()).unwrap());
        assert!(shown.contains("key_id"));
        assert!(!shown.contains(&hex::encode(key.as_bytes())));
    }
}

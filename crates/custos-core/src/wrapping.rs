//! One-time RSA wrapping keys for key material imported from outside (AWS KMS's import protocol), with
//! `aws-lc-rs`, whose RSA decryption is constant-time (the `rsa` crate's is not: RUSTSEC-2023-0071).

use aws_lc_rs::encoding::{AsDer as _, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OaepAlgorithm, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256,
};
use custos_types::ErrorCode;
use zeroize::Zeroizing;

use crate::CoreError;

/// How imported material is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingAlgorithm {
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    OaepSha256,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    OaepSha1,
}

impl WrappingAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::OaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::OaepSha1 => "RSAES_OAEP_SHA_1",
        }
    }

    /// Parses the AWS name.
    pub fn parse(text: &str) -> Option<WrappingAlgorithm> {
        match text {
            "RSAES_OAEP_SHA_256" => Some(WrappingAlgorithm::OaepSha256),
            "RSAES_OAEP_SHA_1" => Some(WrappingAlgorithm::OaepSha1),
            _ => None,
        }
    }

    fn oaep(self) -> &'static OaepAlgorithm {
        match self {
            WrappingAlgorithm::OaepSha256 => &OAEP_SHA256_MGF1SHA256,
            WrappingAlgorithm::OaepSha1 => &OAEP_SHA1_MGF1SHA1,
        }
    }
}

/// A fresh wrapping key: the private half (PKCS#8 DER) and the public half (SubjectPublicKeyInfo DER).
pub(crate) struct WrappingKey {
    pub(crate) private_pkcs8: Zeroizing<Vec<u8>>,
    pub(crate) public_der: Vec<u8>,
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("RSA wrapping key: {e}"))
}

/// Makes an RSA wrapping key of `bits` (2048, 3072 or 4096).
pub(crate) fn generate(bits: u32) -> Result<WrappingKey, CoreError> {
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        other => {
            return Err(CoreError::bad(
                ErrorCode::InvalidRequest,
                format!("a wrapping key is 2048, 3072 or 4096 bits, not {other}"),
            ))
        }
    };
    let key = PrivateDecryptingKey::generate(size).map_err(internal)?;
    let private: Pkcs8V1Der<'static> = key.as_der().map_err(internal)?;
    let public: PublicKeyX509Der<'static> = key.public_key().as_der().map_err(internal)?;
    Ok(WrappingKey {
        private_pkcs8: Zeroizing::new(private.as_ref().to_vec()),
        public_der: public.as_ref().to_vec(),
    })
}

/// Decrypts wrapped key material. Every failure is the same `None`, so a caller learns nothing about why
/// (padding or length) from the answer.
pub(crate) fn unwrap(
    private_pkcs8: &[u8],
    algorithm: WrappingAlgorithm,
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let key = PrivateDecryptingKey::from_pkcs8(private_pkcs8).ok()?;
    let key = OaepPrivateDecryptingKey::new(key).ok()?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let len = key
        .decrypt(algorithm.oaep(), ciphertext, &mut out, None)
        .ok()?
        .len();
    out.truncate(len);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};

    #[test]
    fn material_wrapped_to_the_public_key_unwraps_and_tampering_does_not() {
        let key = generate(2048).unwrap();
        let public =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&key.public_der).unwrap())
                .unwrap();
        for algorithm in [WrappingAlgorithm::OaepSha256, WrappingAlgorithm::OaepSha1] {
            let mut ciphertext = vec![0u8; public.ciphertext_size()];
            let wrapped = public
                .encrypt(algorithm.oaep(), b"key material", &mut ciphertext, None)
                .unwrap()
                .to_vec();
            assert_eq!(
                unwrap(&key.private_pkcs8, algorithm, &wrapped)
                    .unwrap()
                    .as_slice(),
                b"key material"
            );
            let mut flipped = wrapped.clone();
            flipped[10] ^= 1;
            assert!(unwrap(&key.private_pkcs8, algorithm, &flipped).is_none());
        }
        assert_eq!(
            WrappingAlgorithm::parse(WrappingAlgorithm::OaepSha1.as_str()),
            Some(WrappingAlgorithm::OaepSha1)
        );
        assert!(generate(1024).is_err());
    }
}

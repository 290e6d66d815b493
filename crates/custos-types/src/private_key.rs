//! Private keys held in process memory: generation, signing, and the export form used to share a key
//! across a provider chain and to back it up. Every secret lives in a zeroizing type.

use ed25519_dalek::Signer as _;
use k256::ecdsa::signature::hazmat::PrehashSigner as _;
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::{Algorithm, PublicKey, SignPayload, TypesError};

/// A parsed private key. Each inner type zeroizes its secret on drop; `Debug` never shows it.
pub enum PrivateKey {
    /// An Ed25519 signing key.
    Ed25519(ed25519_dalek::SigningKey),
    /// A secp256k1 ECDSA signing key.
    Secp256k1(k256::ecdsa::SigningKey),
    /// A P-256 ECDSA signing key.
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.algorithm())
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate(algorithm: Algorithm) -> PrivateKey {
        match algorithm {
            Algorithm::Ed25519 => {
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
            Algorithm::Secp256k1 => {
                PrivateKey::Secp256k1(k256::ecdsa::SigningKey::random(&mut OsRng))
            }
            Algorithm::P256 => PrivateKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
        }
    }

    /// A key from its 32-byte secret: the Ed25519 seed, or the big-endian ECDSA scalar.
    pub fn from_secret(algorithm: Algorithm, secret: &[u8]) -> Result<PrivateKey, TypesError> {
        let invalid = |_| TypesError::InvalidPrivateKey(algorithm);
        Ok(match algorithm {
            Algorithm::Ed25519 => {
                let bytes: &[u8; 32] = secret
                    .try_into()
                    .map_err(|_| TypesError::InvalidPrivateKey(algorithm))?;
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(bytes))
            }
            Algorithm::Secp256k1 => {
                PrivateKey::Secp256k1(k256::ecdsa::SigningKey::from_slice(secret).map_err(invalid)?)
            }
            Algorithm::P256 => {
                PrivateKey::P256(p256::ecdsa::SigningKey::from_slice(secret).map_err(invalid)?)
            }
        })
    }

    /// The 32-byte secret (Ed25519 seed, or big-endian ECDSA scalar), in a zeroizing buffer.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            PrivateKey::Ed25519(k) => k.to_bytes().to_vec(),
            PrivateKey::Secp256k1(k) => k.to_bytes().to_vec(),
            PrivateKey::P256(k) => k.to_bytes().to_vec(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Ed25519(_) => Algorithm::Ed25519,
            PrivateKey::Secp256k1(_) => Algorithm::Secp256k1,
            PrivateKey::P256(_) => Algorithm::P256,
        }
    }

    /// The matching public key.
    #[expect(
        clippy::expect_used,
        reason = "the bytes come from a valid signing key, so they are a valid public key"
    )]
    pub fn public_key(&self) -> PublicKey {
        let (alg, bytes) = match self {
            PrivateKey::Ed25519(k) => (Algorithm::Ed25519, k.verifying_key().to_bytes().to_vec()),
            PrivateKey::Secp256k1(k) => (
                Algorithm::Secp256k1,
                k.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
            PrivateKey::P256(k) => (
                Algorithm::P256,
                k.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
        };
        PublicKey::from_bytes(alg, &bytes).expect("a valid signing key has a valid public key")
    }

    /// Signs: the message for Ed25519, the 32-byte digest for ECDSA (RFC 6979 deterministic nonces).
    /// Returns the 64-byte raw signature.
    pub fn sign(&self, payload: &SignPayload) -> Result<Vec<u8>, TypesError> {
        let ecdsa_err = |_| TypesError::NotSupported("ECDSA signing failed");
        Ok(match (self, payload) {
            (PrivateKey::Ed25519(k), SignPayload::Message(m)) => k.sign(m).to_bytes().to_vec(),
            (PrivateKey::Secp256k1(k), SignPayload::Digest(d)) => {
                let sig: k256::ecdsa::Signature = k.sign_prehash(d).map_err(ecdsa_err)?;
                sig.to_bytes().to_vec()
            }
            (PrivateKey::P256(k), SignPayload::Digest(d)) => {
                let sig: p256::ecdsa::Signature = k.sign_prehash(d).map_err(ecdsa_err)?;
                sig.to_bytes().to_vec()
            }
            (PrivateKey::Ed25519(_), SignPayload::Digest(_)) => {
                return Err(TypesError::NotSupported(
                    "ed25519 signs the message itself, not a digest",
                ))
            }
            (_, SignPayload::Message(_)) => {
                return Err(TypesError::NotSupported("ECDSA signs a 32-byte digest"))
            }
        })
    }

    /// The key as unencrypted PKCS#8 DER (RFC 5958; for Ed25519 RFC 8410 version 1), in a zeroizing buffer:
    /// what AWS KMS takes as imported key material.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, TypesError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let der = match self {
            PrivateKey::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_der(),
            PrivateKey::Secp256k1(k) => k.to_pkcs8_der(),
            PrivateKey::P256(k) => k.to_pkcs8_der(),
        }
        .map_err(|_| TypesError::InvalidPrivateKey(self.algorithm()))?;
        Ok(Zeroizing::new(der.as_bytes().to_vec()))
    }

    /// A key from unencrypted PKCS#8 DER of the given algorithm.
    pub fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<PrivateKey, TypesError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let invalid = |_| TypesError::InvalidPrivateKey(algorithm);
        Ok(match algorithm {
            Algorithm::Ed25519 => PrivateKey::Ed25519(
                ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(invalid)?,
            ),
            Algorithm::Secp256k1 => PrivateKey::Secp256k1(
                k256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(invalid)?,
            ),
            Algorithm::P256 => {
                PrivateKey::P256(p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(invalid)?)
            }
        })
    }

    /// The key as an unencrypted PKCS#8 PEM document (what `openssl pkey` reads), in a zeroizing string.
    /// Used only to put a key inside an encrypted backup.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, TypesError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let lf = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
        let pem = match self {
            // RFC 8410 version 1 (no public key inside): what OpenSSL 3.0 and every other reader take.
            PrivateKey::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(lf),
            PrivateKey::Secp256k1(k) => k.to_pkcs8_pem(lf),
            PrivateKey::P256(k) => k.to_pkcs8_pem(lf),
        }
        .map_err(|_| TypesError::InvalidPrivateKey(self.algorithm()))?;
        Ok(Zeroizing::new(pem.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SignatureFormat;

    #[test]
    fn every_algorithm_round_trips_its_secret_and_signs_verifiably() {
        for algorithm in Algorithm::ALL {
            let key = PrivateKey::generate(algorithm);
            let again = PrivateKey::from_secret(algorithm, &key.secret()).unwrap();
            assert_eq!(key.public_key(), again.public_key());
            let payload = if algorithm.is_ecdsa() {
                SignPayload::Digest([7u8; 32])
            } else {
                SignPayload::Message(b"block 7".to_vec())
            };
            let sig = again.sign(&payload).unwrap();
            key.public_key()
                .verify(&payload, &sig, SignatureFormat::Raw)
                .unwrap();
            assert!(key
                .to_pkcs8_pem()
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----"));
            assert!(!format!("{key:?}").contains(&hex::encode(key.secret())));
        }
        assert!(PrivateKey::from_secret(Algorithm::Ed25519, &[1; 31]).is_err());
        assert!(PrivateKey::from_secret(Algorithm::Secp256k1, &[0; 32]).is_err());
    }
}

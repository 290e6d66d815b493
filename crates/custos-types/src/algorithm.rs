//! Signature algorithms, message hashes and signature encodings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::TypesError;

/// A signature algorithm Custos can hold keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Ed25519 (RFC 8032), signing the message itself.
    Ed25519,
    /// ECDSA over secp256k1, signing a 32-byte digest.
    Secp256k1,
    /// ECDSA over NIST P-256, signing a 32-byte digest.
    P256,
}

impl Algorithm {
    /// All algorithms, in a stable order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Ed25519, Algorithm::Secp256k1, Algorithm::P256];

    /// The stable lower-case name used in storage, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Secp256k1 => "secp256k1",
            Algorithm::P256 => "p256",
        }
    }

    /// Whether this is an ECDSA algorithm (signs a digest, has recovery ids, has a DER encoding).
    pub fn is_ecdsa(self) -> bool {
        !matches!(self, Algorithm::Ed25519)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, TypesError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| TypesError::UnknownAlgorithm(s.chars().take(40).collect()))
    }
}

/// The hash an ECDSA key applies to a message before signing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256 (FIPS 180-4); the default.
    #[default]
    Sha256,
    /// Keccak-256 as Ethereum uses it (not NIST SHA3-256).
    Keccak256,
}

impl HashAlgorithm {
    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Keccak256 => "keccak256",
        }
    }

    /// Hashes `message` to a 32-byte digest.
    pub fn digest(self, message: &[u8]) -> [u8; 32] {
        match self {
            HashAlgorithm::Sha256 => sha2::Sha256::digest(message).into(),
            HashAlgorithm::Keccak256 => sha3::Keccak256::digest(message).into(),
        }
    }
}

impl FromStr for HashAlgorithm {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, TypesError> {
        match s {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "keccak256" => Ok(HashAlgorithm::Keccak256),
            other => Err(TypesError::UnknownHash(other.chars().take(40).collect())),
        }
    }
}

/// How a signature is encoded on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    /// 64 bytes: R‖S for Ed25519, r‖s (big-endian, low-s) for ECDSA; the default.
    #[default]
    Raw,
    /// ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }`; ECDSA only.
    Der,
}

impl FromStr for SignatureFormat {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, TypesError> {
        match s {
            "raw" => Ok(SignatureFormat::Raw),
            "der" => Ok(SignatureFormat::Der),
            _ => Err(TypesError::NotSupported(
                "unknown signature format: expected raw or der",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>().unwrap(), alg);
        }
        assert!("rsa".parse::<Algorithm>().is_err());
    }

    #[test]
    fn known_digests() {
        assert_eq!(
            hex::encode(HashAlgorithm::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Keccak-256 of the empty string (the well-known Ethereum constant).
        assert_eq!(
            hex::encode(HashAlgorithm::Keccak256.digest(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }
}

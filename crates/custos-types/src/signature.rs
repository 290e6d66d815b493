//! What a key signs (a message or a digest) and the verified, normalised signature it produces.

use crate::{Algorithm, SignatureFormat, TypesError};

/// Length of the digest an ECDSA key signs.
pub const DIGEST_LEN: usize = 32;

/// The bytes a provider is asked to sign.
///
/// Ed25519 signs the message itself; ECDSA signs a 32-byte digest that Custos computes (or the caller gives),
/// so every provider signs exactly the same thing for the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignPayload {
    /// The whole message (Ed25519).
    Message(Vec<u8>),
    /// A 32-byte digest (ECDSA).
    Digest([u8; DIGEST_LEN]),
}

impl SignPayload {
    /// Builds a digest payload from a slice, checking its length.
    pub fn digest_from_slice(digest: &[u8]) -> Result<SignPayload, TypesError> {
        let digest: [u8; DIGEST_LEN] =
            digest
                .try_into()
                .map_err(|_| TypesError::InvalidDigestLength {
                    expected: DIGEST_LEN,
                    got: digest.len(),
                })?;
        Ok(SignPayload::Digest(digest))
    }

    /// The bytes themselves.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SignPayload::Message(m) => m,
            SignPayload::Digest(d) => d,
        }
    }
}

/// A signature that has been verified against its public key and normalised.
///
/// For ECDSA, `raw` is r‖s with s in the lower half of the group order, and `recovery_id` is the value (0
/// or 1) that recovers the public key from the signature and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    algorithm: Algorithm,
    raw: [u8; 64],
    recovery_id: Option<u8>,
}

impl Signature {
    pub(crate) fn new(algorithm: Algorithm, raw: [u8; 64], recovery_id: Option<u8>) -> Self {
        Self {
            algorithm,
            raw,
            recovery_id,
        }
    }

    /// The algorithm that made it.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The 64-byte encoding (R‖S, or low-s r‖s).
    pub fn raw(&self) -> &[u8; 64] {
        &self.raw
    }

    /// The ECDSA recovery id; `None` for Ed25519.
    pub fn recovery_id(&self) -> Option<u8> {
        self.recovery_id
    }

    /// Encodes the signature in `format`; DER applies to ECDSA only.
    pub fn encode(&self, format: SignatureFormat) -> Result<Vec<u8>, TypesError> {
        match (format, self.algorithm) {
            (SignatureFormat::Raw, _) => Ok(self.raw.to_vec()),
            (SignatureFormat::Der, Algorithm::Ed25519) => Err(TypesError::NotSupported(
                "DER encoding applies to ECDSA signatures only",
            )),
            (SignatureFormat::Der, Algorithm::Secp256k1) => {
                let sig = k256::ecdsa::Signature::from_slice(&self.raw)
                    .map_err(|_| TypesError::MalformedSignature(self.algorithm))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            (SignatureFormat::Der, Algorithm::P256) => {
                let sig = p256::ecdsa::Signature::from_slice(&self.raw)
                    .map_err(|_| TypesError::MalformedSignature(self.algorithm))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
    }
}

//! The error type of the value layer: each variant names what was wrong with the value given.

/// Why a value was refused. Every variant is the caller's fault (bad input); none is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypesError {
    /// A key or provider name does not follow the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An algorithm name that Custos does not know.
    #[error("unknown algorithm {0:?}: expected one of ed25519, secp256k1, p256")]
    UnknownAlgorithm(String),
    /// A hash name that Custos does not know.
    #[error("unknown hash {0:?}: expected sha256 or keccak256")]
    UnknownHash(String),
    /// A digest with the wrong length for the algorithm.
    #[error("digest must be exactly {expected} bytes, got {got}")]
    InvalidDigestLength {
        /// The required length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The operation does not apply to this algorithm (for example a prehashed digest for Ed25519).
    #[error("{0}")]
    NotSupported(&'static str),
    /// Public key bytes that do not decode to a valid point for the algorithm.
    #[error("invalid {0} public key")]
    InvalidPublicKey(crate::Algorithm),
    /// Private key bytes that are not a valid key for the algorithm.
    #[error("invalid {0} private key")]
    InvalidPrivateKey(crate::Algorithm),
    /// Signature bytes that do not decode (wrong length, bad DER, out-of-range scalars).
    #[error("malformed {0} signature")]
    MalformedSignature(crate::Algorithm),
    /// A well-formed signature that does not verify under the public key.
    #[error("signature does not verify")]
    BadSignature,
}

//! What a caller asks to sign or verify, the limits every front end shares, and the exact bytes a
//! provider signs for a key (the message for Ed25519, its digest for ECDSA).

use custos_types::{
    Algorithm, ErrorCode, HashAlgorithm, KeyVersion, ProviderName, PublicKey, SignPayload,
    Signature, SignatureFormat, TypesError,
};

use crate::CoreError;

/// The highest sequence the equivocation guard takes (sequences are stored as signed 64-bit numbers).
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Size limits applied to every request, whatever the front end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message (before hashing) that may be signed or verified.
    pub max_message_bytes: usize,
    /// Most items in one batch.
    pub max_batch_items: usize,
    /// How far above a key's last signed sequence one request may go (the equivocation guard's jump
    /// bound): a typo or a hostile sequence near the maximum would otherwise freeze the key for good.
    pub max_sequence_jump: u64,
}

impl Limits {
    /// Refuses an empty batch, or one with more items than allowed.
    pub fn check_batch(&self, items: usize) -> Result<(), CoreError> {
        if items == 0 {
            return Err(CoreError::bad(
                ErrorCode::EmptyBatch,
                "the batch has no items",
            ));
        }
        if items > self.max_batch_items {
            return Err(CoreError::bad(
                ErrorCode::BatchTooLarge,
                format!(
                    "the batch has {items} items; the limit is {}",
                    self.max_batch_items
                ),
            ));
        }
        Ok(())
    }

    fn check_message(&self, message: &[u8]) -> Result<(), CoreError> {
        if message.is_empty() {
            return Err(CoreError::bad(
                ErrorCode::EmptyMessage,
                "the message is empty",
            ));
        }
        if message.len() > self.max_message_bytes {
            return Err(CoreError::bad(
                ErrorCode::MessageTooLarge,
                format!(
                    "the message is {} bytes; the limit is {}",
                    message.len(),
                    self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The exact bytes a provider signs for a key of `algorithm`.
    pub fn payload(
        &self,
        algorithm: Algorithm,
        input: &SignInput,
        hash: Option<HashAlgorithm>,
    ) -> Result<SignPayload, CoreError> {
        match (algorithm.is_ecdsa(), input) {
            (false, _) if hash.is_some() => Err(TypesError::NotSupported(
                "a hash applies to ECDSA keys only; ed25519 signs the message itself",
            )
            .into()),
            (false, SignInput::Digest(_)) => Err(TypesError::NotSupported(
                "ed25519 signs the message itself, not a digest",
            )
            .into()),
            (false, SignInput::Message(m)) => {
                self.check_message(m)?;
                Ok(SignPayload::Message(m.clone()))
            }
            (true, SignInput::Message(m)) => {
                self.check_message(m)?;
                Ok(SignPayload::Digest(hash.unwrap_or_default().digest(m)))
            }
            (true, SignInput::Digest(_)) if hash.is_some() => Err(TypesError::NotSupported(
                "a hash applies to a message; a digest is signed as given",
            )
            .into()),
            (true, SignInput::Digest(d)) => Ok(SignPayload::digest_from_slice(d)?),
        }
    }
}

/// 1,000,000: a sequence may run this far ahead of the last one signed unless configured otherwise.
pub const DEFAULT_MAX_SEQUENCE_JUMP: u64 = 1_000_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_batch_items: 1000,
            max_sequence_jump: DEFAULT_MAX_SEQUENCE_JUMP,
        }
    }
}

/// What to sign: a message, or (ECDSA only) a digest the caller computed.
#[derive(Debug, Clone)]
pub enum SignInput {
    /// The message; ECDSA keys hash it first.
    Message(Vec<u8>),
    /// A 32-byte digest; ECDSA only.
    Digest(Vec<u8>),
}

impl SignInput {
    /// The bytes as the caller gave them (what the audit MAC covers).
    pub fn bytes(&self) -> &[u8] {
        match self {
            SignInput::Message(m) | SignInput::Digest(m) => m,
        }
    }
}

/// One signing request.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// What to sign.
    pub input: SignInput,
    /// The hash for an ECDSA message (default SHA-256); must be absent for Ed25519 and for digests.
    pub hash: Option<HashAlgorithm>,
    /// A specific version (default: the current one).
    pub version: Option<KeyVersion>,
    /// The equivocation guard: a sequence (for example a block height). A different payload at or below
    /// the highest sequence signed with this key is refused; the same payload at the same sequence gets
    /// the same signature back.
    pub sequence: Option<u64>,
}

impl SignRequest {
    /// A request to sign `input` with the current version, unsequenced.
    pub fn new(input: SignInput) -> SignRequest {
        SignRequest {
            input,
            hash: None,
            version: None,
            sequence: None,
        }
    }
}

/// A verified signature and where it came from.
#[derive(Debug, Clone)]
pub struct SignOutcome {
    /// The version that signed (for an emergency signature: the version asked for).
    pub version: KeyVersion,
    /// The provider that signed.
    pub provider: ProviderName,
    /// The verified, normalised signature.
    pub signature: Signature,
    /// Set when every provider failed and an emergency key signed: its public key, which is not the
    /// key's own. Such a signature does not verify under any version of the key.
    pub emergency: Option<PublicKey>,
}

/// One verification request.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// What was signed.
    pub input: SignInput,
    /// The hash for an ECDSA message.
    pub hash: Option<HashAlgorithm>,
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// Their encoding.
    pub format: SignatureFormat,
    /// A specific version (default: any version that can verify, current first).
    pub version: Option<KeyVersion>,
}

/// The answer to a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOutcome {
    /// Whether the signature is valid.
    pub valid: bool,
    /// The version it is valid under.
    pub version: Option<KeyVersion>,
}

/// The bytes a batch's audit MAC covers: each item as a 4-byte big-endian length and its bytes.
pub(crate) fn frame_batch(items: &[SignRequest]) -> Vec<u8> {
    let mut framed = Vec::new();
    for item in items {
        let bytes = item.input.bytes();
        framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(bytes);
    }
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(m: &[u8]) -> SignRequest {
        SignRequest::new(SignInput::Message(m.to_vec()))
    }

    /// Known answer: the batch framing is fixed, big-endian lengths on every architecture.
    #[test]
    fn batch_framing_is_pinned() {
        let items = [
            message(b"ab"),
            SignRequest::new(SignInput::Digest(vec![0xff; 3])),
        ];
        assert_eq!(
            frame_batch(&items),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn payloads_follow_the_algorithm_and_refuse_what_does_not_apply() {
        let limits = Limits::default();
        let code =
            |alg, input: SignInput, hash| limits.payload(alg, &input, hash).unwrap_err().code();
        assert_eq!(
            code(Algorithm::Ed25519, SignInput::Message(vec![]), None),
            ErrorCode::EmptyMessage
        );
        assert_eq!(
            code(
                Algorithm::Ed25519,
                SignInput::Message(vec![0; 64 * 1024 + 1]),
                None
            ),
            ErrorCode::MessageTooLarge
        );
        assert_eq!(
            code(
                Algorithm::Ed25519,
                SignInput::Message(vec![1]),
                Some(HashAlgorithm::Sha256)
            ),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code(Algorithm::Ed25519, SignInput::Digest(vec![0; 32]), None),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code(Algorithm::P256, SignInput::Digest(vec![0; 31]), None),
            ErrorCode::InvalidDigest
        );
        let keccak = limits
            .payload(
                Algorithm::Secp256k1,
                &SignInput::Message(b"eth".to_vec()),
                Some(HashAlgorithm::Keccak256),
            )
            .unwrap();
        let digest = limits
            .payload(
                Algorithm::Secp256k1,
                &SignInput::Digest(HashAlgorithm::Keccak256.digest(b"eth").to_vec()),
                None,
            )
            .unwrap();
        assert_eq!(keccak, digest);
        assert_eq!(
            limits.check_batch(0).unwrap_err().code(),
            ErrorCode::EmptyBatch
        );
        assert_eq!(
            limits.check_batch(1001).unwrap_err().code(),
            ErrorCode::BatchTooLarge
        );
    }
}

//! The records the store keeps: keys, versions, locations, tokens and sealed key material.

use custos_types::{
    Algorithm, KeyHandle, KeyName, KeyVersion, ProviderName, PublicKey, Timestamp, VersionState,
};

/// A named key and all its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's name.
    pub name: KeyName,
    /// The algorithm of every version.
    pub algorithm: Algorithm,
    /// The ordered provider chain that holds each version (primary first).
    pub providers: Vec<ProviderName>,
    /// When the key was created.
    pub created_at: Timestamp,
    /// The versions, in ascending order.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// The version in state `current`.
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .find(|v| v.state == VersionState::Current)
    }

    /// One version by number.
    pub fn version(&self, version: KeyVersion) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// Its number.
    pub version: KeyVersion,
    /// Its life-cycle state.
    pub state: VersionState,
    /// Its public key (the same in every location).
    pub public_key: PublicKey,
    /// When it was created.
    pub created_at: Timestamp,
    /// The providers that hold its private key, in chain order.
    pub locations: Vec<Location>,
}

/// Where one version's private key lives: a provider and that provider's handle for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The provider instance.
    pub provider: ProviderName,
    /// The provider's handle for the key.
    pub handle: KeyHandle,
}

/// An API token as stored: never the secret, only its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public token id (the part before the secret).
    pub id: String,
    /// A human-readable name.
    pub name: String,
    /// SHA-256 of the token secret.
    pub secret_hash: [u8; 32],
    /// Scopes as strings (`admin`, `keys:create`, `sign:seq-*`, ...).
    pub scopes: Vec<String>,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When it was last used (recorded periodically, not on every request).
    pub last_used_at: Option<Timestamp>,
}

/// Which audit records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records after this sequence number (for paging).
    pub after_seq: u64,
    /// At most this many.
    pub limit: u32,
    /// Not before this time.
    pub from: Option<Timestamp>,
    /// Not after this time.
    pub to: Option<Timestamp>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this actor (token id or token name).
    pub actor: Option<String>,
    /// Only this outcome (`ok`, `error`, `denied`).
    pub outcome: Option<String>,
}

/// Encrypted key material of the software provider. The store never sees the plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The provider instance that sealed it.
    pub provider: ProviderName,
    /// The provider's handle for it.
    pub handle: KeyHandle,
    /// The key's algorithm.
    pub algorithm: Algorithm,
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// The AEAD ciphertext with its tag.
    pub ciphertext: Vec<u8>,
    /// When it was sealed.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKey")
            .field("provider", &self.provider)
            .field("handle", &self.handle)
            .field("algorithm", &self.algorithm)
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .finish()
    }
}

/// The equivocation guard's watermark for one key: the highest sequence signed, what was signed there,
/// and the signature released for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The highest sequence (for example a block height) signed with the key.
    pub sequence: u64,
    /// SHA-256 of the bytes signed at that sequence.
    pub payload_hash: [u8; 32],
    /// The version that signed.
    pub version: custos_types::KeyVersion,
    /// The provider that signed.
    pub provider: custos_types::ProviderName,
    /// The 64-byte signature released.
    pub signature: Vec<u8>,
}

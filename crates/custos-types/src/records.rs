//! The records Custos keeps: keys with their state, versions and locations; tokens; sealed key material;
//! aliases; sealing keys; pending imports; keys that client APIs name by their own ids; watermarks.
//!
//! They are plain values, shared by the store (which persists them), core (which decides on them) and the
//! front ends (which show them), so no front end needs the store to see one.

use std::collections::BTreeMap;
use std::fmt;

use crate::{
    Algorithm, KeyHandle, KeyName, KeyVersion, ProviderName, PublicKey, Timestamp, VersionState,
};

/// Whether a key may be used at all. Versions have their own states; this one is the key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Signs and verifies (by its versions' states).
    Enabled,
    /// Neither signs nor verifies until enabled again.
    Disabled,
    /// Neither signs nor verifies; at `at` the key is destroyed unless the deletion is cancelled.
    PendingDeletion {
        /// When the key is destroyed.
        at: Timestamp,
    },
    /// Destroyed: every version is destroyed and the key can never be used again.
    Destroyed,
}

impl KeyState {
    /// The stable lower-case name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion { .. } => "pending_deletion",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Rebuilds a state from its name and, for `pending_deletion`, its date.
    pub fn from_parts(name: &str, at: Option<Timestamp>) -> Option<KeyState> {
        match (name, at) {
            ("enabled", None) => Some(KeyState::Enabled),
            ("disabled", None) => Some(KeyState::Disabled),
            ("pending_deletion", Some(at)) => Some(KeyState::PendingDeletion { at }),
            ("destroyed", None) => Some(KeyState::Destroyed),
            _ => None,
        }
    }

    /// The deletion date, when one is scheduled.
    pub fn deletion_date(self) -> Option<Timestamp> {
        match self {
            KeyState::PendingDeletion { at } => Some(at),
            _ => None,
        }
    }

    /// Whether the key may sign or verify in this state.
    pub fn is_usable(self) -> bool {
        self == KeyState::Enabled
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of key a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyKind {
    /// One private key per version, held by the providers of its chain.
    #[default]
    Standard,
    /// A BIP32 master (secp256k1): the provider also signs with children derived along a path.
    Bip32,
}

impl KeyKind {
    /// The stable lower-case name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Standard => "standard",
            KeyKind::Bip32 => "bip32",
        }
    }

    /// Parses the stable name back.
    pub fn parse(text: &str) -> Option<KeyKind> {
        match text {
            "standard" => Some(KeyKind::Standard),
            "bip32" => Some(KeyKind::Bip32),
            _ => None,
        }
    }
}

/// A named key and all its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's name.
    pub name: KeyName,
    /// The algorithm of every version.
    pub algorithm: Algorithm,
    /// What kind of key it is.
    pub kind: KeyKind,
    /// Whether it may be used.
    pub state: KeyState,
    /// A free-text description (empty when none was given).
    pub description: String,
    /// The ordered provider chain that holds each version (primary first).
    pub providers: Vec<ProviderName>,
    /// When the key was created.
    pub created_at: Timestamp,
    /// The versions, in ascending order.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// A new enabled, standard key with no description.
    pub fn new(
        name: KeyName,
        algorithm: Algorithm,
        providers: Vec<ProviderName>,
        created_at: Timestamp,
        versions: Vec<VersionRecord>,
    ) -> KeyRecord {
        KeyRecord {
            name,
            algorithm,
            kind: KeyKind::Standard,
            state: KeyState::Enabled,
            description: String::new(),
            providers,
            created_at,
            versions,
        }
    }

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

impl TokenRecord {
    /// Whether the token works at `now`: not revoked, not expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
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

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    pub version: KeyVersion,
    /// The provider that signed.
    pub provider: ProviderName,
    /// The 64-byte signature released.
    pub signature: Vec<u8>,
}

/// Another name for a key (a KMS alias such as `alias/payments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRecord {
    /// The alias.
    pub name: String,
    /// The id of the key it names (a Custos key name or a sealing key id).
    pub target: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed target.
    pub updated_at: Timestamp,
}

/// A symmetric key that never leaves its provider: encryption under the provider's own sealing key, bound
/// to this key's id (a KMS `SYMMETRIC_DEFAULT` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingKeyRecord {
    /// The key id.
    pub id: String,
    /// The provider that seals for it.
    pub provider: ProviderName,
    /// Whether it may be used.
    pub state: KeyState,
    /// A free-text description.
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A key made to receive key material from outside (KMS origin `EXTERNAL`), until the material arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    /// The key id it will have.
    pub id: String,
    /// The algorithm the material must be.
    pub algorithm: Algorithm,
    /// A free-text description.
    pub description: String,
    /// Whether it may be used.
    pub state: KeyState,
    /// When it was made.
    pub created_at: Timestamp,
    /// The one-time wrapping key handed out for the material, if one was asked for.
    pub wrapping: Option<ImportWrapping>,
}

/// A one-time RSA wrapping key for imported key material and the token that goes with it.
#[derive(Clone, PartialEq, Eq)]
pub struct ImportWrapping {
    /// The RSA private key (PKCS#8 DER), sealed by the provider.
    pub sealed_private_key: Vec<u8>,
    /// SHA-256 of the import token.
    pub token_hash: [u8; 32],
    /// The wrapping algorithm (`RSAES_OAEP_SHA_256`, `RSAES_OAEP_SHA_1`).
    pub algorithm: String,
    /// When the token stops working.
    pub valid_to: Timestamp,
}

impl fmt::Debug for ImportWrapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportWrapping")
            .field("algorithm", &self.algorithm)
            .field("valid_to", &self.valid_to)
            .finish_non_exhaustive()
    }
}

/// A key that a client API names by its own id (BitGo names keys by their public key and source): the
/// Custos key that signs for it, and the client's own key material sealed by the provider where the
/// client stored it for retrieval.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeyRecord {
    /// The client API's namespace (`bitgo:user`, `bitgo:backup`).
    pub namespace: String,
    /// The client's id for the key, unique in the namespace.
    pub id: String,
    /// The Custos key that signs for it, if it signs.
    pub key: Option<KeyName>,
    /// The client's key material as the client gave it, sealed by the default provider (for retrieval).
    pub sealed: Option<Vec<u8>>,
    /// What the client said about it (BitGo: `coin`, `type`).
    pub attributes: BTreeMap<String, String>,
    /// When it was stored.
    pub created_at: Timestamp,
}

impl fmt::Debug for ClientKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeyRecord")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .field("key", &self.key)
            .field(
                "sealed",
                &self.sealed.as_ref().map(|s| format!("<{} bytes>", s.len())),
            )
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_states_round_trip_by_name() {
        let at: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        for state in [
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::PendingDeletion { at },
            KeyState::Destroyed,
        ] {
            assert_eq!(
                KeyState::from_parts(state.as_str(), state.deletion_date()),
                Some(state)
            );
            assert_eq!(state.is_usable(), state == KeyState::Enabled);
        }
        assert_eq!(KeyState::from_parts("pending_deletion", None), None);
        assert_eq!(KeyState::from_parts("enabled", Some(at)), None);
        assert_eq!(KeyKind::parse("bip32"), Some(KeyKind::Bip32));
        assert_eq!(
            KeyKind::parse(KeyKind::Standard.as_str()),
            Some(KeyKind::Standard)
        );
    }
}

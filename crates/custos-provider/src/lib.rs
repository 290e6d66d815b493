//! The `KeyProvider` trait every key backend implements, its error type, and its conformance suite.
//!
//! A provider holds private keys and signs with them; it never hands a private key across this trait.
//! Keys are addressed by the opaque [`KeyHandle`] the provider issued when it generated (or adopted) the
//! key. Custos core checks every signature a provider returns against the public key before using it, so a
//! provider may return ECDSA signatures with a high s.

mod error;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "fault")]
pub mod fault;

use std::fmt::Debug;

use async_trait::async_trait;
use custos_types::{Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload};
use serde::Serialize;
use zeroize::Zeroizing;

pub use error::ProviderError;

/// What a provider can do; shown to users and checked before a key is placed in a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Algorithms the provider can generate and sign with.
    pub algorithms: Vec<Algorithm>,
    /// Whether a private key can ever leave the provider (in any form, wrapped or not).
    pub exportable: bool,
    /// Whether the provider can take in key material generated elsewhere.
    pub import: bool,
    /// Whether the provider holds BIP32 master keys and signs with children derived along a path.
    pub bip32: bool,
}

/// The bytes a back-end signs for a key of `algorithm`: the message for Ed25519, the 32-byte digest for
/// ECDSA. A payload of the other kind is refused with [`ProviderError::InvalidPayload`].
pub fn signing_input(algorithm: Algorithm, payload: &SignPayload) -> Result<&[u8], ProviderError> {
    match (algorithm.is_ecdsa(), payload) {
        (false, SignPayload::Message(message)) => Ok(message),
        (true, SignPayload::Digest(digest)) => Ok(digest),
        (false, SignPayload::Digest(_)) => Err(ProviderError::InvalidPayload(
            "ed25519 signs the message itself, not a digest",
        )),
        (true, SignPayload::Message(_)) => Err(ProviderError::InvalidPayload(
            "ECDSA signs a 32-byte digest",
        )),
    }
}

/// A key the provider has just generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The provider's reference to the key, to be stored by Custos.
    pub handle: KeyHandle,
    /// The key's public half.
    pub public_key: PublicKey,
}

/// A BIP32 master key (secp256k1) the provider has just generated or imported: its handle and public key,
/// and the chain code that, with the public key, makes the `xpub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bip32Key {
    /// The master key: its handle and its public key.
    pub key: GeneratedKey,
    /// The master's chain code (public: it is part of the `xpub`).
    pub chain_code: [u8; 32],
}

/// A BIP32 derivation path as child numbers; numbers at or above [`HARDENED`] are hardened.
pub type DerivationPath = [u32];

/// The first hardened child number (`0'`).
pub const HARDENED: u32 = 0x8000_0000;

/// Reads a private key that a client wrote as text: 32 bytes of hex, optionally `0x`-prefixed (what
/// wallets such as BitGo's store). The bytes stay in zeroizing memory.
pub fn parse_hex_secret(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    let refused = || ProviderError::InvalidPayload("the key material is not 32 bytes of hex");
    let text = std::str::from_utf8(text).map_err(|_| refused())?.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() != 64 {
        return Err(refused());
    }
    let mut out = Zeroizing::new(vec![0u8; 32]);
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(refused());
        };
        out[i] = (high << 4) | low;
    }
    Ok(out)
}

/// A provider's answer to a health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderHealth {
    /// Whether the provider can sign right now.
    pub available: bool,
    /// A short, non-secret explanation when it cannot.
    pub detail: Option<String>,
}

impl ProviderHealth {
    /// A healthy provider.
    pub fn ok() -> Self {
        Self {
            available: true,
            detail: None,
        }
    }
}

impl<E: std::fmt::Display> From<Result<(), E>> for ProviderHealth {
    /// The answer of a probe: healthy on `Ok`, unavailable with the error as the detail on `Err`.
    fn from(probe: Result<(), E>) -> Self {
        match probe {
            Ok(()) => ProviderHealth::ok(),
            Err(e) => ProviderHealth {
                available: false,
                detail: Some(e.to_string()),
            },
        }
    }
}

/// A key backend: the software keystore, a PKCS#11 token, a cloud KMS, a YubiHSM.
///
/// Implementations must be cheap to call concurrently; blocking back-ends move their work off the async
/// runtime (`tokio::task::spawn_blocking`).
#[async_trait]
pub trait KeyProvider: Send + Sync + Debug {
    /// The configured name of this provider instance.
    fn name(&self) -> &ProviderName;

    /// The provider family (`soft`, `pkcs11`, `awskms`, `yubihsm`).
    fn kind(&self) -> &'static str;

    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Generates a new key inside the provider. `label` is a human-readable hint the provider may record
    /// with the key (for example `custos:seq-1:v2`); it is not a secret and need not be unique.
    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError>;

    /// Takes a key that already exists in the back-end into Custos, by a provider-specific reference
    /// (for PKCS#11: `label:<text>` or `id:<hex>`). Providers that cannot do this keep the default.
    async fn adopt(
        &self,
        reference: &str,
        algorithm: Algorithm,
    ) -> Result<GeneratedKey, ProviderError> {
        let _ = (reference, algorithm);
        Err(ProviderError::NotSupported(
            "this provider cannot adopt existing keys",
        ))
    }

    /// Hands out the private key behind `handle`, so that Custos can place the same key in the other
    /// providers of a chain and back it up encrypted. Only providers whose keys may leave them (the
    /// software keystore inside a TEE, an HSM allowing wrapped export) implement this.
    async fn export(&self, handle: &KeyHandle) -> Result<PrivateKey, ProviderError> {
        let _ = handle;
        Err(ProviderError::NotSupported(
            "this provider's keys cannot leave it",
        ))
    }

    /// Takes in a private key generated elsewhere (PKCS#11 create object, KMS import of key material).
    async fn import(&self, key: &PrivateKey, label: &str) -> Result<GeneratedKey, ProviderError> {
        let _ = (key, label);
        Err(ProviderError::NotSupported(
            "this provider cannot import key material",
        ))
    }

    /// Encrypts a small secret (a stored key, an API secret, a data key) under a key that never leaves
    /// the provider, binding `context` as associated data; only [`KeyProvider::unseal`] with the same
    /// context opens it. Providers without symmetric encryption keep the default.
    async fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let _ = (plaintext, context);
        Err(ProviderError::NotSupported(
            "this provider cannot encrypt secrets",
        ))
    }

    /// Opens what [`KeyProvider::seal`] produced with the same `context`; [`ProviderError::Corrupt`] when
    /// the bytes or the context do not match.
    async fn unseal(
        &self,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let _ = (sealed, context);
        Err(ProviderError::NotSupported(
            "this provider cannot encrypt secrets",
        ))
    }

    /// Takes in key material that a client gave Custos, which this provider sealed with
    /// [`KeyProvider::seal`] under `context`: 32 bytes of hex text for `algorithm`. The material is opened
    /// and imported inside the provider, so it never crosses this trait in the clear. The default opens it
    /// with [`KeyProvider::unseal`] and imports it with [`KeyProvider::import`].
    async fn import_sealed(
        &self,
        sealed: &[u8],
        context: &[u8],
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        let text = self.unseal(sealed, context).await?;
        let secret = parse_hex_secret(&text)?;
        let key = PrivateKey::from_secret(algorithm, &secret).map_err(|_| {
            ProviderError::InvalidPayload("the key material is not a valid private key")
        })?;
        self.import(&key, label).await
    }

    /// Generates a BIP32 master key (secp256k1) inside the provider.
    async fn generate_bip32(&self, label: &str) -> Result<Bip32Key, ProviderError> {
        let _ = label;
        Err(ProviderError::NotSupported(
            "this provider does not hold BIP32 keys",
        ))
    }

    /// Like [`KeyProvider::import_sealed`] for a client's BIP32 `xprv` (base58check text).
    async fn import_sealed_bip32(
        &self,
        sealed: &[u8],
        context: &[u8],
        label: &str,
    ) -> Result<Bip32Key, ProviderError> {
        let _ = (sealed, context, label);
        Err(ProviderError::NotSupported(
            "this provider does not hold BIP32 keys",
        ))
    }

    /// Signs the 32-byte `digest` with the child of the BIP32 master behind `handle` derived along
    /// `path`, and returns the 64-byte raw ECDSA signature (r‖s).
    async fn sign_derived(
        &self,
        handle: &KeyHandle,
        path: &DerivationPath,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, ProviderError> {
        let _ = (handle, path, digest);
        Err(ProviderError::NotSupported(
            "this provider does not hold BIP32 keys",
        ))
    }

    /// The public key of a key the provider holds.
    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError>;

    /// Signs `payload` with the key behind `handle` and returns the 64-byte raw signature (R‖S for
    /// Ed25519, r‖s for ECDSA). `algorithm` is the key's algorithm as Custos recorded it.
    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError>;

    /// Probes the backend.
    async fn health(&self) -> ProviderHealth;
}

//! The keystore header: Argon2id parameters, salt, and the data key wrapped under the password key.

use argon2::{Algorithm as Argon2Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305, XNonce};
use custos_provider::ProviderError;
use custos_store::Store;
use custos_types::ProviderName;
use rand_core::{OsRng, RngCore as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store_error;

/// Argon2id cost parameters for deriving the password key. Stored in the keystore header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        KdfParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The stored header; every byte string is hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    kdf: String,
    params: KdfParams,
    salt: String,
    nonce: String,
    wrapped_data_key: String,
}

const HEADER_FORMAT: u32 = 1;
pub(crate) const NONCE_LEN: usize = 24;

/// The 256-bit key that seals every private key of one software provider.
pub(crate) struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_slice().into())
    }

    /// Encrypts `plaintext` with a fresh random nonce; returns `(nonce, ciphertext)`.
    pub(crate) fn seal(
        &self,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), ProviderError> {
        seal_with(&self.cipher(), plaintext, aad)
    }

    /// Decrypts, or `None` if the ciphertext, nonce or associated data do not match.
    pub(crate) fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        open_with(&self.cipher(), nonce, ciphertext, aad)
    }
}

fn seal_with(
    cipher: &XChaCha20Poly1305,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), ProviderError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| ProviderError::Corrupt("encryption failed".into()))?;
    Ok((nonce.to_vec(), ciphertext))
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// An unlocked keystore.
#[derive(Debug)]
pub(crate) struct Keystore {
    pub(crate) data_key: DataKey,
}

fn header_name(provider: &ProviderName) -> String {
    format!("soft-keystore/{provider}")
}

fn header_aad(provider: &ProviderName) -> Vec<u8> {
    format!("custos-soft-keystore-v1\0{provider}").into_bytes()
}

async fn derive(
    password: &SecretString,
    salt: Vec<u8>,
    params: KdfParams,
) -> Result<XChaCha20Poly1305, ProviderError> {
    let password = Zeroizing::new(password.expose_secret().as_bytes().to_vec());
    tokio::task::spawn_blocking(move || {
        let argon = Argon2::new(
            Argon2Algorithm::Argon2id,
            Version::V0x13,
            Params::new(
                params.memory_kib,
                params.iterations,
                params.parallelism,
                Some(32),
            )
            .map_err(|e| ProviderError::Corrupt(format!("bad Argon2 parameters: {e}")))?,
        );
        let mut kek = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(&password, &salt, kek.as_mut_slice())
            .map_err(|e| ProviderError::Corrupt(format!("Argon2 failed: {e}")))?;
        Ok(XChaCha20Poly1305::new(kek.as_slice().into()))
    })
    .await
    .map_err(|e| ProviderError::Unavailable(format!("key derivation task failed: {e}")))?
}

fn unhex(field: &str, text: &str) -> Result<Vec<u8>, ProviderError> {
    hex::decode(text).map_err(|_| ProviderError::Corrupt(format!("keystore header field {field}")))
}

impl Keystore {
    pub(crate) async fn unlock_or_create(
        provider: &ProviderName,
        store: &dyn Store,
        password: &SecretString,
        params: KdfParams,
    ) -> Result<Keystore, ProviderError> {
        let name = header_name(provider);
        if let Some(raw) = store.get_setting(&name).await.map_err(store_error)? {
            return Self::unlock(provider, &raw, password).await;
        }
        if !store
            .list_sealed_keys(provider)
            .await
            .map_err(store_error)?
            .is_empty()
        {
            return Err(ProviderError::Corrupt(format!(
                "provider {provider} has sealed keys but no keystore header"
            )));
        }
        if password.expose_secret().is_empty() {
            return Err(ProviderError::Locked(
                "the master password must not be empty".into(),
            ));
        }
        let mut salt = vec![0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let mut data_key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(data_key.as_mut_slice());
        let kek = derive(password, salt.clone(), params).await?;
        let (nonce, wrapped) = seal_with(&kek, data_key.as_slice(), &header_aad(provider))?;
        let header = Header {
            format: HEADER_FORMAT,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(&salt),
            nonce: hex::encode(&nonce),
            wrapped_data_key: hex::encode(&wrapped),
        };
        let bytes = serde_json::to_vec(&header)
            .map_err(|e| ProviderError::Corrupt(format!("keystore header: {e}")))?;
        if !store
            .put_setting_if_absent(&name, &bytes)
            .await
            .map_err(store_error)?
        {
            // Another process created it first: unlock theirs instead.
            let raw = store
                .get_setting(&name)
                .await
                .map_err(store_error)?
                .unwrap_or_default();
            return Self::unlock(provider, &raw, password).await;
        }
        tracing::info!(provider = %provider, "created a new software keystore");
        Ok(Keystore {
            data_key: DataKey(data_key),
        })
    }

    async fn unlock(
        provider: &ProviderName,
        raw: &[u8],
        password: &SecretString,
    ) -> Result<Keystore, ProviderError> {
        let header: Header = serde_json::from_slice(raw)
            .map_err(|e| ProviderError::Corrupt(format!("keystore header: {e}")))?;
        if header.format != HEADER_FORMAT || header.kdf != "argon2id" {
            return Err(ProviderError::Corrupt(format!(
                "unknown keystore format {} / {}",
                header.format, header.kdf
            )));
        }
        let kek = derive(password, unhex("salt", &header.salt)?, header.params).await?;
        let data_key = open_with(
            &kek,
            &unhex("nonce", &header.nonce)?,
            &unhex("wrapped_data_key", &header.wrapped_data_key)?,
            &header_aad(provider),
        )
        .ok_or_else(|| {
            ProviderError::Locked(format!(
                "wrong master password for the keystore of provider {provider}"
            ))
        })?;
        let data_key: [u8; 32] = data_key
            .as_slice()
            .try_into()
            .map_err(|_| ProviderError::Corrupt("data key length".into()))?;
        Ok(Keystore {
            data_key: DataKey(Zeroizing::new(data_key)),
        })
    }
}

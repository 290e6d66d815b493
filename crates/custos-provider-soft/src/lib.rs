//! The software key provider: keys generated from the OS RNG and sealed at rest in the store; and the
//! in-memory provider that emergency mode signs with.
//!
//! Sealing: a random 256-bit data key encrypts each private key with XChaCha20-Poly1305 (the associated
//! data binds the provider, handle and algorithm, so sealed records cannot be swapped). The data key is
//! itself encrypted under a key derived from the master password with Argon2id; the Argon2 parameters and
//! salt are stored beside it in the keystore header. A wrong password fails the unwrap, which is reported
//! as [`ProviderError::Locked`] before anything is written.
//!
//! Unsealed keys live in memory only inside zeroizing types.

mod keymap;
mod keystore;
mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use custos_provider::{Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth};
use custos_store::{SealedKey, Store, StoreError};
use custos_types::{
    Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload, Timestamp,
};
use secrecy::SecretString;

use keymap::KeyMap;
pub use keystore::KdfParams;
use keystore::{DataKey, Keystore};
pub use memory::MemoryProvider;

fn store_error(err: StoreError) -> ProviderError {
    match err {
        StoreError::Unavailable(reason) => ProviderError::Unavailable(reason),
        other => ProviderError::Corrupt(other.to_string()),
    }
}

/// The software key provider.
#[derive(Debug)]
pub struct SoftProvider {
    name: ProviderName,
    store: Arc<dyn Store>,
    keystore: Keystore,
    keys: KeyMap,
}

impl SoftProvider {
    /// Unlocks (or, on first use, creates) the keystore of provider `name` in `store` with the master
    /// password, and unseals its keys. `params` apply only when the keystore is created; an existing one
    /// keeps the parameters it was made with.
    ///
    /// A wrong password returns [`ProviderError::Locked`] and writes nothing.
    pub async fn open(
        name: ProviderName,
        store: Arc<dyn Store>,
        password: &SecretString,
        params: KdfParams,
    ) -> Result<SoftProvider, ProviderError> {
        let keystore = Keystore::unlock_or_create(&name, store.as_ref(), password, params).await?;
        let keys = KeyMap::default();
        for sealed in store.list_sealed_keys(&name).await.map_err(store_error)? {
            keys.insert(sealed.handle.clone(), unseal(&keystore.data_key, &sealed)?)?;
        }
        tracing::info!(provider = %name, keys = keys.len(), "software keystore unlocked");
        Ok(SoftProvider {
            name,
            store,
            keystore,
            keys,
        })
    }

    /// Seals a key into the store under a fresh handle and keeps it unsealed in memory.
    async fn keep(&self, key: PrivateKey) -> Result<GeneratedKey, ProviderError> {
        let algorithm = key.algorithm();
        let handle = KeyMap::new_handle("soft");
        let (nonce, ciphertext) = self
            .keystore
            .data_key
            .seal(&key.secret(), &aad(&self.name, &handle, algorithm))?;
        let sealed = SealedKey {
            provider: self.name.clone(),
            handle: handle.clone(),
            algorithm,
            nonce,
            ciphertext,
            created_at: Timestamp::now(),
        };
        self.store
            .put_sealed_key(&sealed)
            .await
            .map_err(store_error)?;
        let public_key = key.public_key();
        self.keys.insert(handle.clone(), key)?;
        Ok(GeneratedKey { handle, public_key })
    }
}

/// The first byte of a sealed secret.
const SEAL_VERSION: u8 = 1;

/// Associated data of sealed secrets: a domain different from sealed keys', the provider, the context.
fn seal_aad(provider: &ProviderName, context: &[u8]) -> Vec<u8> {
    let mut aad = format!("custos-soft-seal-v1\0{provider}\0").into_bytes();
    aad.extend_from_slice(context);
    aad
}

fn aad(provider: &ProviderName, handle: &KeyHandle, algorithm: Algorithm) -> Vec<u8> {
    format!("custos-soft-key-v1\0{provider}\0{handle}\0{algorithm}").into_bytes()
}

fn unseal(data_key: &DataKey, sealed: &SealedKey) -> Result<PrivateKey, ProviderError> {
    let aad = aad(&sealed.provider, &sealed.handle, sealed.algorithm);
    let secret = data_key
        .open(&sealed.nonce, &sealed.ciphertext, &aad)
        .ok_or_else(|| {
            ProviderError::Corrupt(format!("sealed key {} does not decrypt", sealed.handle))
        })?;
    PrivateKey::from_secret(sealed.algorithm, &secret).map_err(|_| {
        ProviderError::Corrupt(format!("sealed key {} is not a valid key", sealed.handle))
    })
}

#[async_trait]
impl KeyProvider for SoftProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "soft"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            exportable: true,
            import: true,
        }
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        _label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        self.keep(PrivateKey::generate(algorithm)).await
    }

    async fn export(&self, handle: &KeyHandle) -> Result<PrivateKey, ProviderError> {
        let key = self.keys.get(handle)?;
        PrivateKey::from_secret(key.algorithm(), &key.secret())
            .map_err(|e| ProviderError::Corrupt(e.to_string()))
    }

    async fn import(&self, key: &PrivateKey, _label: &str) -> Result<GeneratedKey, ProviderError> {
        let copy = PrivateKey::from_secret(key.algorithm(), &key.secret())
            .map_err(|e| ProviderError::Corrupt(e.to_string()))?;
        self.keep(copy).await
    }

    /// Seals under the keystore's data key: a version byte, the 24-byte nonce, the ciphertext and tag.
    async fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let (nonce, ciphertext) = self
            .keystore
            .data_key
            .seal(plaintext, &seal_aad(&self.name, context))?;
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    async fn unseal(
        &self,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ProviderError> {
        let corrupt = || ProviderError::Corrupt("sealed secret does not decrypt".into());
        let (version, rest) = sealed.split_first().ok_or_else(corrupt)?;
        if *version != SEAL_VERSION || rest.len() < keystore::NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = rest.split_at(keystore::NONCE_LEN);
        self.keystore
            .data_key
            .open(nonce, ciphertext, &seal_aad(&self.name, context))
            .ok_or_else(corrupt)
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        Ok(self.keys.get(handle)?.public_key())
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        self.keys.sign(handle, algorithm, payload)
    }

    async fn health(&self) -> ProviderHealth {
        self.store
            .ping()
            .await
            .map_err(|e| format!("keystore storage: {e}"))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_provider::conformance;
    use custos_store::SqliteStore;
    use secrecy::SecretString;

    fn password(p: &str) -> SecretString {
        SecretString::from(p.to_owned())
    }

    async fn open(
        dir: &std::path::Path,
        pw: &str,
    ) -> Result<(SoftProvider, SqliteStore), ProviderError> {
        let store = SqliteStore::create(dir).unwrap();
        let provider = SoftProvider::open(
            ProviderName::new("soft").unwrap(),
            Arc::new(store.clone()),
            &password(pw),
            KdfParams::default(),
        )
        .await?;
        Ok((provider, store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, _store) = open(dir.path(), "correct horse").await.unwrap();
        let down_dir = tempfile::tempdir().unwrap();
        let (down, down_store) = open(down_dir.path(), "pw").await.unwrap();
        // A provider whose storage has gone away: a real closed SQLite store, not a mock.
        down_store.close();
        conformance::run(conformance::Harness::new(
            Arc::new(provider),
            Arc::new(down),
        ))
        .await;
    }

    #[tokio::test]
    async fn keys_survive_reopen_and_wrong_password_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, store) = open(dir.path(), "right").await.unwrap();
        let mut made = Vec::new();
        for alg in Algorithm::ALL {
            made.push((alg, provider.generate(alg, "t").await.unwrap()));
        }
        drop((provider, store));
        let db = dir.path().join(SqliteStore::FILE_NAME);
        let before = std::fs::read(&db).unwrap();
        let err = open(dir.path(), "wrong").await.unwrap_err();
        assert!(matches!(err, ProviderError::Locked(_)), "{err:?}");
        assert!(err.to_string().contains("master password"), "{err}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            before,
            "a wrong password changed the store"
        );
        let (provider, _store) = open(dir.path(), "right").await.unwrap();
        for (alg, key) in made {
            assert_eq!(
                provider.public_key(&key.handle).await.unwrap(),
                key.public_key
            );
            let payload = if alg.is_ecdsa() {
                SignPayload::Digest([3; 32])
            } else {
                SignPayload::Message(b"after restart".to_vec())
            };
            let sig = provider.sign(&key.handle, alg, &payload).await.unwrap();
            key.public_key
                .verify(&payload, &sig, custos_types::SignatureFormat::Raw)
                .unwrap();
        }
    }

    #[tokio::test]
    async fn sealed_records_cannot_be_swapped_and_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, store) = open(dir.path(), "pw").await.unwrap();
        let key = provider.generate(Algorithm::Ed25519, "t").await.unwrap();
        let secret = provider.keys.get(&key.handle).unwrap().secret();
        let mut sealed = store
            .get_sealed_key(&ProviderName::new("soft").unwrap(), &key.handle)
            .await
            .unwrap()
            .unwrap();
        assert!(!sealed
            .ciphertext
            .windows(32)
            .any(|w| w == secret.as_slice()));
        // The same ciphertext under another handle does not open.
        sealed.handle = KeyHandle::new("soft-other");
        assert!(unseal(&provider.keystore.data_key, &sealed).is_err());
        assert!(!format!("{:?}", provider.keys.get(&key.handle).unwrap())
            .contains(&hex::encode(&secret)));
    }
}

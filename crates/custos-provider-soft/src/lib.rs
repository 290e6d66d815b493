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

mod bip32;
mod keymap;
mod keystore;
mod memory;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use custos_provider::{
    Bip32Key, Capabilities, DerivationPath, GeneratedKey, KeyProvider, ProviderError,
    ProviderHealth,
};
use custos_store::{Store, StoreError};
use custos_types::{
    Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SealedKey, SignPayload, Timestamp,
};
use secrecy::SecretString;

use bip32::Master;

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
    /// BIP32 masters by handle (their own keys are in `keys` too).
    masters: RwLock<HashMap<KeyHandle, Arc<Master>>>,
}

/// Handles of BIP32 masters start with this; the handle is bound into the sealed record's associated
/// data, so a master cannot be passed off as a plain key or the reverse.
const BIP32_PREFIX: &str = "soft-bip32";

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
        let mut masters = HashMap::new();
        for sealed in store.list_sealed_keys(&name).await.map_err(store_error)? {
            let secret = open_sealed(&keystore.data_key, &sealed)?;
            if sealed.handle.as_str().starts_with(BIP32_PREFIX) {
                let master = Master::from_sealed(&secret)?;
                keys.insert(sealed.handle.clone(), master.private_key()?)?;
                masters.insert(sealed.handle.clone(), Arc::new(master));
            } else {
                keys.insert(sealed.handle.clone(), key_of(&sealed, &secret)?)?;
            }
        }
        tracing::info!(provider = %name, keys = keys.len(), "software keystore unlocked");
        Ok(SoftProvider {
            name,
            store,
            keystore,
            keys,
            masters: RwLock::new(masters),
        })
    }

    /// Seals a key into the store under a fresh handle and keeps it unsealed in memory.
    async fn keep(&self, key: PrivateKey) -> Result<GeneratedKey, ProviderError> {
        let handle = KeyMap::new_handle("soft");
        self.seal_into_store(&handle, key.algorithm(), &key.secret())
            .await?;
        let public_key = key.public_key();
        self.keys.insert(handle.clone(), key)?;
        Ok(GeneratedKey { handle, public_key })
    }

    /// Seals a BIP32 master into the store under a fresh handle and keeps it in memory.
    async fn keep_master(&self, master: Master) -> Result<Bip32Key, ProviderError> {
        let handle = KeyMap::new_handle(BIP32_PREFIX);
        self.seal_into_store(&handle, Algorithm::Secp256k1, master.sealed_bytes())
            .await?;
        let key = master.private_key()?;
        let public_key = key.public_key();
        let chain_code = master.chain_code();
        self.keys.insert(handle.clone(), key)?;
        self.masters
            .write()
            .map_err(|_| ProviderError::Unavailable("master map lock poisoned".into()))?
            .insert(handle.clone(), Arc::new(master));
        Ok(Bip32Key {
            key: GeneratedKey { handle, public_key },
            chain_code,
        })
    }

    /// Writes `secret` sealed under the data key, bound to this provider, the handle and the algorithm.
    async fn seal_into_store(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        secret: &[u8],
    ) -> Result<(), ProviderError> {
        let (nonce, ciphertext) = self
            .keystore
            .data_key
            .seal(secret, &aad(&self.name, handle, algorithm))?;
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
            .map_err(store_error)
    }

    fn master(&self, handle: &KeyHandle) -> Result<Arc<Master>, ProviderError> {
        self.masters
            .read()
            .map_err(|_| ProviderError::Unavailable("master map lock poisoned".into()))?
            .get(handle)
            .cloned()
            .ok_or_else(|| ProviderError::UnknownKey(handle.clone()))
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

fn open_sealed(
    data_key: &DataKey,
    sealed: &SealedKey,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ProviderError> {
    let aad = aad(&sealed.provider, &sealed.handle, sealed.algorithm);
    data_key
        .open(&sealed.nonce, &sealed.ciphertext, &aad)
        .ok_or_else(|| {
            ProviderError::Corrupt(format!("sealed key {} does not decrypt", sealed.handle))
        })
}

fn key_of(sealed: &SealedKey, secret: &[u8]) -> Result<PrivateKey, ProviderError> {
    PrivateKey::from_secret(sealed.algorithm, secret).map_err(|_| {
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
            bip32: true,
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
        if handle.as_str().starts_with(BIP32_PREFIX) {
            // Its key alone is not the master (the chain code would be lost), so it does not leave.
            return Err(ProviderError::NotSupported(
                "a BIP32 master does not leave the keystore",
            ));
        }
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

    async fn generate_bip32(&self, _label: &str) -> Result<Bip32Key, ProviderError> {
        self.keep_master(Master::generate()?).await
    }

    async fn import_sealed_bip32(
        &self,
        sealed: &[u8],
        context: &[u8],
        _label: &str,
    ) -> Result<Bip32Key, ProviderError> {
        let text = self.unseal(sealed, context).await?;
        self.keep_master(Master::from_xprv(&text)?).await
    }

    async fn sign_derived(
        &self,
        handle: &KeyHandle,
        path: &DerivationPath,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, ProviderError> {
        let child = self.master(handle)?.derive(path)?;
        child
            .sign(&SignPayload::Digest(*digest))
            .map_err(|_| ProviderError::InvalidPayload("ECDSA signing failed"))
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
    use custos_store::{SealedKeyStore as _, SqliteStore};
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
        assert!(open_sealed(&provider.keystore.data_key, &sealed).is_err());
        assert!(!format!("{:?}", provider.keys.get(&key.handle).unwrap())
            .contains(&hex::encode(&secret)));
    }

    #[tokio::test]
    async fn bip32_masters_sign_derived_children_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, store) = open(dir.path(), "pw").await.unwrap();
        // BIP32 test vector 1's master, as a client would hand it over (sealed by the provider).
        let xprv = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi";
        let sealed = provider.seal(xprv.as_bytes(), b"ctx").await.unwrap();
        assert!(provider
            .import_sealed_bip32(&sealed, b"other", "t")
            .await
            .is_err());
        let master = provider
            .import_sealed_bip32(&sealed, b"ctx", "t")
            .await
            .unwrap();
        assert_eq!(
            hex::encode(master.chain_code),
            "873dff81c02f525623fd1fe5167eac3a55a049de3d314bb42ee227ffed37d508"
        );
        let path = [custos_provider::HARDENED, 1];
        let signature = provider
            .sign_derived(&master.key.handle, &path, &[7; 32])
            .await
            .unwrap();
        // m/0'/1 of test vector 1, checked with the child's public key.
        let child_secret =
            hex::decode("3c6cb8d0f6a264c91ea8b5030fadaa8e538b020f0a387421a12de9319dc93368")
                .unwrap();
        let child = PrivateKey::from_secret(Algorithm::Secp256k1, &child_secret).unwrap();
        child
            .public_key()
            .verify(
                &SignPayload::Digest([7; 32]),
                &signature,
                custos_types::SignatureFormat::Raw,
            )
            .unwrap();
        assert!(matches!(
            provider.export(&master.key.handle).await,
            Err(ProviderError::NotSupported(_))
        ));
        let generated = provider.generate_bip32("t").await.unwrap();
        drop((provider, store));
        let (provider, _store) = open(dir.path(), "pw").await.unwrap();
        let again = provider
            .sign_derived(&master.key.handle, &path, &[7; 32])
            .await
            .unwrap();
        child
            .public_key()
            .verify(
                &SignPayload::Digest([7; 32]),
                &again,
                custos_types::SignatureFormat::Raw,
            )
            .unwrap();
        assert_eq!(
            provider.public_key(&generated.key.handle).await.unwrap(),
            generated.key.public_key
        );
        // A plain key has no children.
        let plain = provider.generate(Algorithm::Secp256k1, "t").await.unwrap();
        assert!(provider
            .sign_derived(&plain.handle, &[0], &[1; 32])
            .await
            .is_err());
        // import_sealed of hex text: the default path through unseal and import.
        let hex_key = provider
            .seal(
                b"0x"
                    .iter()
                    .chain(hex::encode([5u8; 32]).as_bytes())
                    .copied()
                    .collect::<Vec<_>>()
                    .as_slice(),
                b"k",
            )
            .await
            .unwrap();
        let imported = provider
            .import_sealed(&hex_key, b"k", Algorithm::Secp256k1, "t")
            .await
            .unwrap();
        assert_eq!(
            imported.public_key,
            PrivateKey::from_secret(Algorithm::Secp256k1, &[5; 32])
                .unwrap()
                .public_key()
        );
    }
}

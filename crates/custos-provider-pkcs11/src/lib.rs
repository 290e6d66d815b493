//! The PKCS#11 key provider: keys generated inside an HSM token as sensitive, non-extractable objects.
//!
//! Works with any PKCS#11 module (SoftHSM2 in tests; CloudHSM, YubiHSM2, Thales, Entrust or IBM Crypto
//! Express in production). A key's handle is the hex of its `CKA_ID`; its `CKA_LABEL` reads
//! `custos:<key>:v<version>`, so `pkcs11-tool --list-objects` shows what Custos made. Existing token keys
//! are adopted by `label:<text>` or `id:<hex>`.
//!
//! Every call runs on tokio's blocking pool with a session from a pool of logged-in sessions, at most
//! `sessions` at once. A token that is missing or lost is `Unavailable` (retryable) and is re-opened on
//! the next call; a wrong PIN is `Refused`.

mod der;
mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use custos_provider::{
    signing_input, Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth,
};
use custos_types::{Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload};
use rand_core::{OsRng, RngCore as _};
use secrecy::SecretString;
use tokio::sync::Semaphore;
use zeroize::{Zeroize as _, Zeroizing};

/// The label of the token's AES sealing key.
const SEAL_KEY_LABEL: &[u8] = b"custos-seal-v1";
/// The first byte of a sealed secret.
const SEAL_VERSION: u8 = 1;
/// AES-GCM IV length.
const GCM_IV_LEN: usize = 12;

use token::Token;
pub use token::TokenRef;

/// Where the token is and how to log in.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token, by label (recommended: slot ids can change) or by slot id.
    pub token: TokenRef,
    /// The user PIN.
    pub pin: SecretString,
    /// The most sessions used at once (concurrent HSM operations).
    pub sessions: usize,
}

/// What the provider knows about one key.
#[derive(Debug, Clone)]
struct KeyInfo {
    algorithm: Algorithm,
    public_key: PublicKey,
    private: ObjectHandle,
}

#[derive(Debug)]
struct Inner {
    name: ProviderName,
    token: Token,
    keys: RwLock<HashMap<KeyHandle, KeyInfo>>,
    /// Held while the sealing key is looked up or made, so that one process never makes two.
    seal_lock: std::sync::Mutex<()>,
}

/// The PKCS#11 provider.
#[derive(Debug)]
pub struct Pkcs11Provider {
    inner: Arc<Inner>,
    permits: Semaphore,
}

fn poisoned() -> ProviderError {
    ProviderError::Unavailable("key cache lock poisoned".into())
}

impl Pkcs11Provider {
    /// Creates the provider and tries to open the token. A missing token is not an error here (the
    /// provider reports unavailable until it appears); a module that does not load or a wrong PIN is.
    pub fn new(name: ProviderName, config: Pkcs11Config) -> Result<Pkcs11Provider, ProviderError> {
        let sessions = config.sessions.max(1);
        let token = Token::new(config)?;
        match token.check() {
            Ok(()) | Err(ProviderError::Unavailable(_)) => {}
            Err(other) => return Err(other),
        }
        Ok(Pkcs11Provider {
            inner: Arc::new(Inner {
                name,
                token,
                keys: RwLock::new(HashMap::new()),
                seal_lock: std::sync::Mutex::new(()),
            }),
            permits: Semaphore::new(sessions),
        })
    }

    /// Runs `f` with the provider's state on the blocking pool, holding one session permit.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, ProviderError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ProviderError::Unavailable("provider is shutting down".into()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| ProviderError::Unavailable(format!("PKCS#11 task failed: {e}")))?
    }
}

impl Inner {
    /// Finds a key by handle on the token, reads its public key, and caches both.
    fn load(&self, handle: &KeyHandle) -> Result<KeyInfo, ProviderError> {
        if let Some(info) = self.keys.read().map_err(|_| poisoned())?.get(handle) {
            return Ok(info.clone());
        }
        let id =
            hex::decode(handle.as_str()).map_err(|_| ProviderError::UnknownKey(handle.clone()))?;
        let found = self.token.with_session(|session| {
            let private = session.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.clone()),
            ])?;
            let public = session.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.clone()),
            ])?;
            match (private.first(), public.first()) {
                (Some(&private), Some(&public)) => {
                    let attrs = session.get_attributes(
                        public,
                        &[AttributeType::EcParams, AttributeType::EcPoint],
                    )?;
                    Ok(Some((private, attrs)))
                }
                _ => Ok(None),
            }
        })?;
        let Some((private, attrs)) = found else {
            return Err(ProviderError::UnknownKey(handle.clone()));
        };
        let (mut params, mut point) = (None, None);
        for attr in attrs {
            match attr {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let algorithm = params
            .as_deref()
            .and_then(der::algorithm_of_params)
            .ok_or_else(|| {
                ProviderError::Corrupt(format!("key {handle} has an unsupported curve"))
            })?;
        let point =
            point.ok_or_else(|| ProviderError::Corrupt(format!("key {handle} has no EC point")))?;
        let public_key = PublicKey::from_bytes(algorithm, der::unwrap_ec_point(&point))
            .map_err(|e| ProviderError::Corrupt(format!("key {handle}: {e}")))?;
        let info = KeyInfo {
            algorithm,
            public_key,
            private,
        };
        self.keys
            .write()
            .map_err(|_| poisoned())?
            .insert(handle.clone(), info.clone());
        Ok(info)
    }

    fn forget(&self, handle: &KeyHandle) {
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(handle);
        }
    }

    fn generate(&self, algorithm: Algorithm, label: &str) -> Result<GeneratedKey, ProviderError> {
        let mut id = vec![0u8; 16];
        OsRng.fill_bytes(&mut id);
        let (mechanism, key_type) = match algorithm {
            Algorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, KeyType::EC_EDWARDS),
            Algorithm::Secp256k1 | Algorithm::P256 => (Mechanism::EccKeyPairGen, KeyType::EC),
        };
        let label = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(key_type),
            Attribute::Verify(true),
            Attribute::EcParams(der::params_of(algorithm).to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(key_type),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        self.token.with_session(|session: &Session| {
            session.generate_key_pair(&mechanism, &public_template, &private_template)?;
            Ok(())
        })?;
        let handle = KeyHandle::new(hex::encode(&id));
        let info = self.load(&handle)?;
        Ok(GeneratedKey {
            handle,
            public_key: info.public_key,
        })
    }

    /// Creates a key pair on the token from key material made elsewhere (`C_CreateObject`), as
    /// non-extractable and sensitive as a generated one. The secret's copy in the template is zeroized.
    fn import(&self, key: &PrivateKey, label: &str) -> Result<GeneratedKey, ProviderError> {
        let algorithm = key.algorithm();
        let mut id = vec![0u8; 16];
        OsRng.fill_bytes(&mut id);
        let key_type = match algorithm {
            Algorithm::Ed25519 => KeyType::EC_EDWARDS,
            Algorithm::Secp256k1 | Algorithm::P256 => KeyType::EC,
        };
        let public_key = key.public_key();
        let label = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(key_type),
            Attribute::Verify(true),
            Attribute::EcParams(der::params_of(algorithm).to_vec()),
            Attribute::EcPoint(der::wrap_ec_point(public_key.as_bytes())),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let mut private_template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(key_type),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::EcParams(der::params_of(algorithm).to_vec()),
            Attribute::Value(key.secret().to_vec()),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        let created = self.token.with_session(|session: &Session| {
            let private = session.create_object(&private_template)?;
            if let Err(e) = session.create_object(&public_template) {
                // No half-imported key: remove the private half again.
                let _ = session.destroy_object(private);
                return Err(e);
            }
            Ok(())
        });
        for attribute in &mut private_template {
            if let Attribute::Value(secret) = attribute {
                secret.zeroize();
            }
        }
        created?;
        let handle = KeyHandle::new(hex::encode(&id));
        let info = self.load(&handle)?;
        if info.public_key != public_key {
            return Err(ProviderError::Corrupt(
                "the token holds a different key than the one imported".into(),
            ));
        }
        Ok(GeneratedKey {
            handle,
            public_key: info.public_key,
        })
    }

    /// The token's AES-256 sealing key (label `custos-seal-v1`), made on first use: sensitive,
    /// non-extractable, encrypt/decrypt only.
    fn seal_key(&self, session: &Session) -> cryptoki::error::Result<ObjectHandle> {
        let _held = self.seal_lock.lock().unwrap_or_else(|p| p.into_inner());
        let label = Attribute::Label(SEAL_KEY_LABEL.to_vec());
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            label.clone(),
        ])?;
        if let Some(&key) = found.first() {
            return Ok(key);
        }
        session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                label,
            ],
        )
    }

    /// AES-256-GCM under the token's sealing key: a version byte, the 12-byte IV, ciphertext and tag.
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let mut iv = [0u8; GCM_IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let ciphertext = self.token.with_session(|session| {
            let key = self.seal_key(session)?;
            let mut iv = iv;
            let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, context, 128.into())?;
            session.encrypt(&Mechanism::AesGcm(params), key, plaintext)
        })?;
        let mut out = Vec::with_capacity(1 + GCM_IV_LEN + ciphertext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    fn unseal(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let corrupt = || ProviderError::Corrupt("sealed secret does not decrypt".into());
        let (version, rest) = sealed.split_first().ok_or_else(corrupt)?;
        if *version != SEAL_VERSION || rest.len() < GCM_IV_LEN + 16 {
            return Err(corrupt());
        }
        let (iv, ciphertext) = rest.split_at(GCM_IV_LEN);
        let opened = self.token.with_session(|session| {
            let key = self.seal_key(session)?;
            let mut iv: [u8; GCM_IV_LEN] = iv.try_into().unwrap_or([0; GCM_IV_LEN]);
            let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, context, 128.into())?;
            // A failed tag check is an answer ("corrupt"), not a token failure.
            Ok(session
                .decrypt(&Mechanism::AesGcm(params), key, ciphertext)
                .ok())
        })?;
        opened.map(Zeroizing::new).ok_or_else(corrupt)
    }

    fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        let info = self.load(handle)?;
        if info.algorithm != algorithm {
            return Err(ProviderError::UnsupportedAlgorithm(algorithm));
        }
        let data = signing_input(algorithm, payload)?;
        let mechanism = if algorithm.is_ecdsa() {
            Mechanism::Ecdsa
        } else {
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
        };
        let sign = |private| {
            self.token
                .with_session(|session| session.sign(&mechanism, private, data))
        };
        let result = match sign(info.private) {
            Err(ProviderError::UnknownKey(_)) => {
                // The object handle went stale (the token was re-opened): find the key again by its
                // CKA_ID and try once more.
                self.forget(handle);
                sign(self.load(handle)?.private)
            }
            other => other,
        };
        result.map_err(|e| match e {
            ProviderError::UnknownKey(_) => ProviderError::UnknownKey(handle.clone()),
            other => other,
        })
    }
}

#[async_trait]
impl KeyProvider for Pkcs11Provider {
    fn name(&self) -> &ProviderName {
        &self.inner.name
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            exportable: false,
            import: true,
            bip32: false,
        }
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        let label = label.to_owned();
        self.blocking(move |inner| inner.generate(algorithm, &label))
            .await
    }

    async fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let (plaintext, context) = (Zeroizing::new(plaintext.to_vec()), context.to_vec());
        self.blocking(move |inner| inner.seal(&plaintext, &context))
            .await
    }

    async fn unseal(
        &self,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let (sealed, context) = (sealed.to_vec(), context.to_vec());
        self.blocking(move |inner| inner.unseal(&sealed, &context))
            .await
    }

    async fn import(&self, key: &PrivateKey, label: &str) -> Result<GeneratedKey, ProviderError> {
        let key = PrivateKey::from_secret(key.algorithm(), &key.secret())
            .map_err(|e| ProviderError::Corrupt(e.to_string()))?;
        let label = label.to_owned();
        self.blocking(move |inner| inner.import(&key, &label)).await
    }

    /// Adopts a key that already exists on the token, by `label:<text>` or `id:<hex>`.
    async fn adopt(
        &self,
        reference: &str,
        algorithm: Algorithm,
    ) -> Result<GeneratedKey, ProviderError> {
        let search = match reference.split_once(':') {
            Some(("label", label)) if !label.is_empty() => {
                Attribute::Label(label.as_bytes().to_vec())
            }
            Some(("id", id)) => Attribute::Id(
                hex::decode(id).map_err(|_| ProviderError::InvalidPayload("id: must be hex"))?,
            ),
            _ => {
                return Err(ProviderError::InvalidPayload(
                    "adopt by label:<text> or id:<hex>",
                ))
            }
        };
        self.blocking(move |inner| {
            inner
                .token
                .with_session(|session| {
                    let found = session.find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        search.clone(),
                    ])?;
                    let Some(&private) = found.first() else {
                        return Ok(None);
                    };
                    let attrs = session.get_attributes(private, &[AttributeType::Id])?;
                    let id = attrs.into_iter().find_map(|a| match a {
                        Attribute::Id(id) if !id.is_empty() => Some(id),
                        _ => None,
                    });
                    Ok(id)
                })?
                .ok_or_else(|| {
                    ProviderError::UnknownKey(KeyHandle::new(
                        "no private key with a CKA_ID matches",
                    ))
                })
                .and_then(|id| {
                    let handle = KeyHandle::new(hex::encode(&id));
                    let info = inner.load(&handle)?;
                    if info.algorithm != algorithm {
                        return Err(ProviderError::UnsupportedAlgorithm(algorithm));
                    }
                    Ok(GeneratedKey {
                        handle,
                        public_key: info.public_key,
                    })
                })
        })
        .await
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        let handle = handle.clone();
        self.blocking(move |inner| Ok(inner.load(&handle)?.public_key))
            .await
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        let (handle, payload) = (handle.clone(), payload.clone());
        self.blocking(move |inner| inner.sign(&handle, algorithm, &payload))
            .await
    }

    async fn health(&self) -> ProviderHealth {
        self.blocking(|inner| inner.token.check()).await.into()
    }
}

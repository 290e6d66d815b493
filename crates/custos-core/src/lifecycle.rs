//! Key life cycle: creating keys (generated, adopted, imported, BIP32 masters), placing one key in every
//! provider of a chain, new versions, and state changes, written through to the store and the registry.
//! Creations and rotations are serialised by one lock, so two can never pick the same name or version.

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_provider::{Bip32Key, GeneratedKey, ProviderError};
use custos_store::{Store, StoreError};
use custos_types::{
    Algorithm, ErrorCode, KeyKind, KeyName, KeyRecord, KeyState, KeyVersion, Location, PrivateKey,
    ProviderName, VersionRecord, VersionState,
};

use crate::chain::ProviderChain;
use crate::registry::Registry;
use crate::{Clock, CoreError};

/// How a new key gets its first version.
#[derive(Debug)]
pub(crate) enum Origin<'a> {
    /// Generated in the providers of the chain.
    Generate,
    /// An existing key of the provider, by its reference.
    Adopt(&'a str),
    /// Key material made elsewhere.
    Import(&'a PrivateKey),
}

/// Key creation and state changes.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) chain: Arc<ProviderChain>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Serialises key creation, rotation and state changes.
    pub(crate) admin: tokio::sync::Mutex<()>,
}

fn chain_error(message: impl Into<String>) -> CoreError {
    CoreError::bad(ErrorCode::ChainCannotShare, message)
}

impl Lifecycle {
    /// Checks a requested chain (empty: the default provider): every provider configured and able to
    /// hold the algorithm; in a longer chain, one that lets the key leave and the others able to import.
    pub(crate) fn resolve_chain(
        &self,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
    ) -> Result<Vec<ProviderName>, CoreError> {
        let chain = if chain.is_empty() {
            vec![self.chain.default_name().clone()]
        } else {
            chain
        };
        for name in &chain {
            let provider = self.chain.require(name)?;
            if !provider.capabilities().algorithms.contains(&algorithm) {
                return Err(CoreError::bad(
                    ErrorCode::UnsupportedAlgorithm,
                    format!("provider {name} does not support {algorithm}"),
                ));
            }
        }
        if chain.len() > 1 {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = chain.iter().find(|p| !seen.insert(*p)) {
                return Err(chain_error(format!(
                    "provider {twice} appears twice in the chain"
                )));
            }
            let source = self.share_source(&chain).ok_or_else(|| {
                chain_error(
                    "the providers of a chain must hold the same key, so one of them must let the key \
                     leave it (the software keystore does; HSM and KMS keys do not): put a soft \
                     provider in the chain",
                )
            })?;
            if let Some(refuses) = chain.iter().filter(|p| *p != source).find(|p| {
                self.chain
                    .get(p)
                    .is_none_or(|provider| !provider.capabilities().import)
            }) {
                return Err(chain_error(format!(
                    "provider {refuses} cannot import key material, so it cannot hold the same key \
                     as {source}; leave it out of the chain"
                )));
            }
        }
        Ok(chain)
    }

    /// The provider of a chain that generates a shared key: the first whose keys can be exported.
    fn share_source<'a>(&self, chain: &'a [ProviderName]) -> Option<&'a ProviderName> {
        chain.iter().find(|p| {
            self.chain
                .get(p)
                .is_some_and(|p| p.capabilities().exportable)
        })
    }

    fn provider(
        &self,
        name: &ProviderName,
    ) -> Result<Arc<dyn custos_provider::KeyProvider>, CoreError> {
        self.chain
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::Unavailable(format!("provider {name} is not configured")))
    }

    fn version(
        &self,
        version: KeyVersion,
        made: GeneratedKey,
        provider: &ProviderName,
    ) -> VersionRecord {
        VersionRecord {
            version,
            state: VersionState::Current,
            public_key: made.public_key,
            created_at: self.clock.now(),
            locations: vec![Location {
                provider: provider.clone(),
                handle: made.handle,
            }],
        }
    }

    /// Generates a new version of a key in every provider of its chain: a single provider generates it;
    /// in a longer chain the first exportable provider generates it and every other imports it, and each
    /// copy's public key must be the same.
    pub(crate) async fn new_version(
        &self,
        name: &KeyName,
        algorithm: Algorithm,
        chain: &[ProviderName],
        version: KeyVersion,
    ) -> Result<VersionRecord, CoreError> {
        let label = format!("custos:{name}:v{version}");
        let source = if chain.len() == 1 {
            &chain[0]
        } else {
            self.share_source(chain)
                .ok_or_else(|| chain_error("no provider of the chain can export keys"))?
        };
        let generated = self.provider(source)?.generate(algorithm, &label).await?;
        tracing::debug!(key = %name, %version, provider = %source, "generated a key version");
        let mut handles = BTreeMap::from([(source.clone(), generated.handle.clone())]);
        if chain.len() > 1 {
            let secret = self.provider(source)?.export(&generated.handle).await?;
            for member in chain.iter().filter(|p| *p != source) {
                let imported = self.provider(member)?.import(&secret, &label).await?;
                if imported.public_key != generated.public_key {
                    return Err(CoreError::Internal(format!(
                        "provider {member} imported the key as a different public key"
                    )));
                }
                tracing::debug!(key = %name, %version, provider = %member, "placed the key version");
                handles.insert(member.clone(), imported.handle);
            }
        }
        let locations = chain
            .iter()
            .filter_map(|p| {
                handles.remove(p).map(|handle| Location {
                    provider: p.clone(),
                    handle,
                })
            })
            .collect();
        Ok(VersionRecord {
            version,
            state: VersionState::Current,
            public_key: generated.public_key,
            created_at: self.clock.now(),
            locations,
        })
    }

    /// Creates a key with its first version.
    pub(crate) async fn create(
        &self,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
        origin: Origin<'_>,
        description: String,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let chain = match origin {
            Origin::Generate => self.resolve_chain(algorithm, chain)?,
            Origin::Adopt(_) | Origin::Import(_) => {
                if chain.len() > 1 {
                    return Err(CoreError::bad(
                        ErrorCode::InvalidRequest,
                        "an adopted or imported key lives in one provider: name one",
                    ));
                }
                self.resolve_chain(algorithm, chain)?
            }
        };
        let _guard = self.admin.lock().await;
        self.registry.check_free(&name)?;
        let first = match origin {
            Origin::Generate => {
                self.new_version(&name, algorithm, &chain, KeyVersion::FIRST)
                    .await?
            }
            Origin::Adopt(reference) => self.adopt_version(&chain[0], algorithm, reference).await?,
            Origin::Import(key) => {
                let provider = &chain[0];
                let imported = self
                    .provider(provider)?
                    .import(key, &format!("custos:{name}:v1"))
                    .await
                    .map_err(|e| match e {
                        ProviderError::NotSupported(why) => {
                            CoreError::bad(ErrorCode::NotSupported, why)
                        }
                        other => other.into(),
                    })?;
                if imported.public_key != key.public_key() {
                    return Err(CoreError::Internal(format!(
                        "provider {provider} imported the key as a different public key"
                    )));
                }
                self.version(KeyVersion::FIRST, imported, provider)
            }
        };
        let mut record = KeyRecord::new(name, algorithm, chain, self.clock.now(), vec![first]);
        record.description = description;
        self.register(record).await
    }

    async fn adopt_version(
        &self,
        provider_name: &ProviderName,
        algorithm: Algorithm,
        reference: &str,
    ) -> Result<VersionRecord, CoreError> {
        let adopted = self
            .provider(provider_name)?
            .adopt(reference, algorithm)
            .await
            .map_err(|e| match e {
                ProviderError::UnknownKey(_) => CoreError::bad(
                    ErrorCode::AdoptNotFound,
                    format!("provider {provider_name} has no key matching {reference:?}"),
                ),
                ProviderError::NotSupported(why) => CoreError::bad(ErrorCode::NotSupported, why),
                other => other.into(),
            })?;
        if self.registry.holds(provider_name, &adopted.handle)? {
            return Err(CoreError::bad(
                ErrorCode::AdoptConflict,
                format!("that key of provider {provider_name} already belongs to a Custos key"),
            ));
        }
        Ok(self.version(KeyVersion::FIRST, adopted, provider_name))
    }

    /// Creates a BIP32 master key in the default provider: generated there, or from the client's
    /// sealed `xprv` (opened inside the provider). Returns the key and the master's chain code.
    pub(crate) async fn create_bip32(
        &self,
        name: KeyName,
        sealed_xprv: Option<(&[u8], &[u8])>,
    ) -> Result<(Arc<KeyRecord>, [u8; 32]), CoreError> {
        let provider_name = self.chain.default_name().clone();
        let provider = self.provider(&provider_name)?;
        if !provider.capabilities().bip32 {
            return Err(CoreError::bad(
                ErrorCode::NotSupported,
                format!("the default provider {provider_name} does not hold BIP32 keys"),
            ));
        }
        let _guard = self.admin.lock().await;
        self.registry.check_free(&name)?;
        let label = format!("custos:{name}:v1");
        let Bip32Key { key, chain_code } = match sealed_xprv {
            None => provider.generate_bip32(&label).await?,
            Some((sealed, context)) => {
                provider
                    .import_sealed_bip32(sealed, context, &label)
                    .await?
            }
        };
        let first = self.version(KeyVersion::FIRST, key, &provider_name);
        let mut record = KeyRecord::new(
            name,
            Algorithm::Secp256k1,
            vec![provider_name],
            self.clock.now(),
            vec![first],
        );
        record.kind = KeyKind::Bip32;
        Ok((self.register(record).await?, chain_code))
    }

    /// Creates a key from a client's key material sealed by the default provider (32 bytes of hex for
    /// `algorithm`), opened and imported inside the provider.
    pub(crate) async fn create_from_sealed(
        &self,
        name: KeyName,
        algorithm: Algorithm,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let provider_name = self.chain.default_name().clone();
        let provider = self.provider(&provider_name)?;
        let _guard = self.admin.lock().await;
        self.registry.check_free(&name)?;
        let imported = provider
            .import_sealed(sealed, context, algorithm, &format!("custos:{name}:v1"))
            .await?;
        let first = self.version(KeyVersion::FIRST, imported, &provider_name);
        let record = KeyRecord::new(
            name,
            algorithm,
            vec![provider_name],
            self.clock.now(),
            vec![first],
        );
        self.register(record).await
    }

    /// Stores a new key and adds it to the registry.
    async fn register(&self, record: KeyRecord) -> Result<Arc<KeyRecord>, CoreError> {
        let name = record.name.clone();
        match self.store.create_key(&record).await {
            Err(StoreError::Conflict(_)) => return Err(CoreError::KeyExists(name)),
            other => other?,
        }
        let record = Arc::new(record);
        self.registry.insert(Arc::clone(&record))?;
        tracing::info!(key = %name, algorithm = %record.algorithm, kind = record.kind.as_str(), "key created");
        Ok(record)
    }

    /// Stores a key made from a pending import in its place.
    pub(crate) async fn register_import(
        &self,
        import_id: &str,
        record: KeyRecord,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        self.store.complete_import(import_id, &record).await?;
        let record = Arc::new(record);
        self.registry.insert(Arc::clone(&record))?;
        Ok(record)
    }

    /// Imports key material into the default provider as version 1 of a key record not yet stored.
    pub(crate) async fn imported_record(
        &self,
        name: KeyName,
        key: &PrivateKey,
    ) -> Result<KeyRecord, CoreError> {
        let provider_name = self.chain.default_name().clone();
        let chain = self.resolve_chain(key.algorithm(), vec![provider_name.clone()])?;
        let imported = self
            .provider(&provider_name)?
            .import(key, &format!("custos:{name}:v1"))
            .await?;
        if imported.public_key != key.public_key() {
            return Err(CoreError::Internal(
                "the provider imported the key as a different public key".into(),
            ));
        }
        let first = self.version(KeyVersion::FIRST, imported, &provider_name);
        Ok(KeyRecord::new(
            name,
            key.algorithm(),
            chain,
            self.clock.now(),
            vec![first],
        ))
    }

    /// Sets a key's state (every transition the caller allowed), in the store and the registry.
    pub(crate) async fn set_state(
        &self,
        name: &KeyName,
        state: KeyState,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let _guard = self.admin.lock().await;
        self.store.set_key_state(name, state).await?;
        self.registry.reload(name).await
    }

    /// Sets one version's state.
    pub(crate) async fn set_version_state(
        &self,
        name: &KeyName,
        version: KeyVersion,
        state: VersionState,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let _guard = self.admin.lock().await;
        self.store.set_version_state(name, version, state).await?;
        self.registry.reload(name).await
    }

    /// Sets a key's description.
    pub(crate) async fn set_description(
        &self,
        name: &KeyName,
        description: &str,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        self.store.set_key_description(name, description).await?;
        self.registry.reload(name).await
    }
}

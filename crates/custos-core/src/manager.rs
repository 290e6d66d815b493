//! The key manager: the in-memory key registry and the sign, verify, create and rotate paths.
//!
//! The sign path, in order: find the key and the version; build the exact bytes to sign (the message for
//! Ed25519, its digest for ECDSA); look in the signature cache; ask each provider holding the version, in
//! chain order, skipping providers whose circuit is open, retrying retryable errors within the configured
//! budget and moving on after it; verify the provider's signature against the version's public key and
//! normalise it; when every provider failed and emergency mode is on, sign with the emergency key; return
//! the signature with the version and provider that made it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use custos_provider::{KeyProvider, ProviderError, ProviderHealth};
use custos_store::{KeyRecord, Location, Store, StoreError, VersionRecord, Watermark};
use custos_types::{
    Algorithm, HashAlgorithm, KeyName, KeyVersion, ProviderName, SignPayload, Signature,
    SignatureFormat, Timestamp, TypesError, VersionState,
};
use sha2::Digest as _;

use crate::cache::SignatureCache;
use crate::emergency::{Emergency, EMERGENCY_PROVIDER};
use crate::failover::{CircuitView, Circuits};
use crate::guard::WatermarkWriter;
use crate::rotation::{
    job_setting, pause_point, policy_setting, write_backup, RotationJob, RotationPolicy, Step,
    JOB_PREFIX,
};
use crate::{AuditLog, CoreError, Event, Events, FailoverConfig, Metrics, RequestContext};
use custos_audit::{AuditEntry, Outcome};

/// Signatures cached unless configured otherwise.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

/// Size limits applied to every request, whatever the front end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message (before hashing) that may be signed or verified.
    pub max_message_bytes: usize,
    /// Most items in one batch.
    pub max_batch_items: usize,
}

impl Limits {
    /// Refuses an empty batch, or one with more items than allowed.
    pub fn check_batch(&self, items: usize) -> Result<(), CoreError> {
        if items == 0 {
            return Err(CoreError::bad("empty_batch", "the batch has no items"));
        }
        if items > self.max_batch_items {
            return Err(CoreError::TooLarge {
                code: "batch_too_large",
                message: format!(
                    "the batch has {items} items; the limit is {}",
                    self.max_batch_items
                ),
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_batch_items: 1000,
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
    pub emergency: Option<custos_types::PublicKey>,
}

/// One key's equivocation guard: its watermark as last read or written (`None`: not loaded yet), behind
/// the lock that serialises the key's guarded signing.
type KeyGuard = Arc<tokio::sync::Mutex<Option<Option<Watermark>>>>;

/// The parts of a key the emergency path needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyView<'a> {
    pub name: &'a KeyName,
    pub algorithm: Algorithm,
    pub version: KeyVersion,
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

/// The key registry and signing engine.
pub struct KeyManager {
    store: Arc<dyn Store>,
    providers: BTreeMap<ProviderName, Arc<dyn KeyProvider>>,
    default_provider: ProviderName,
    keys: RwLock<HashMap<KeyName, Arc<KeyRecord>>>,
    /// Serialises key creation and rotation.
    admin: tokio::sync::Mutex<()>,
    limits: Limits,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    /// Per key: the guard's watermark as last checked or written (`None`: not loaded yet); the lock
    /// serialises guarded (sequenced) signing of the key.
    guards: std::sync::Mutex<HashMap<KeyName, KeyGuard>>,
    watermarks: WatermarkWriter,
    circuits: Circuits,
    emergency: Option<Emergency>,
    cache: Option<SignatureCache>,
    events: Events,
    /// Per key, the chain position that signed last, to notice failovers and failbacks.
    last_position: std::sync::Mutex<HashMap<KeyName, usize>>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The bytes a batch's audit MAC covers: each item as a 4-byte big-endian length and its bytes.
fn frame_batch(items: &[SignRequest]) -> Vec<u8> {
    let mut framed = Vec::new();
    for item in items {
        let bytes = KeyManager::input_bytes(&item.input);
        framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(bytes);
    }
    framed
}

/// Puts the key's current version and provider into an audit entry.
fn describe_key(key: &Arc<KeyRecord>, entry: &mut AuditEntry) {
    if let Some(current) = key.current() {
        entry.version = Some(current.version.0);
        entry.provider = current.locations.first().map(|l| l.provider.to_string());
    }
}

fn poisoned() -> CoreError {
    CoreError::Internal("key registry lock poisoned".into())
}

impl KeyManager {
    /// Loads every key from the store. `default_provider` receives keys created without a provider.
    pub async fn load(
        store: Arc<dyn Store>,
        providers: Vec<Arc<dyn KeyProvider>>,
        default_provider: ProviderName,
        limits: Limits,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Result<KeyManager, CoreError> {
        let providers: BTreeMap<_, _> = providers
            .into_iter()
            .map(|p| (p.name().clone(), p))
            .collect();
        if !providers.contains_key(&default_provider) {
            return Err(CoreError::Internal(format!(
                "the default provider {default_provider} is not configured"
            )));
        }
        let mut keys = HashMap::new();
        for key in store.list_keys().await? {
            for location in key.versions.iter().flat_map(|v| &v.locations) {
                if !providers.contains_key(&location.provider) {
                    tracing::warn!(key = %key.name, provider = %location.provider,
                        "a key version lives in a provider that is not configured");
                }
            }
            keys.insert(key.name.clone(), Arc::new(key));
        }
        if providers.keys().any(|p| p.as_str() == EMERGENCY_PROVIDER) {
            return Err(CoreError::Internal(format!(
                "the provider name {EMERGENCY_PROVIDER} is reserved for emergency mode"
            )));
        }
        let circuits = Circuits::new(FailoverConfig::default(), providers.keys(), &metrics);
        Ok(KeyManager {
            watermarks: WatermarkWriter::start(Arc::clone(&store)),
            circuits,
            emergency: None,
            cache: SignatureCache::new(DEFAULT_CACHE_SIZE),
            events: Events::none(),
            last_position: std::sync::Mutex::new(HashMap::new()),
            store,
            providers,
            default_provider,
            keys: RwLock::new(keys),
            admin: tokio::sync::Mutex::new(()),
            limits,
            audit,
            metrics,
            guards: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Sets the failover behaviour; `emergency_provider` (an in-memory provider) signs in emergency mode
    /// when the configuration turns it on.
    pub fn with_failover(
        mut self,
        config: FailoverConfig,
        emergency_provider: Arc<dyn KeyProvider>,
    ) -> KeyManager {
        self.emergency = config
            .emergency
            .enabled
            .then(|| Emergency::new(config.emergency.clone(), emergency_provider));
        self.circuits = Circuits::new(config, self.providers.keys(), &self.metrics);
        self
    }

    /// Sets the signature cache size (0 turns caching off).
    pub fn with_cache(mut self, max_entries: usize) -> KeyManager {
        self.cache = SignatureCache::new(max_entries);
        self
    }

    /// Sends events (provider switches, emergency signatures, rotations) to `events`.
    pub fn with_events(mut self, events: Events) -> KeyManager {
        self.events = events;
        self
    }

    /// The event queue.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The failover settings in force.
    pub fn failover_config(&self) -> &FailoverConfig {
        self.circuits.config()
    }

    /// One provider's circuit breaker, for operators.
    pub fn circuit(&self, provider: &ProviderName) -> Option<CircuitView> {
        self.circuits.view(provider)
    }

    /// Signatures in the cache now.
    pub fn cached_signatures(&self) -> usize {
        self.cache.as_ref().map_or(0, SignatureCache::len)
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The configured providers, by name.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn KeyProvider>> {
        self.providers.values()
    }

    /// The provider that holds keys created without a chain, and seals secrets (stored AWS credentials,
    /// symmetric KMS ciphertexts).
    pub fn default_provider(&self) -> &Arc<dyn KeyProvider> {
        &self.providers[&self.default_provider]
    }

    /// One provider by name.
    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<dyn KeyProvider>> {
        self.providers.get(name)
    }

    /// Probes every provider.
    pub async fn provider_health(&self) -> Vec<(Arc<dyn KeyProvider>, ProviderHealth)> {
        let mut out = Vec::with_capacity(self.providers.len());
        for provider in self.providers.values() {
            out.push((Arc::clone(provider), provider.health().await));
        }
        out
    }

    /// Checks the store answers.
    pub async fn store_ready(&self) -> Result<(), CoreError> {
        Ok(self.store.ping().await?)
    }

    /// One key.
    pub fn key(&self, name: &KeyName) -> Result<Arc<KeyRecord>, CoreError> {
        self.keys
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::KeyNotFound(name.clone()))
    }

    /// Every key, ordered by name.
    pub fn list_keys(&self) -> Result<Vec<Arc<KeyRecord>>, CoreError> {
        let mut keys: Vec<_> = self
            .keys
            .read()
            .map_err(|_| poisoned())?
            .values()
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }

    fn resolve_chain(
        &self,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
    ) -> Result<Vec<ProviderName>, CoreError> {
        let chain = if chain.is_empty() {
            vec![self.default_provider.clone()]
        } else {
            chain
        };
        for name in &chain {
            let provider = self.providers.get(name).ok_or_else(|| {
                CoreError::bad(
                    "unknown_provider",
                    format!(
                        "no provider named {name}; configured: {}",
                        self.providers
                            .keys()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            if !provider.capabilities().algorithms.contains(&algorithm) {
                return Err(CoreError::bad(
                    "unsupported_algorithm",
                    format!("provider {name} does not support {algorithm}"),
                ));
            }
        }
        if chain.len() > 1 {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = chain.iter().find(|p| !seen.insert(*p)) {
                return Err(CoreError::bad(
                    "chain_cannot_share",
                    format!("provider {twice} appears twice in the chain"),
                ));
            }
            let source = self.share_source(&chain).ok_or_else(|| {
                CoreError::bad(
                    "chain_cannot_share",
                    "the providers of a chain must hold the same key, so one of them must let the key \
                     leave it (the software keystore does; HSM and KMS keys do not): put a soft \
                     provider in the chain",
                )
            })?;
            if let Some(refuses) = chain
                .iter()
                .filter(|p| *p != source)
                .find(|p| !self.providers[*p].capabilities().import)
            {
                return Err(CoreError::bad(
                    "chain_cannot_share",
                    format!(
                        "provider {refuses} cannot import key material, so it cannot hold the same \
                         key as {source}; leave it out of the chain"
                    ),
                ));
            }
        }
        Ok(chain)
    }

    /// The provider of a chain that generates a shared key: the first whose keys can be exported.
    fn share_source<'a>(&self, chain: &'a [ProviderName]) -> Option<&'a ProviderName> {
        chain.iter().find(|p| {
            self.providers
                .get(*p)
                .is_some_and(|p| p.capabilities().exportable)
        })
    }

    /// Generates a new version of a key in every provider of its chain: a single provider generates it;
    /// in a longer chain the first exportable provider generates it and every other imports it, and each
    /// copy's public key must be the same.
    async fn new_version(
        &self,
        name: &KeyName,
        algorithm: Algorithm,
        chain: &[ProviderName],
        version: KeyVersion,
    ) -> Result<VersionRecord, CoreError> {
        let label = format!("custos:{name}:v{version}");
        let provider = |p: &ProviderName| {
            self.providers
                .get(p)
                .cloned()
                .ok_or_else(|| CoreError::Unavailable(format!("provider {p} is not configured")))
        };
        let source = if chain.len() == 1 {
            &chain[0]
        } else {
            self.share_source(chain).ok_or_else(|| {
                CoreError::bad(
                    "chain_cannot_share",
                    "no provider of the chain can export keys",
                )
            })?
        };
        let generated = provider(source)?.generate(algorithm, &label).await?;
        let mut handles = BTreeMap::from([(source.clone(), generated.handle.clone())]);
        if chain.len() > 1 {
            let secret = provider(source)?.export(&generated.handle).await?;
            for member in chain.iter().filter(|p| *p != source) {
                let imported = provider(member)?.import(&secret, &label).await?;
                if imported.public_key != generated.public_key {
                    return Err(CoreError::Internal(format!(
                        "provider {member} imported the key as a different public key"
                    )));
                }
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
            created_at: Timestamp::now(),
            locations,
        })
    }

    async fn create_key_unaudited(
        &self,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let chain = self.resolve_chain(algorithm, chain)?;
        let _guard = self.admin.lock().await;
        self.check_name_free(&name)?;
        let version = self
            .new_version(&name, algorithm, &chain, KeyVersion::FIRST)
            .await?;
        self.register(name, algorithm, chain, version).await
    }

    async fn adopt_key_unaudited(
        &self,
        name: KeyName,
        algorithm: Algorithm,
        provider: Option<ProviderName>,
        reference: &str,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let chain = self.resolve_chain(algorithm, provider.into_iter().collect())?;
        let provider_name = &chain[0];
        let provider = self
            .providers
            .get(provider_name)
            .ok_or_else(|| CoreError::Internal(format!("provider {provider_name} vanished")))?;
        let _guard = self.admin.lock().await;
        self.check_name_free(&name)?;
        let adopted = provider
            .adopt(reference, algorithm)
            .await
            .map_err(|e| match e {
                ProviderError::UnknownKey(_) => CoreError::bad(
                    "adopt_not_found",
                    format!("provider {provider_name} has no key matching {reference:?}"),
                ),
                ProviderError::NotSupported(why) => CoreError::bad("not_supported", why),
                other => other.into(),
            })?;
        let taken = self.keys.read().map_err(|_| poisoned())?.values().any(|k| {
            k.versions
                .iter()
                .flat_map(|v| &v.locations)
                .any(|l| l.provider == *provider_name && l.handle == adopted.handle)
        });
        if taken {
            return Err(CoreError::bad(
                "adopt_conflict",
                format!("that key of provider {provider_name} already belongs to a Custos key"),
            ));
        }
        let version = VersionRecord {
            version: KeyVersion::FIRST,
            state: VersionState::Current,
            public_key: adopted.public_key,
            created_at: Timestamp::now(),
            locations: vec![Location {
                provider: provider_name.clone(),
                handle: adopted.handle,
            }],
        };
        self.register(name, algorithm, chain, version).await
    }

    fn check_name_free(&self, name: &KeyName) -> Result<(), CoreError> {
        if self.keys.read().map_err(|_| poisoned())?.contains_key(name) {
            return Err(CoreError::KeyExists(name.clone()));
        }
        Ok(())
    }

    /// Stores a new key with its first version and adds it to the registry.
    async fn register(
        &self,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
        version: VersionRecord,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let record = KeyRecord {
            name: name.clone(),
            algorithm,
            providers: chain,
            created_at: Timestamp::now(),
            versions: vec![version],
        };
        match self.store.create_key(&record).await {
            Err(StoreError::Conflict(_)) => return Err(CoreError::KeyExists(name)),
            other => other?,
        }
        let record = Arc::new(record);
        self.keys
            .write()
            .map_err(|_| poisoned())?
            .insert(name.clone(), Arc::clone(&record));
        tracing::info!(key = %name, %algorithm, "key created");
        Ok(record)
    }

    /// Rotates by the persisted state machine (see `rotation`): resumes a recorded job, or starts one.
    async fn rotate_unaudited(
        &self,
        name: &KeyName,
    ) -> Result<(Arc<KeyRecord>, String), CoreError> {
        let _guard = self.admin.lock().await;
        let key = self.key(name)?;
        let policy = self.rotation_policy(name).await?;
        let mut job = match self.store.get_setting(&job_setting(name)).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CoreError::Internal(format!("rotation job of {name}: {e}")))?,
            None => {
                let highest = key
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .max()
                    .unwrap_or(KeyVersion(0));
                let target = highest.next().ok_or_else(|| {
                    CoreError::bad("version_limit", "the key has no version numbers left")
                })?;
                let job = RotationJob {
                    target,
                    step: Step::Backup,
                    backup: None,
                    started_at: Timestamp::now(),
                };
                self.save_job(name, &job).await?;
                job
            }
        };
        pause_point("rotation:started").await;
        if job.step == Step::Backup {
            job.backup = Some(match policy.as_ref().filter(|p| p.backup_enabled) {
                Some(policy) => self.backup(&key, policy).await?,
                None => "backups are off for this key".to_owned(),
            });
            job.step = Step::Generate;
            self.save_job(name, &job).await?;
            pause_point("rotation:backed_up").await;
        }
        if key.version(job.target).is_none() {
            let version = self
                .new_version(name, key.algorithm, &key.providers, job.target)
                .await?;
            pause_point("rotation:generated").await;
            self.store
                .add_current_version(name, &version, VersionState::Enabled)
                .await?;
            pause_point("rotation:committed").await;
        }
        self.store.delete_setting(&job_setting(name)).await?;
        let updated = Arc::new(
            self.store
                .get_key(name)
                .await?
                .ok_or_else(|| CoreError::KeyNotFound(name.clone()))?,
        );
        self.keys
            .write()
            .map_err(|_| poisoned())?
            .insert(name.clone(), Arc::clone(&updated));
        let backup = job.backup.unwrap_or_default();
        tracing::info!(key = %name, version = %job.target, %backup, "key rotated");
        self.events.emit(Event::KeyRotated {
            key: name.to_string(),
            version: job.target.0,
            backup: backup.clone(),
        });
        Ok((updated, backup))
    }

    async fn save_job(&self, name: &KeyName, job: &RotationJob) -> Result<(), CoreError> {
        let bytes = serde_json::to_vec(job)
            .map_err(|e| CoreError::Internal(format!("rotation job: {e}")))?;
        Ok(self.store.put_setting(&job_setting(name), &bytes).await?)
    }

    /// Backs up the current version before a rotation: the age-encrypted key where a provider of the chain
    /// lets it leave, otherwise the recorded reason there is none.
    async fn backup(&self, key: &KeyRecord, policy: &RotationPolicy) -> Result<String, CoreError> {
        let current = key.current().ok_or_else(|| {
            CoreError::Internal(format!("key {} has no current version", key.name))
        })?;
        let exportable = current.locations.iter().find(|l| {
            self.providers
                .get(&l.provider)
                .is_some_and(|p| p.capabilities().exportable)
        });
        let Some(location) = exportable else {
            return Ok(format!(
                "no backup file: version {} lives only in providers that never let a key leave ({}); \
                 back it up with the provider's own means (HSM backup, KMS multi-region keys)",
                current.version,
                current
                    .locations
                    .iter()
                    .map(|l| l.provider.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let private = self.providers[&location.provider]
            .export(&location.handle)
            .await?;
        if private.public_key() != current.public_key {
            return Err(CoreError::Internal(
                "the exported key does not match the version's public key".into(),
            ));
        }
        let (policy, name, version) = (policy.clone(), key.name.clone(), current.version);
        let path =
            tokio::task::spawn_blocking(move || write_backup(&policy, &name, version, &private))
                .await
                .map_err(|e| CoreError::Internal(format!("backup task failed: {e}")))??;
        Ok(path.display().to_string())
    }

    /// A key's rotation policy, if it has one.
    pub async fn rotation_policy(
        &self,
        name: &KeyName,
    ) -> Result<Option<RotationPolicy>, CoreError> {
        match self.store.get_setting(&policy_setting(name)).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::Internal(format!("rotation policy of {name}: {e}"))
            })?)),
        }
    }

    /// When a key is next due to rotate, if it has a policy.
    pub async fn next_rotation(&self, name: &KeyName) -> Result<Option<Timestamp>, CoreError> {
        let key = self.key(name)?;
        let Some(policy) = self.rotation_policy(name).await? else {
            return Ok(None);
        };
        let made = key.current().map_or(key.created_at, |v| v.created_at);
        policy.due_after(made).map(Some)
    }

    /// Sets (or with `None` removes) a key's rotation policy.
    pub async fn set_rotation_policy(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        policy: Option<RotationPolicy>,
    ) -> Result<(), CoreError> {
        let mut entry = ctx.entry("rotation_policy");
        entry.key = Some(name.to_string());
        let result = async {
            self.key(name)?;
            match &policy {
                Some(policy) => {
                    policy.validate()?;
                    let bytes = serde_json::to_vec(policy)
                        .map_err(|e| CoreError::Internal(e.to_string()))?;
                    self.store
                        .put_setting(&policy_setting(name), &bytes)
                        .await?;
                }
                None => self.store.delete_setting(&policy_setting(name)).await?,
            }
            Ok(())
        }
        .await;
        entry.subject = Some(match &policy {
            Some(p) => format!(
                "every {} days at {} {}",
                p.interval_days, p.rotation_time, p.time_zone
            ),
            None => "removed".into(),
        });
        self.audited(entry, result, |_, _| {}).await
    }

    /// Finishes every rotation a crash interrupted. Run once at start, before serving. A rotation that
    /// cannot be finished now (its backup directory is gone, a provider is down) is logged, sent as a
    /// `rotation_failed` event and left recorded for the next attempt; it does not stop the start.
    /// Returns how many were finished and how many are still pending.
    pub async fn resume_rotations(
        &self,
        ctx: &RequestContext,
    ) -> Result<(usize, usize), CoreError> {
        let jobs = self.store.list_settings(JOB_PREFIX).await?;
        let (mut finished, mut pending) = (0, 0);
        for (setting, _) in &jobs {
            let name = KeyName::new(setting.trim_start_matches(JOB_PREFIX))?;
            tracing::warn!(key = %name, "resuming an interrupted rotation");
            match self.rotate(ctx, &name).await {
                Ok(_) => finished += 1,
                Err(e) => {
                    pending += 1;
                    tracing::error!(key = %name, error = %e, "cannot finish an interrupted rotation yet");
                    self.events.emit(Event::RotationFailed {
                        key: name.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok((finished, pending))
    }

    /// One pass of the scheduler: if `holder` holds (or can take) the rotation lease, rotate every key
    /// whose policy says it is due, and make versions whose overlap has ended verify-only. Returns the
    /// keys rotated. Failures are logged, sent as events, and retried at the next pass.
    pub async fn run_scheduled(
        &self,
        ctx: &RequestContext,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<KeyName>, CoreError> {
        let now = Timestamp::now();
        let until = now
            .checked_add(
                jiff::SignedDuration::try_from(lease).unwrap_or(jiff::SignedDuration::ZERO),
            )
            .unwrap_or(now);
        if !self
            .store
            .acquire_lease("rotation", holder, now, until)
            .await?
        {
            return Ok(Vec::new());
        }
        let mut rotated = Vec::new();
        // Rotations left unfinished (by a crash, or a failure since) go first.
        for (setting, _) in self.store.list_settings(JOB_PREFIX).await? {
            let name = KeyName::new(setting.trim_start_matches(JOB_PREFIX))?;
            match self.rotate(ctx, &name).await {
                Ok(_) => rotated.push(name),
                Err(e) => {
                    tracing::error!(key = %name, error = %e, "an unfinished rotation failed again");
                    self.events.emit(Event::RotationFailed {
                        key: name.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        for key in self.list_keys()? {
            let Some(policy) = self.rotation_policy(&key.name).await? else {
                continue;
            };
            if let Err(e) = self.retire_overlapped(ctx, &key, &policy).await {
                tracing::error!(key = %key.name, error = %e, "cannot end an overlap period");
            }
            let made = key.current().map_or(key.created_at, |v| v.created_at);
            if policy.due_after(made)? > now {
                continue;
            }
            match self.rotate(ctx, &key.name).await {
                Ok(_) => rotated.push(key.name.clone()),
                Err(e) => {
                    tracing::error!(key = %key.name, error = %e, "scheduled rotation failed");
                    self.events.emit(Event::RotationFailed {
                        key: key.name.to_string(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(rotated)
    }

    /// Makes `enabled` versions verify-only (`disabled`) once the overlap after their replacement ended.
    async fn retire_overlapped(
        &self,
        ctx: &RequestContext,
        key: &KeyRecord,
        policy: &RotationPolicy,
    ) -> Result<(), CoreError> {
        let now = Timestamp::now();
        for version in key
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Enabled)
        {
            let replaced = key
                .versions
                .iter()
                .filter(|v| v.version > version.version)
                .map(|v| v.created_at)
                .min();
            if replaced.is_some_and(|at| policy.overlap_ends(at) <= now) {
                let mut entry = ctx.entry("version_disable");
                entry.key = Some(key.name.to_string());
                entry.version = Some(version.version.0);
                entry.subject = Some("overlap period ended: verify-only".into());
                let result = self
                    .set_state(&key.name, version.version, VersionState::Disabled)
                    .await;
                self.audited(entry, result, |_, _| {}).await?;
            }
        }
        Ok(())
    }

    async fn set_state(
        &self,
        name: &KeyName,
        version: KeyVersion,
        state: VersionState,
    ) -> Result<(), CoreError> {
        let _guard = self.admin.lock().await;
        self.store.set_version_state(name, version, state).await?;
        let updated = self
            .store
            .get_key(name)
            .await?
            .ok_or_else(|| CoreError::KeyNotFound(name.clone()))?;
        self.keys
            .write()
            .map_err(|_| poisoned())?
            .insert(name.clone(), Arc::new(updated));
        Ok(())
    }

    fn check_message(&self, message: &[u8]) -> Result<(), CoreError> {
        if message.is_empty() {
            return Err(CoreError::bad("empty_message", "the message is empty"));
        }
        if message.len() > self.limits.max_message_bytes {
            return Err(CoreError::TooLarge {
                code: "message_too_large",
                message: format!(
                    "the message is {} bytes; the limit is {}",
                    message.len(),
                    self.limits.max_message_bytes
                ),
            });
        }
        Ok(())
    }

    /// The exact bytes a provider signs for this key and input.
    fn payload(
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

    fn signing_version(
        key: &KeyRecord,
        version: Option<KeyVersion>,
    ) -> Result<&VersionRecord, CoreError> {
        let record = match version {
            None => key.current().ok_or_else(|| {
                CoreError::Internal(format!("key {} has no current version", key.name))
            })?,
            Some(v) => key.version(v).ok_or_else(|| CoreError::VersionNotFound {
                key: key.name.clone(),
                version: v,
            })?,
        };
        if !record.state.can_sign() {
            return Err(CoreError::VersionNotUsable {
                key: key.name.clone(),
                version: record.version,
                state: record.state,
            });
        }
        Ok(record)
    }

    async fn sign_one(
        &self,
        key: &KeyRecord,
        request: &SignRequest,
        operation: &'static str,
    ) -> Result<SignOutcome, CoreError> {
        let payload = self.payload(key.algorithm, &request.input, request.hash)?;
        let Some(cache) = &self.cache else {
            return self
                .sign_payload(key, request.version, &payload, operation)
                .await;
        };
        let version = Self::signing_version(key, request.version)?.version;
        let cache_key = (
            key.name.clone(),
            version,
            sha2::Sha256::digest(payload.as_bytes()).into(),
        );
        let slot = cache.slot(cache_key.clone());
        let mut signed_here = None;
        let mut ran = false;
        let result = slot
            .get_or_try_init(|| async {
                ran = true;
                let outcome = self
                    .sign_payload(key, Some(version), &payload, operation)
                    .await?;
                if outcome.emergency.is_some() {
                    // Not cached: an emergency key is not the key's identity.
                    signed_here = Some(outcome);
                    return Err(None);
                }
                Ok(outcome)
            })
            .await;
        match (result, signed_here) {
            (Ok(outcome), _) => {
                if !ran {
                    self.metrics.cache_hits.inc();
                }
                Ok(outcome.clone())
            }
            (Err(None::<CoreError>), Some(outcome)) => {
                cache.forget(&cache_key);
                Ok(outcome)
            }
            (Err(err), _) => {
                cache.forget(&cache_key);
                Err(err.unwrap_or_else(|| CoreError::Internal("cache slot".into())))
            }
        }
    }

    /// Signs bytes already prepared by [`KeyManager::payload`] with the requested (or current) version,
    /// along the provider chain (see the module documentation).
    async fn sign_payload(
        &self,
        key: &KeyRecord,
        version: Option<KeyVersion>,
        payload: &SignPayload,
        operation: &'static str,
    ) -> Result<SignOutcome, CoreError> {
        let version = Self::signing_version(key, version)?;
        if self.cache.is_some() {
            self.metrics.cache_misses.inc();
        }
        let timeout = std::time::Duration::from_millis(self.circuits.config().provider_timeout_ms);
        let mut last = None;
        for (position, location) in version.locations.iter().enumerate() {
            let Some(provider) = self.providers.get(&location.provider) else {
                last = Some(CoreError::Unavailable(format!(
                    "provider {} is not configured",
                    location.provider
                )));
                continue;
            };
            if !self.circuits.allow(&location.provider, &self.metrics) {
                last = Some(CoreError::Unavailable(format!(
                    "provider {}'s circuit is open",
                    location.provider
                )));
                continue;
            }
            let (attempts, pause) = self.circuits.config().attempts(position);
            for attempt in 0..attempts {
                if attempt > 0 {
                    tokio::time::sleep(pause).await;
                }
                let started = std::time::Instant::now();
                let signed = tokio::time::timeout(
                    timeout,
                    provider.sign(&location.handle, key.algorithm, payload),
                )
                .await
                .unwrap_or(Err(ProviderError::Timeout));
                self.metrics
                    .sign_seconds
                    .with_label_values(&[location.provider.as_str(), key.algorithm.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                let err = match signed {
                    Ok(raw) => match version
                        .public_key
                        .verify(payload, &raw, SignatureFormat::Raw)
                    {
                        Ok(signature) => {
                            self.circuits.success(&location.provider, &self.metrics);
                            self.note_position(&key.name, position, &location.provider)
                                .await;
                            return Ok(SignOutcome {
                                version: version.version,
                                provider: location.provider.clone(),
                                signature,
                                emergency: None,
                            });
                        }
                        Err(err) => {
                            // A misbehaving provider: never retried, counted against its circuit,
                            // and the next provider of the chain is asked. If none can sign, the
                            // caller hears an internal error, not "retry later".
                            tracing::error!(key = %key.name, version = %version.version,
                                provider = %location.provider, error = %err,
                                "provider returned a signature that does not verify");
                            self.circuits.failure(
                                &location.provider,
                                "returned a bad signature",
                                &self.metrics,
                            );
                            last = Some(CoreError::Internal(format!(
                                "provider {} returned a bad signature",
                                location.provider
                            )));
                            break;
                        }
                    },
                    Err(err) if err.is_retryable() => err,
                    Err(err) => {
                        // The provider answered: it is reachable, and the error is not one that
                        // another attempt or another provider would fix.
                        self.circuits.success(&location.provider, &self.metrics);
                        return Err(err.into());
                    }
                };
                tracing::warn!(key = %key.name, provider = %location.provider, attempt, error = %err,
                    "provider failed");
                let open =
                    self.circuits
                        .failure(&location.provider, &err.to_string(), &self.metrics);
                last = Some(err.into());
                if open {
                    break;
                }
            }
        }
        let last = last.unwrap_or_else(|| CoreError::Internal("version has no locations".into()));
        let Some(emergency) = &self.emergency else {
            return Err(last);
        };
        let view = KeyView {
            name: &key.name,
            algorithm: key.algorithm,
            version: version.version,
        };
        let (outcome, state) = emergency
            .sign(self.store.as_ref(), &view, payload, operation)
            .await?;
        self.metrics.emergency_signatures.inc();
        if let Some(public_key) = &outcome.emergency {
            tracing::warn!(key = %key.name, count = state.count, "EMERGENCY SIGNATURE");
            self.events.emit(Event::EmergencySignature {
                key: key.name.to_string(),
                emergency_public_key: hex::encode(public_key.as_bytes()),
                count: state.count,
            });
        }
        Ok(outcome)
    }

    /// Notices a switch of a key's signing to another chain position: logged, counted, written to the
    /// audit log and sent as an event.
    async fn note_position(&self, key: &KeyName, position: usize, provider: &ProviderName) {
        let previous = {
            let mut last = self.last_position.lock().unwrap_or_else(|p| p.into_inner());
            // The hot path: the same position as last time, with no allocation.
            match last.get_mut(key) {
                Some(p) if *p == position => return,
                Some(p) => Some(std::mem::replace(p, position)),
                None => last.insert(key.clone(), position),
            }
        };
        let Some(previous) = previous.filter(|p| *p != position) else {
            return;
        };
        let direction = if position > previous {
            "failover"
        } else {
            "failback"
        };
        let from = self
            .key(key)
            .ok()
            .and_then(|k| k.providers.get(previous).cloned())
            .map(|p| p.to_string())
            .unwrap_or_default();
        tracing::warn!(key = %key, %from, to = %provider, direction, "provider switch");
        if position > previous {
            self.metrics.failovers.inc();
        } else {
            self.metrics.failbacks.inc();
        }
        self.circuits.switched_to(provider);
        let mut entry = RequestContext::system("failover").entry("provider_switch");
        entry.key = Some(key.to_string());
        entry.provider = Some(provider.to_string());
        entry.subject = Some(format!("{direction} from {from}"));
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "cannot write the provider switch to the audit log");
        }
        self.events.emit(Event::ProviderSwitch {
            key: key.to_string(),
            from,
            to: provider.to_string(),
            direction: direction.into(),
        });
    }

    async fn sign_unaudited(
        &self,
        name: &KeyName,
        request: &SignRequest,
    ) -> Result<SignOutcome, CoreError> {
        let key = self.key(name)?;
        match request.sequence {
            None => self.sign_one(&key, request, "sign").await,
            Some(sequence) => self.sign_guarded(&key, request, sequence).await,
        }
    }

    /// The equivocation guard: at most one payload per sequence, never below the watermark, and the
    /// watermark durably advanced before the signature is released. The key's lock covers the check and
    /// the signing; the durable write is grouped with other keys' and requests' writes (see `guard`).
    async fn sign_guarded(
        &self,
        key: &KeyRecord,
        request: &SignRequest,
        sequence: u64,
    ) -> Result<SignOutcome, CoreError> {
        let lock = {
            let mut guards = self.guards.lock().map_err(|_| poisoned())?;
            Arc::clone(guards.entry(key.name.clone()).or_default())
        };
        let payload = self.payload(key.algorithm, &request.input, request.hash)?;
        let payload_hash: [u8; 32] = sha2::Sha256::digest(payload.as_bytes()).into();
        let equivocation = |signed: u64| CoreError::Equivocation {
            key: key.name.clone(),
            sequence,
            signed,
        };
        let (outcome, durable) = {
            let mut held = lock.lock().await;
            if held.is_none() {
                *held = Some(self.store.watermark(&key.name).await?);
            }
            if let Some(Some(mark)) = held.as_ref() {
                if sequence < mark.sequence
                    || (sequence == mark.sequence && mark.payload_hash != payload_hash)
                {
                    return Err(equivocation(mark.sequence));
                }
                if sequence == mark.sequence {
                    drop(held);
                    return self.replay(key, sequence, payload_hash, &payload).await;
                }
            }
            let outcome = self
                .sign_payload(key, request.version, &payload, "sign")
                .await?;
            let mark = Watermark {
                sequence,
                payload_hash,
                version: outcome.version,
                provider: outcome.provider.clone(),
                signature: outcome.signature.raw().to_vec(),
            };
            let durable = self
                .watermarks
                .advance(key.name.clone(), mark.clone())
                .await?;
            *held = Some(Some(mark));
            (outcome, durable)
        };
        let written = durable
            .await
            .unwrap_or_else(|_| Err("the watermark writer stopped".into()));
        match written {
            Ok(true) => Ok(outcome),
            failed => {
                // What is in memory may be ahead of the store: read it again next time.
                *lock.lock().await = None;
                match failed {
                    Ok(_) => Err(equivocation(sequence)),
                    Err(e) => Err(CoreError::Unavailable(format!(
                        "cannot record the signed sequence: {e}"
                    ))),
                }
            }
        }
    }

    /// The same payload at the signed sequence: once the watermark is durable, the stored signature,
    /// checked again before it is returned.
    async fn replay(
        &self,
        key: &KeyRecord,
        sequence: u64,
        payload_hash: [u8; 32],
        payload: &SignPayload,
    ) -> Result<SignOutcome, CoreError> {
        self.watermarks.flush().await?;
        let mark =
            self.store.watermark(&key.name).await?.ok_or_else(|| {
                CoreError::Unavailable("the signed sequence was not recorded".into())
            })?;
        if mark.sequence != sequence || mark.payload_hash != payload_hash {
            return Err(CoreError::Equivocation {
                key: key.name.clone(),
                sequence,
                signed: mark.sequence,
            });
        }
        if mark.provider.as_str() == EMERGENCY_PROVIDER {
            let view = KeyView {
                name: &key.name,
                algorithm: key.algorithm,
                version: mark.version,
            };
            return Emergency::verify_replay(self.store.as_ref(), &view, payload, &mark.signature)
                .await;
        }
        let version = key
            .version(mark.version)
            .ok_or_else(|| CoreError::Internal("watermark names a missing version".into()))?;
        let signature =
            version
                .public_key
                .verify(payload, &mark.signature, SignatureFormat::Raw)?;
        Ok(SignOutcome {
            version: mark.version,
            provider: mark.provider,
            signature,
            emergency: None,
        })
    }

    async fn sign_batch_unaudited(
        self: &Arc<Self>,
        name: &KeyName,
        items: &[SignRequest],
    ) -> Result<Vec<Result<SignOutcome, CoreError>>, CoreError> {
        self.limits.check_batch(items.len())?;
        if items.iter().any(|i| i.sequence.is_some()) {
            return Err(CoreError::bad(
                "not_supported",
                "a sequence (the equivocation guard) applies to single sign requests, not batches",
            ));
        }
        let key = self.key(name)?;
        // Items run concurrently: one task per chunk, so CPU-bound signing and verification use every
        // core, and each task keeps a provider session busy.
        let workers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(1, 16);
        let chunk = items.len().div_ceil(workers).max(8);
        if items.len() <= chunk {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(self.sign_one(&key, item, "sign_batch").await);
            }
            return Ok(results);
        }
        let mut tasks = Vec::new();
        for part in items.chunks(chunk) {
            let (manager, key, part) = (Arc::clone(self), Arc::clone(&key), part.to_vec());
            tasks.push(tokio::spawn(async move {
                let mut results = Vec::with_capacity(part.len());
                for item in &part {
                    results.push(manager.sign_one(&key, item, "sign_batch").await);
                }
                results
            }));
        }
        let mut results = Vec::with_capacity(items.len());
        for task in tasks {
            results.extend(
                task.await
                    .map_err(|e| CoreError::Internal(format!("batch task failed: {e}")))?,
            );
        }
        Ok(results)
    }

    async fn verify_unaudited(
        &self,
        name: &KeyName,
        request: &VerifyRequest,
    ) -> Result<VerifyOutcome, CoreError> {
        let key = self.key(name)?;
        let payload = self.payload(key.algorithm, &request.input, request.hash)?;
        let mut candidates: Vec<&VersionRecord> = match request.version {
            Some(v) => vec![key.version(v).ok_or_else(|| CoreError::VersionNotFound {
                key: key.name.clone(),
                version: v,
            })?],
            None => key
                .versions
                .iter()
                .filter(|v| v.state.can_verify())
                .collect(),
        };
        candidates.sort_by_key(|v| {
            (
                v.state != VersionState::Current,
                std::cmp::Reverse(v.version),
            )
        });
        for version in candidates {
            if !version.state.can_verify() {
                return Err(CoreError::bad(
                    "version_not_usable",
                    format!(
                        "version {} of key {} is destroyed",
                        version.version, key.name
                    ),
                ));
            }
            match version
                .public_key
                .verify(&payload, &request.signature, request.format)
            {
                Ok(_) => {
                    return Ok(VerifyOutcome {
                        valid: true,
                        version: Some(version.version),
                    })
                }
                Err(TypesError::BadSignature) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Ok(VerifyOutcome {
            valid: false,
            version: None,
        })
    }

    /// The audit log every operation writes to.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The metrics every operation updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Writes the audit record for `result` (outcome and error code filled in) and returns `result`, or
    /// fails closed when the record cannot be written.
    async fn audited<T>(
        &self,
        mut entry: AuditEntry,
        result: Result<T, CoreError>,
        describe: impl FnOnce(&T, &mut AuditEntry),
    ) -> Result<T, CoreError> {
        match &result {
            Ok(value) => describe(value, &mut entry),
            Err(err) => {
                entry.outcome = Outcome::Error;
                entry.error_code = Some(err.code().to_owned());
            }
        }
        self.audit.append(entry).await?;
        result
    }

    fn input_bytes(input: &SignInput) -> &[u8] {
        match input {
            SignInput::Message(m) | SignInput::Digest(m) => m,
        }
    }

    /// Creates a key with its first version. An empty `chain` means the default provider.
    pub async fn create_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        algorithm: Algorithm,
        chain: Vec<ProviderName>,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_create");
        entry.key = Some(name.to_string());
        let result = self.create_key_unaudited(name, algorithm, chain).await;
        self.audited(entry, result, describe_key).await
    }

    /// Takes a key that already exists in a provider into Custos as version 1 of `name`, by the provider's
    /// reference (for PKCS#11: `label:<text>` or `id:<hex>`).
    pub async fn adopt_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        algorithm: Algorithm,
        provider: Option<ProviderName>,
        reference: &str,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_adopt");
        entry.key = Some(name.to_string());
        entry.subject = Some(reference.chars().take(200).collect());
        let result = self
            .adopt_key_unaudited(name, algorithm, provider, reference)
            .await;
        self.audited(entry, result, describe_key).await
    }

    /// Takes key material made elsewhere into Custos as version 1 of `name`, imported into `provider`
    /// (default: the default provider), which must be able to import. The imported copy's public key
    /// must be the material's.
    pub async fn import_key(
        &self,
        ctx: &RequestContext,
        name: KeyName,
        key: &custos_types::PrivateKey,
        provider: Option<ProviderName>,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_import");
        entry.key = Some(name.to_string());
        let result = async {
            let algorithm = key.algorithm();
            let chain = self.resolve_chain(algorithm, provider.into_iter().collect())?;
            let provider_name = &chain[0];
            let provider = Arc::clone(&self.providers[provider_name]);
            let _guard = self.admin.lock().await;
            self.check_name_free(&name)?;
            let imported = provider
                .import(key, &format!("custos:{name}:v1"))
                .await
                .map_err(|e| match e {
                    ProviderError::NotSupported(why) => CoreError::bad("not_supported", why),
                    other => other.into(),
                })?;
            if imported.public_key != key.public_key() {
                return Err(CoreError::Internal(format!(
                    "provider {provider_name} imported the key as a different public key"
                )));
            }
            let version = VersionRecord {
                version: KeyVersion::FIRST,
                state: VersionState::Current,
                public_key: imported.public_key,
                created_at: Timestamp::now(),
                locations: vec![Location {
                    provider: provider_name.clone(),
                    handle: imported.handle,
                }],
            };
            self.register(name, algorithm, chain, version).await
        }
        .await;
        self.audited(entry, result, describe_key).await
    }

    /// Makes a new version current in every provider of the chain; the previous one stays enabled.
    pub async fn rotate(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_rotate");
        entry.key = Some(name.to_string());
        let result = self.rotate_unaudited(name).await;
        if result.is_ok() {
            self.metrics.rotations.inc();
        }
        self.audited(entry, result, |(key, backup), e| {
            describe_key(key, e);
            e.subject = Some(backup.chars().take(300).collect());
        })
        .await
        .map(|(key, _)| key)
    }

    /// Signs with a key. The signature is returned only after its audit record is durable.
    pub async fn sign(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        request: &SignRequest,
    ) -> Result<SignOutcome, CoreError> {
        let mut entry = ctx.entry("sign");
        entry.key = Some(name.to_string());
        entry.subject = request.sequence.map(|s| format!("sequence {s}"));
        entry.payload_mac = Some(self.audit.mac(Self::input_bytes(&request.input)));
        let result = self.sign_unaudited(name, request).await;
        self.audited(entry, result, |outcome, e| {
            e.version = Some(outcome.version.0);
            e.provider = Some(outcome.provider.to_string());
        })
        .await
    }

    /// Signs many items with one key; each item has its own result, in input order. One audit record
    /// covers the batch: the item count, a MAC over every item, and the first error if any.
    pub async fn sign_batch(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &KeyName,
        items: &[SignRequest],
    ) -> Result<Vec<Result<SignOutcome, CoreError>>, CoreError> {
        let mut entry = ctx.entry("sign_batch");
        entry.key = Some(name.to_string());
        entry.items = u32::try_from(items.len()).ok();
        entry.payload_mac = Some(self.audit.mac(&frame_batch(items)));
        let result = self.sign_batch_unaudited(name, items).await;
        self.audited(entry, result, |results, e| {
            if let Some(Ok(first)) = results.iter().find(|r| r.is_ok()) {
                e.version = Some(first.version.0);
                e.provider = Some(first.provider.to_string());
            }
            if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
                e.outcome = Outcome::Error;
                e.error_code = Some(err.code().to_owned());
            }
        })
        .await
    }

    /// Verifies a signature under one version, or under any version that can verify (current first).
    pub async fn verify(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        request: &VerifyRequest,
    ) -> Result<VerifyOutcome, CoreError> {
        let mut entry = ctx.entry("verify");
        entry.key = Some(name.to_string());
        entry.payload_mac = Some(self.audit.mac(Self::input_bytes(&request.input)));
        let result = self.verify_unaudited(name, request).await;
        self.audited(entry, result, |outcome, e| {
            e.version = outcome.version.map(|v| v.0);
            e.subject = Some(if outcome.valid { "valid" } else { "invalid" }.to_owned());
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_audit::Outcome;
    use custos_provider_soft::{KdfParams, SoftProvider};
    use custos_store::SqliteStore;
    use proptest::prelude::*;

    fn ctx() -> RequestContext {
        RequestContext::system("test")
    }

    async fn manager(dir: &std::path::Path) -> Arc<KeyManager> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir).unwrap());
        let soft: Arc<dyn KeyProvider> = Arc::new(
            SoftProvider::open(
                ProviderName::new("soft").unwrap(),
                Arc::clone(&store),
                &secrecy::SecretString::from("pw".to_owned()),
                KdfParams::default(),
            )
            .await
            .unwrap(),
        );
        let metrics = Arc::new(Metrics::new());
        let audit = AuditLog::open(
            Arc::clone(&store),
            Arc::clone(&soft),
            crate::AuditConfig::default(),
            Arc::clone(&metrics),
        )
        .await
        .unwrap();
        Arc::new(
            KeyManager::load(
                store,
                vec![soft],
                ProviderName::new("soft").unwrap(),
                Limits::default(),
                audit,
                metrics,
            )
            .await
            .unwrap(),
        )
    }

    fn name(n: &str) -> KeyName {
        KeyName::new(n).unwrap()
    }

    fn message(m: &[u8]) -> SignRequest {
        SignRequest {
            input: SignInput::Message(m.to_vec()),
            hash: None,
            version: None,
            sequence: None,
        }
    }

    #[tokio::test]
    async fn sign_verify_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        let key = km
            .create_key(&ctx(), name("k"), Algorithm::Secp256k1, vec![])
            .await
            .unwrap();
        assert_eq!(key.versions.len(), 1);
        assert!(matches!(
            km.create_key(&ctx(), name("k"), Algorithm::Ed25519, vec![])
                .await,
            Err(CoreError::KeyExists(_))
        ));
        let signed = km
            .sign(&ctx(), &name("k"), &message(b"hello"))
            .await
            .unwrap();
        assert_eq!(signed.version, KeyVersion(1));
        assert!(signed.signature.recovery_id().is_some());
        let rotated = km.rotate(&ctx(), &name("k")).await.unwrap();
        assert_eq!(rotated.current().unwrap().version, KeyVersion(2));
        assert_eq!(
            rotated.version(KeyVersion(1)).unwrap().state,
            VersionState::Enabled
        );
        // The old signature still verifies, and says under which version.
        let verify = VerifyRequest {
            input: SignInput::Message(b"hello".to_vec()),
            hash: None,
            signature: signed.signature.raw().to_vec(),
            format: SignatureFormat::Raw,
            version: None,
        };
        let outcome = km.verify(&ctx(), &name("k"), &verify).await.unwrap();
        assert_eq!(
            outcome,
            VerifyOutcome {
                valid: true,
                version: Some(KeyVersion(1))
            }
        );
        // New signatures come from version 2; version 1 still signs when asked for.
        assert_eq!(
            km.sign(&ctx(), &name("k"), &message(b"x"))
                .await
                .unwrap()
                .version,
            KeyVersion(2)
        );
        let mut old = message(b"x");
        old.version = Some(KeyVersion(1));
        assert_eq!(
            km.sign(&ctx(), &name("k"), &old).await.unwrap().version,
            KeyVersion(1)
        );
        old.version = Some(KeyVersion(9));
        assert_eq!(
            km.sign(&ctx(), &name("k"), &old).await.unwrap_err().code(),
            "version_not_found"
        );
        // Keccak and a raw digest give the same signature input.
        let keccak = SignRequest {
            hash: Some(HashAlgorithm::Keccak256),
            ..message(b"eth")
        };
        let digest = SignRequest {
            input: SignInput::Digest(HashAlgorithm::Keccak256.digest(b"eth").to_vec()),
            hash: None,
            version: None,
            sequence: None,
        };
        let a = km.sign(&ctx(), &name("k"), &keccak).await.unwrap();
        let b = km.sign(&ctx(), &name("k"), &digest).await.unwrap();
        assert_eq!(
            a.signature, b.signature,
            "RFC 6979 signing is deterministic"
        );
        let wrong = VerifyRequest {
            input: SignInput::Message(b"other".to_vec()),
            ..verify
        };
        assert!(!km.verify(&ctx(), &name("k"), &wrong).await.unwrap().valid);
    }

    #[tokio::test]
    async fn bad_inputs_have_codes() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        km.create_key(&ctx(), name("ed"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
        km.create_key(&ctx(), name("ec"), Algorithm::P256, vec![])
            .await
            .unwrap();
        let cases = [
            ("ed", message(b""), "empty_message"),
            ("ed", message(&vec![0; 64 * 1024 + 1]), "message_too_large"),
            (
                "ed",
                SignRequest {
                    hash: Some(HashAlgorithm::Sha256),
                    ..message(b"x")
                },
                "not_supported",
            ),
            (
                "ed",
                SignRequest {
                    input: SignInput::Digest(vec![0; 32]),
                    hash: None,
                    version: None,
                    sequence: None,
                },
                "not_supported",
            ),
            (
                "ec",
                SignRequest {
                    input: SignInput::Digest(vec![0; 31]),
                    hash: None,
                    version: None,
                    sequence: None,
                },
                "invalid_digest",
            ),
            ("nope", message(b"x"), "key_not_found"),
        ];
        for (key, request, code) in cases {
            assert_eq!(
                km.sign(&ctx(), &name(key), &request)
                    .await
                    .unwrap_err()
                    .code(),
                code,
                "{key} {request:?}"
            );
        }
        let chain = vec![
            ProviderName::new("soft").unwrap(),
            ProviderName::new("soft").unwrap(),
        ];
        let err = km
            .create_key(&ctx(), name("c"), Algorithm::Ed25519, chain)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "chain_cannot_share");
        let err = km
            .create_key(
                &ctx(),
                name("c"),
                Algorithm::Ed25519,
                vec![ProviderName::new("hsm").unwrap()],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unknown_provider");
        assert!(km
            .list_keys()
            .unwrap()
            .iter()
            .all(|k| k.name.as_str() != "c"));
    }

    #[tokio::test]
    async fn keys_reload_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        let created = km
            .create_key(&ctx(), name("r"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
        km.rotate(&ctx(), &name("r")).await.unwrap();
        drop(km);
        let km = manager(dir.path()).await;
        let loaded = km.key(&name("r")).unwrap();
        assert_eq!(
            loaded.versions[0].public_key,
            created.versions[0].public_key
        );
        assert_eq!(loaded.current().unwrap().version, KeyVersion(2));
        km.sign(&ctx(), &name("r"), &message(b"after reload"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_equivocation_guard_signs_each_sequence_once_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        // secp256k1 in the soft provider is deterministic, so compare payloads, not luck: use p256 via a
        // fresh request each time and check the returned bytes.
        km.create_key(&ctx(), name("seq"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
        let at = |n: u64, m: &[u8]| SignRequest {
            sequence: Some(n),
            ..message(m)
        };
        let first = km
            .sign(&ctx(), &name("seq"), &at(10, b"block 10"))
            .await
            .unwrap();
        // The same payload at the same sequence: the same signature.
        let again = km
            .sign(&ctx(), &name("seq"), &at(10, b"block 10"))
            .await
            .unwrap();
        assert_eq!(again.signature, first.signature);
        // Another payload at the same sequence, or anything below: refused.
        for (n, m) in [
            (10, &b"block 10 (forked)"[..]),
            (9, b"block 9"),
            (3, b"block 10"),
        ] {
            let err = km.sign(&ctx(), &name("seq"), &at(n, m)).await.unwrap_err();
            assert_eq!(err.code(), "equivocation", "{n}");
        }
        km.sign(&ctx(), &name("seq"), &at(11, b"block 11"))
            .await
            .unwrap();
        // Unsequenced signing is not affected; batches refuse sequences.
        km.sign(&ctx(), &name("seq"), &message(b"anything"))
            .await
            .unwrap();
        let err = km
            .sign_batch(&ctx(), &name("seq"), &[at(12, b"x")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "not_supported");
        // Concurrent requests for one new sequence with different payloads: exactly one wins.
        let km = Arc::new(km);
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let km = Arc::clone(&km);
                tokio::spawn(async move { km.sign(&ctx(), &name("seq"), &at(20, &[i; 4])).await })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(err) => assert_eq!(err.code(), "equivocation"),
            }
        }
        assert_eq!(won, 1);
        drop(km);
        // The watermark is durable: after a restart, sequence 20 still holds exactly one payload.
        let km = manager(dir.path()).await;
        let err = km
            .sign(&ctx(), &name("seq"), &at(19, b"late"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "equivocation");
        let records = km
            .audit()
            .query(&custos_store::AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(records
            .iter()
            .any(|r| r.entry.subject.as_deref() == Some("sequence 11")
                && r.entry.outcome == Outcome::Ok));
        assert!(records
            .iter()
            .any(|r| r.entry.error_code.as_deref() == Some("equivocation")));
    }

    /// Known answer: the batch framing is fixed, big-endian lengths on every architecture.
    #[test]
    fn batch_framing_is_pinned() {
        let items = [
            message(b"ab"),
            SignRequest {
                input: SignInput::Digest(vec![0xff; 3]),
                hash: None,
                version: None,
                sequence: None,
            },
        ];
        assert_eq!(
            frame_batch(&items),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, 0xff, 0xff, 0xff]
        );
    }

    #[tokio::test]
    async fn every_operation_is_audited_and_the_export_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        km.create_key(&ctx(), name("a"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
        km.sign(&ctx(), &name("a"), &message(b"one")).await.unwrap();
        km.sign(&ctx(), &name("missing"), &message(b"two"))
            .await
            .unwrap_err();
        km.rotate(&ctx(), &name("a")).await.unwrap();
        let records = km
            .audit()
            .query(&custos_store::AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let ops: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.entry.operation.as_str(),
                    r.entry.outcome,
                    r.entry.error_code.clone(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            [
                ("startup", Outcome::Ok, None),
                ("key_create", Outcome::Ok, None),
                ("sign", Outcome::Ok, None),
                ("sign", Outcome::Error, Some("key_not_found".to_owned())),
                ("key_rotate", Outcome::Ok, None),
            ]
        );
        // The sign record has the MAC of the payload, never the payload.
        assert_eq!(
            records[2].entry.payload_mac.as_deref(),
            Some(km.audit().mac(b"one").as_str())
        );
        assert!(!serde_json::to_string(&records).unwrap().contains("6f6e65"));
        let export = km.audit().export().await.unwrap();
        let report = custos_audit::verify_export(&export, km.audit().public_key()).unwrap();
        assert_eq!(report.records, 5);
        // Editing the export is caught.
        let forged = export.replacen("key_rotate", "key_create", 1);
        assert!(custos_audit::verify_export(&forged, km.audit().public_key()).is_err());
    }

    #[tokio::test]
    async fn a_failed_audit_write_fails_the_signature_closed() {
        let dir = tempfile::tempdir().unwrap();
        let km = manager(dir.path()).await;
        km.create_key(&ctx(), name("a"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
        // Make every audit insert fail, as a full disk would.
        let db = rusqlite::Connection::open(dir.path().join(custos_store::SqliteStore::FILE_NAME))
            .unwrap();
        db.execute_batch("CREATE TRIGGER fail BEFORE INSERT ON audit_log BEGIN SELECT RAISE(FAIL, 'disk full'); END;").unwrap();
        let err = km
            .sign(&ctx(), &name("a"), &message(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "audit_unavailable");
        assert!(!km.audit().is_healthy());
        assert_eq!(km.metrics().audit_write_failures.get(), 1);
        assert_eq!(km.metrics().audit_up.get(), 0);
        db.execute_batch("DROP TRIGGER fail;").unwrap();
        km.sign(&ctx(), &name("a"), &message(b"x")).await.unwrap();
        assert!(km.audit().is_healthy());
        // The chain is intact across the failure.
        let export = km.audit().export().await.unwrap();
        custos_audit::verify_export(&export, km.audit().public_key()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

        /// Every batch result lines up with its input, and bad items fail alone.
        #[test]
        fn batch_results_line_up(lengths in proptest::collection::vec(0usize..40, 1..20)) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let km = manager(dir.path()).await;
                let key = km.create_key(&ctx(), name("b"), Algorithm::Ed25519, vec![]).await.unwrap();
                let items: Vec<_> = lengths.iter().map(|&n| message(&vec![n as u8; n])).collect();
                let results = km.sign_batch(&ctx(), &name("b"), &items).await.unwrap();
                prop_assert_eq!(results.len(), items.len());
                for (n, result) in lengths.iter().zip(results) {
                    if *n == 0 {
                        prop_assert_eq!(result.unwrap_err().code(), "empty_message");
                    } else {
                        let payload = SignPayload::Message(vec![*n as u8; *n]);
                        let sig = result.unwrap().signature;
                        prop_assert!(key.versions[0].public_key.verify(&payload, sig.raw(), SignatureFormat::Raw).is_ok());
                    }
                }
                Ok(())
            })?;
        }

        /// However many rotations, exactly one version is current, in memory and in the store.
        #[test]
        fn exactly_one_current_version(rotations in 0usize..6) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let km = manager(dir.path()).await;
                km.create_key(&ctx(), name("r"), Algorithm::P256, vec![]).await.unwrap();
                for _ in 0..rotations {
                    km.rotate(&ctx(), &name("r")).await.unwrap();
                }
                let stored = km.store.get_key(&name("r")).await.unwrap().unwrap();
                let in_memory = km.key(&name("r")).unwrap();
                prop_assert_eq!(&stored, in_memory.as_ref());
                let current = stored.versions.iter().filter(|v| v.state == VersionState::Current).count();
                prop_assert_eq!(current, 1);
                prop_assert_eq!(stored.versions.len(), rotations + 1);
                Ok(())
            })?;
        }
    }
}

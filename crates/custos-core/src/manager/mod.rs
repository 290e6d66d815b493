//! The key manager: the one place where every surface's request is decided. Each public operation takes
//! the caller's [`RequestContext`], authorises it, applies the key's state and the signing policies, does
//! the work through the components below, and writes its audit record before it returns.
//!
//! The components, each in its own module with no way back up to this one: the registry and the key
//! life cycle (`lifecycle`), the provider chain with retries and verification (`chain`), the equivocation
//! guard (`guard`), the signature cache (`cache`), emergency mode (`emergency`), the policies (`policy`)
//! and rotation (`rotation`). The operations are grouped by area in this module's files: signing
//! (`sign`), keys (`keys`), rotation and the scheduler (`rotate`), the audit log (`audit`), and the
//! records of the compatibility APIs (`records`).

mod audit;
mod keys;
mod records;
mod rotate;
mod sign;

use std::sync::Arc;

use custos_provider::{KeyProvider, ProviderHealth};
use custos_store::Store;
use custos_types::ProviderName;

pub use keys::KeyStateChange;
pub use records::{ClientKeyFormat, ImportParameters, NewClientKey};
pub use rotate::SchedulerHealth;

use crate::cache::SignatureCache;
use crate::chain::ProviderChain;
use crate::emergency::{Emergency, EmergencyPolicy};
use crate::failover::CircuitView;
use crate::guard::Guard;
use crate::lifecycle::Lifecycle;
use crate::registry::Registry;
use crate::rotation::Rotator;
use crate::{
    AuditLog, Clock, CoreError, Events, FailoverConfig, Limits, Metrics, Policies, SystemClock,
};

/// Signatures cached unless configured otherwise.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

/// How a key manager is set up beyond its store, providers and audit log.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Size limits of every request.
    pub limits: Limits,
    /// Failover along provider chains, and emergency mode.
    pub failover: FailoverConfig,
    /// The in-memory provider emergency mode signs with; needed when emergency mode is on.
    pub emergency_provider: Option<Arc<dyn KeyProvider>>,
    /// Signatures cached (0 turns caching off).
    pub cache_size: usize,
    /// Where events go.
    pub events: Events,
    /// Signing policies, asked in order after the emergency restrictions.
    pub policies: Policies,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// A test hook: stop forever at this rotation step (set by the binary from `CUSTOS_PAUSE_AT` in
    /// debug builds only).
    pub pause_at: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            failover: FailoverConfig::default(),
            emergency_provider: None,
            cache_size: DEFAULT_CACHE_SIZE,
            events: Events::none(),
            policies: Policies::none(),
            clock: Arc::new(SystemClock),
            pause_at: None,
        }
    }
}

/// The key manager.
pub struct KeyManager {
    store: Arc<dyn Store>,
    lifecycle: Arc<Lifecycle>,
    chain: Arc<ProviderChain>,
    rotator: Rotator,
    guard: Guard,
    cache: Option<SignatureCache>,
    emergency: Option<Emergency>,
    policies: Policies,
    limits: Limits,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    events: Events,
    clock: Arc<dyn Clock>,
    scheduler: SchedulerHealth,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field(
                "providers",
                &self
                    .chain
                    .all()
                    .map(|p| p.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .field("policies", &self.policies.names())
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// Loads every key from the store. `default_provider` receives keys created without a provider and
    /// seals secrets.
    pub async fn open(
        store: Arc<dyn Store>,
        providers: Vec<Arc<dyn KeyProvider>>,
        default_provider: ProviderName,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Result<KeyManager, CoreError> {
        let Settings {
            limits,
            failover,
            emergency_provider,
            cache_size,
            events,
            policies,
            clock,
            pause_at,
        } = settings;
        let emergency = match (failover.emergency.enabled, emergency_provider) {
            (false, _) => None,
            (true, Some(provider)) => Some(Emergency::new(
                provider,
                Arc::clone(&store),
                Arc::clone(&clock),
            )),
            (true, None) => {
                return Err(CoreError::Internal(
                    "emergency mode is on but no emergency provider was given".into(),
                ))
            }
        };
        let mut all_policies = Policies::none();
        if emergency.is_some() {
            all_policies = all_policies.with(Arc::new(EmergencyPolicy::new(
                failover.emergency.clone(),
                Arc::clone(&store),
                Arc::clone(&clock),
            )));
        }
        for policy in policies.iter() {
            all_policies = all_policies.with(policy);
        }
        let chain = Arc::new(ProviderChain::new(
            providers,
            default_provider,
            failover,
            Arc::clone(&metrics),
            Arc::clone(&audit),
            events.clone(),
        )?);
        let registry = Registry::load(Arc::clone(&store)).await?;
        for key in registry.list()? {
            for location in key.versions.iter().flat_map(|v| &v.locations) {
                if chain.get(&location.provider).is_none() {
                    tracing::warn!(key = %key.name, provider = %location.provider,
                        "a key version lives in a provider that is not configured");
                }
            }
        }
        let lifecycle = Arc::new(Lifecycle {
            store: Arc::clone(&store),
            registry,
            chain: Arc::clone(&chain),
            clock: Arc::clone(&clock),
            admin: tokio::sync::Mutex::new(()),
        });
        Ok(KeyManager {
            rotator: Rotator {
                lifecycle: Arc::clone(&lifecycle),
                events: events.clone(),
                pause_at,
            },
            guard: Guard::start(Arc::clone(&store)),
            cache: SignatureCache::new(cache_size),
            emergency,
            policies: all_policies,
            limits,
            audit,
            metrics,
            events,
            clock,
            scheduler: SchedulerHealth::default(),
            store,
            lifecycle,
            chain,
        })
    }

    fn registry(&self) -> &Registry {
        &self.lifecycle.registry
    }

    /// The event sinks.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The failover settings in force.
    pub fn failover_config(&self) -> &FailoverConfig {
        self.chain.config()
    }

    /// One provider's circuit breaker, for operators.
    pub fn circuit(&self, provider: &ProviderName) -> Option<CircuitView> {
        self.chain.circuit(provider)
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
        self.chain.all()
    }

    /// The provider that holds keys created without a chain, and seals secrets.
    pub fn default_provider(&self) -> &Arc<dyn KeyProvider> {
        self.chain.default_provider()
    }

    /// One provider by name.
    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<dyn KeyProvider>> {
        self.chain.get(name)
    }

    /// Probes every provider.
    pub async fn provider_health(&self) -> Vec<(Arc<dyn KeyProvider>, ProviderHealth)> {
        self.chain.health().await
    }

    /// Checks the store answers.
    pub async fn store_ready(&self) -> Result<(), CoreError> {
        Ok(self.store.ping().await?)
    }

    /// The audit log every operation writes to.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The metrics every operation updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The names of the signing policies in force, in order.
    pub fn policies(&self) -> Vec<String> {
        self.policies.names()
    }

    /// Checks that the caller may do `op`, for reads a surface serves from what core exposes (the
    /// provider list); a refusal is audited as `operation` with outcome `denied`.
    pub async fn authorize(
        &self,
        ctx: &crate::RequestContext,
        op: crate::Operation<'_>,
        operation: &str,
    ) -> Result<(), CoreError> {
        crate::audited::authorize(&self.audit, ctx, op, || ctx.entry(operation)).await
    }

    /// The wall clock core reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

//! The provider chain: the configured providers, and signing along a version's locations in chain order,
//! skipping providers whose circuit is open, retrying retryable errors within the configured budget,
//! moving on after it, and verifying every signature before it is used.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use custos_provider::{DerivationPath, KeyProvider, ProviderError, ProviderHealth};
use custos_types::{
    KeyName, KeyRecord, ProviderName, PublicKey, SignPayload, Signature, SignatureFormat,
    VersionRecord,
};

use crate::failover::{CircuitView, Circuits};
use crate::{
    AuditLog, CoreError, Event, Events, FailoverConfig, Metrics, RequestContext, SignOutcome,
};

/// Why no provider of a chain signed.
#[derive(Debug)]
pub(crate) enum ChainFailure {
    /// A provider answered with an error no other attempt or provider would fix (bad input, refused).
    Permanent(CoreError),
    /// Every provider failed or was skipped; the last error. Emergency mode may step in.
    Exhausted(CoreError),
}

impl From<ChainFailure> for CoreError {
    fn from(failure: ChainFailure) -> CoreError {
        match failure {
            ChainFailure::Permanent(e) | ChainFailure::Exhausted(e) => e,
        }
    }
}

/// The providers and the way a signature is asked of them.
#[derive(Debug)]
pub(crate) struct ProviderChain {
    providers: BTreeMap<ProviderName, Arc<dyn KeyProvider>>,
    default_provider: ProviderName,
    circuits: Circuits,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    events: Events,
    /// Per key, the chain position that signed last, to notice failovers and failbacks.
    last_position: std::sync::Mutex<HashMap<KeyName, usize>>,
}

impl ProviderChain {
    pub(crate) fn new(
        providers: Vec<Arc<dyn KeyProvider>>,
        default_provider: ProviderName,
        config: FailoverConfig,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        events: Events,
    ) -> Result<ProviderChain, CoreError> {
        let providers: BTreeMap<_, _> = providers
            .into_iter()
            .map(|p| (p.name().clone(), p))
            .collect();
        if !providers.contains_key(&default_provider) {
            return Err(CoreError::Internal(format!(
                "the default provider {default_provider} is not configured"
            )));
        }
        if providers
            .keys()
            .any(|p| p.as_str() == crate::EMERGENCY_PROVIDER)
        {
            return Err(CoreError::Internal(format!(
                "the provider name {} is reserved for emergency mode",
                crate::EMERGENCY_PROVIDER
            )));
        }
        let circuits = Circuits::new(config, providers.keys(), &metrics);
        Ok(ProviderChain {
            providers,
            default_provider,
            circuits,
            metrics,
            audit,
            events,
            last_position: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The failover settings in force.
    pub(crate) fn config(&self) -> &FailoverConfig {
        self.circuits.config()
    }

    /// One provider's circuit breaker, for operators.
    pub(crate) fn circuit(&self, provider: &ProviderName) -> Option<CircuitView> {
        self.circuits.view(provider)
    }

    /// Every provider, by name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<dyn KeyProvider>> {
        self.providers.values()
    }

    /// One provider.
    pub(crate) fn get(&self, name: &ProviderName) -> Option<&Arc<dyn KeyProvider>> {
        self.providers.get(name)
    }

    /// The default provider's name.
    pub(crate) fn default_name(&self) -> &ProviderName {
        &self.default_provider
    }

    /// The default provider: keys made without a chain live there, and it seals secrets.
    pub(crate) fn default_provider(&self) -> &Arc<dyn KeyProvider> {
        &self.providers[&self.default_provider]
    }

    /// One provider, or `unknown_provider` listing the configured ones.
    pub(crate) fn require(&self, name: &ProviderName) -> Result<&Arc<dyn KeyProvider>, CoreError> {
        self.providers.get(name).ok_or_else(|| {
            CoreError::bad(
                custos_types::ErrorCode::UnknownProvider,
                format!(
                    "no provider named {name}; configured: {}",
                    self.providers
                        .keys()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Probes every provider.
    pub(crate) async fn health(&self) -> Vec<(Arc<dyn KeyProvider>, ProviderHealth)> {
        let mut out = Vec::with_capacity(self.providers.len());
        for provider in self.providers.values() {
            out.push((Arc::clone(provider), provider.health().await));
        }
        out
    }

    /// Signs `payload` with `version` of `key` along its locations (see the module documentation). On
    /// failure of every provider the last error is returned; the caller decides about emergency mode.
    pub(crate) async fn sign(
        &self,
        key: &KeyRecord,
        version: &VersionRecord,
        payload: &SignPayload,
    ) -> Result<SignOutcome, ChainFailure> {
        let timeout = std::time::Duration::from_millis(self.config().provider_timeout_ms);
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
                tracing::debug!(key = %key.name, provider = %location.provider, "circuit open: skipped");
                last = Some(CoreError::Unavailable(format!(
                    "provider {}'s circuit is open",
                    location.provider
                )));
                continue;
            }
            let (attempts, pause) = self.config().attempts(position);
            for attempt in 0..attempts {
                if attempt > 0 {
                    tracing::debug!(key = %key.name, provider = %location.provider, attempt,
                        pause_ms = pause.as_millis() as u64, "retrying the provider");
                    tokio::time::sleep(pause).await;
                }
                let started = std::time::Instant::now();
                let signed = tokio::time::timeout(
                    timeout,
                    provider.sign(&location.handle, key.algorithm, payload),
                )
                .await
                .unwrap_or(Err(ProviderError::Timeout));
                let elapsed = started.elapsed();
                self.metrics
                    .sign_seconds
                    .with_label_values(&[location.provider.as_str(), key.algorithm.as_str()])
                    .observe(elapsed.as_secs_f64());
                tracing::debug!(key = %key.name, version = %version.version,
                    provider = %location.provider, attempt, ok = signed.is_ok(),
                    elapsed_us = elapsed.as_micros() as u64, "provider sign call");
                let err = match signed {
                    Ok(raw) => match version
                        .public_key
                        .verify(payload, &raw, SignatureFormat::Raw)
                    {
                        Ok(signature) => {
                            self.circuits.success(&location.provider, &self.metrics);
                            self.note_position(key, position, &location.provider).await;
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
                        return Err(ChainFailure::Permanent(err.into()));
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
        Err(ChainFailure::Exhausted(last.unwrap_or_else(|| {
            CoreError::Internal("version has no locations".into())
        })))
    }

    /// Signs `digest` with the child of a BIP32 master derived along `path`, and verifies the signature
    /// under `expected` (the child public key the caller's transaction names) before returning it.
    pub(crate) async fn sign_derived(
        &self,
        version: &VersionRecord,
        path: &DerivationPath,
        digest: &[u8; 32],
        expected: &PublicKey,
    ) -> Result<(ProviderName, Signature), CoreError> {
        let payload = SignPayload::Digest(*digest);
        let mut last = None;
        for location in &version.locations {
            let Some(provider) = self.providers.get(&location.provider) else {
                continue;
            };
            match provider.sign_derived(&location.handle, path, digest).await {
                Ok(raw) => {
                    let signature = expected
                        .verify(&payload, &raw, SignatureFormat::Raw)
                        .map_err(|_| {
                            CoreError::bad(
                                custos_types::ErrorCode::InvalidPublicKey,
                                "the key derived along the path is not the public key the request names",
                            )
                        })?;
                    return Ok((location.provider.clone(), signature));
                }
                Err(e) if e.is_retryable() => last = Some(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| CoreError::Unavailable("no provider holds the key".into())))
    }

    /// Notices a switch of a key's signing to another chain position: logged, counted, written to the
    /// audit log and sent as an event.
    async fn note_position(&self, key: &KeyRecord, position: usize, provider: &ProviderName) {
        let previous = {
            let mut last = self.last_position.lock().unwrap_or_else(|p| p.into_inner());
            // The hot path: the same position as last time, with no allocation.
            match last.get_mut(&key.name) {
                Some(p) if *p == position => return,
                Some(p) => Some(std::mem::replace(p, position)),
                None => last.insert(key.name.clone(), position),
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
        let from = key
            .providers
            .get(previous)
            .map(|p| p.to_string())
            .unwrap_or_default();
        tracing::warn!(key = %key.name, %from, to = %provider, direction, "provider switch");
        if position > previous {
            self.metrics.failovers.inc();
        } else {
            self.metrics.failbacks.inc();
        }
        self.circuits.switched_to(provider);
        let mut entry = RequestContext::system("failover").entry("provider_switch");
        entry.key = Some(key.name.to_string());
        entry.provider = Some(provider.to_string());
        entry.subject = Some(format!("{direction} from {from}"));
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "cannot write the provider switch to the audit log");
        }
        self.events.emit(Event::ProviderSwitch {
            key: key.name.to_string(),
            from,
            to: provider.to_string(),
            direction: direction.into(),
        });
    }
}

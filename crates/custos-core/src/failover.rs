//! Failover settings and the per-provider circuit breaker that decides which provider of a chain to ask.
//!
//! A provider's circuit is closed while it works. After `breaker_failures` retryable failures in a row it
//! opens: requests skip it and go to the next provider at once, so only the first requests after a
//! provider dies pay the retry budget. After `breaker_open_ms` one request is let through as a half-open
//! probe; success closes the circuit again, which is how signing fails back to the primary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can pause and advance time instead of sleeping.
use tokio::time::Instant;

use custos_types::ProviderName;
use serde::{Deserialize, Serialize};

use crate::Metrics;

/// How the sign path moves along a key's provider chain. Each setting also takes the seed's camelCase
/// name (`primaryRetryIntervalMs`, `maxPrimaryRetries`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Pause between attempts on the primary.
    #[serde(alias = "primaryRetryIntervalMs")]
    pub primary_retry_interval_ms: u64,
    /// Extra attempts on the primary after a retryable error (0: move on at once).
    #[serde(alias = "maxPrimaryRetries")]
    pub max_primary_retries: u32,
    /// Pause between attempts on each later provider of the chain.
    #[serde(alias = "secondaryRetryIntervalMs")]
    pub secondary_retry_interval_ms: u64,
    /// Extra attempts on each later provider.
    #[serde(alias = "maxSecondaryRetries")]
    pub max_secondary_retries: u32,
    /// The longest one provider call may take before it counts as a retryable failure.
    #[serde(alias = "providerTimeoutMs")]
    pub provider_timeout_ms: u64,
    /// Retryable failures in a row that open a provider's circuit.
    #[serde(alias = "breakerFailures")]
    pub breaker_failures: u32,
    /// How long an open circuit skips the provider before one probe request is let through.
    #[serde(alias = "breakerOpenMs")]
    pub breaker_open_ms: u64,
    /// Emergency mode: what happens when every provider of a chain has failed.
    pub emergency: EmergencyConfig,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            primary_retry_interval_ms: 50,
            max_primary_retries: 2,
            secondary_retry_interval_ms: 100,
            max_secondary_retries: 2,
            provider_timeout_ms: 2_000,
            breaker_failures: 3,
            breaker_open_ms: 5_000,
            emergency: EmergencyConfig::default(),
        }
    }
}

impl FailoverConfig {
    /// Attempts and pause for the provider at `position` in a chain (0 is the primary).
    pub(crate) fn attempts(&self, position: usize) -> (u32, Duration) {
        if position == 0 {
            (
                self.max_primary_retries + 1,
                Duration::from_millis(self.primary_retry_interval_ms),
            )
        } else {
            (
                self.max_secondary_retries + 1,
                Duration::from_millis(self.secondary_retry_interval_ms),
            )
        }
    }

    /// The most time a request can spend on the provider at `position` before moving on.
    pub fn retry_budget(&self, position: usize) -> Duration {
        let (attempts, pause) = self.attempts(position);
        Duration::from_millis(self.provider_timeout_ms) * attempts + pause * (attempts - 1)
    }
}

/// Emergency mode: an ephemeral in-memory key signs when every provider of the chain has failed. It is a
/// different key (a different identity), marked as such in every answer, and never persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmergencyConfig {
    /// Off unless turned on.
    pub enabled: bool,
    /// Emergency signatures allowed per key, ever (counted across restarts).
    #[serde(alias = "maxTransactions")]
    pub max_transactions: u64,
    /// Seconds after a key's first emergency signature during which emergency signing is allowed.
    #[serde(alias = "maxTimeSeconds")]
    pub max_time_seconds: u64,
    /// Operations allowed in emergency mode: `sign`, `sign_batch`.
    #[serde(alias = "allowedOperations")]
    pub allowed_operations: Vec<String>,
}

impl Default for EmergencyConfig {
    fn default() -> Self {
        EmergencyConfig {
            enabled: false,
            max_transactions: 1000,
            max_time_seconds: 3600,
            allowed_operations: vec!["sign".into()],
        }
    }
}

/// A circuit's state, as shown to operators and in the `circuit_state` metric (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// The provider is used.
    Closed,
    /// The provider is skipped.
    Open,
    /// One probe request is in flight.
    HalfOpen,
}

impl CircuitState {
    fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: CircuitState,
    failures: u32,
    opened_at: Option<Instant>,
    /// Signatures this provider made after another provider of a chain had been used: failovers to it
    /// and failbacks to it.
    switches_to: u64,
    last_error: Option<String>,
}

/// What operators see of one provider's circuit.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitView {
    /// Closed, open or half-open.
    pub state: CircuitState,
    /// Retryable failures in a row.
    pub consecutive_failures: u32,
    /// Times signing switched to this provider from another.
    pub switches_to: u64,
    /// The last error seen (not secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Every provider's circuit breaker.
#[derive(Debug)]
pub(crate) struct Circuits {
    config: FailoverConfig,
    breakers: Mutex<BTreeMap<ProviderName, Breaker>>,
}

impl Circuits {
    pub(crate) fn new<'a>(
        config: FailoverConfig,
        providers: impl Iterator<Item = &'a ProviderName>,
        metrics: &Metrics,
    ) -> Circuits {
        let breakers = providers
            .map(|name| {
                metrics
                    .circuit_state
                    .with_label_values(&[name.as_str()])
                    .set(0);
                (
                    name.clone(),
                    Breaker {
                        state: CircuitState::Closed,
                        failures: 0,
                        opened_at: None,
                        switches_to: 0,
                        last_error: None,
                    },
                )
            })
            .collect();
        Circuits {
            config,
            breakers: Mutex::new(breakers),
        }
    }

    pub(crate) fn config(&self) -> &FailoverConfig {
        &self.config
    }

    fn with<T>(&self, name: &ProviderName, f: impl FnOnce(&mut Breaker) -> T) -> Option<T> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.get_mut(name).map(f)
    }

    /// Whether a request may ask this provider now. An open circuit past its cool-down lets exactly one
    /// request through (half-open).
    pub(crate) fn allow(&self, name: &ProviderName, metrics: &Metrics) -> bool {
        let open_for = Duration::from_millis(self.config.breaker_open_ms);
        self.with(name, |b| match b.state {
            CircuitState::Closed => true,
            CircuitState::HalfOpen => false,
            CircuitState::Open => {
                if b.opened_at.is_some_and(|at| at.elapsed() >= open_for) {
                    b.state = CircuitState::HalfOpen;
                    metrics
                        .circuit_state
                        .with_label_values(&[name.as_str()])
                        .set(b.state.gauge());
                    tracing::info!(provider = %name, "circuit half-open: probing the provider");
                    true
                } else {
                    false
                }
            }
        })
        .unwrap_or(true)
    }

    /// Records a success: the circuit closes.
    pub(crate) fn success(&self, name: &ProviderName, metrics: &Metrics) {
        self.with(name, |b| {
            if b.state != CircuitState::Closed {
                tracing::info!(provider = %name, "circuit closed: the provider works again");
            }
            b.state = CircuitState::Closed;
            b.failures = 0;
            b.opened_at = None;
            metrics
                .circuit_state
                .with_label_values(&[name.as_str()])
                .set(0);
        });
    }

    /// Records a retryable failure; returns whether the circuit is now open.
    pub(crate) fn failure(&self, name: &ProviderName, error: &str, metrics: &Metrics) -> bool {
        let threshold = self.config.breaker_failures.max(1);
        self.with(name, |b| {
            b.failures = b.failures.saturating_add(1);
            b.last_error = Some(error.to_owned());
            if b.state == CircuitState::HalfOpen || b.failures >= threshold {
                if b.state != CircuitState::Open {
                    tracing::warn!(provider = %name, failures = b.failures, error,
                        "circuit open: skipping the provider");
                }
                b.state = CircuitState::Open;
                b.opened_at = Some(Instant::now());
                metrics
                    .circuit_state
                    .with_label_values(&[name.as_str()])
                    .set(1);
            }
            b.state == CircuitState::Open
        })
        .unwrap_or(false)
    }

    /// Counts a switch of signing to this provider.
    pub(crate) fn switched_to(&self, name: &ProviderName) {
        self.with(name, |b| b.switches_to += 1);
    }

    /// One provider's circuit, for operators.
    pub(crate) fn view(&self, name: &ProviderName) -> Option<CircuitView> {
        self.with(name, |b| CircuitView {
            state: b.state,
            consecutive_failures: b.failures,
            switches_to: b.switches_to,
            last_error: b.last_error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opens_after_the_threshold_probes_once_and_closes_on_success() {
        let metrics = Metrics::new();
        let name = ProviderName::new("hsm").unwrap();
        let config = FailoverConfig {
            breaker_failures: 2,
            breaker_open_ms: 30,
            ..FailoverConfig::default()
        };
        let circuits = Circuits::new(config, [&name].into_iter(), &metrics);
        assert!(circuits.allow(&name, &metrics));
        assert!(!circuits.failure(&name, "down", &metrics));
        assert!(circuits.failure(&name, "down", &metrics));
        assert!(!circuits.allow(&name, &metrics), "open skips");
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            circuits.allow(&name, &metrics),
            "one probe after the cool-down"
        );
        assert!(!circuits.allow(&name, &metrics), "only one probe at a time");
        assert!(
            circuits.failure(&name, "still down", &metrics),
            "a failed probe reopens"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(circuits.allow(&name, &metrics));
        circuits.success(&name, &metrics);
        assert_eq!(circuits.view(&name).unwrap().state, CircuitState::Closed);
        assert!(circuits.allow(&name, &metrics));
    }

    #[test]
    fn the_retry_budget_counts_every_attempt_and_pause() {
        let config = FailoverConfig {
            provider_timeout_ms: 100,
            max_primary_retries: 2,
            primary_retry_interval_ms: 10,
            ..FailoverConfig::default()
        };
        assert_eq!(config.retry_budget(0), Duration::from_millis(320));
    }
}

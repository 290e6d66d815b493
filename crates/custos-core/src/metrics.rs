//! Prometheus metrics: what Custos counts and measures, rendered in the text exposition format.
#![expect(
    clippy::expect_used,
    reason = "every metric has a fixed, unique, valid name, so creating and registering one cannot fail"
)]

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric Custos exports. Cheap to update from any task.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template and status code.
    pub requests: IntCounterVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Sign latency through the provider chain, by provider and algorithm.
    pub sign_seconds: HistogramVec,
    /// Provider health (1 up, 0 down), by provider.
    pub provider_up: IntGaugeVec,
    /// Circuit-breaker state by provider (0 closed, 1 open, 2 half-open).
    pub circuit_state: IntGaugeVec,
    /// Switches of a key's signing to a later provider of its chain.
    pub failovers: IntCounter,
    /// Switches of a key's signing back to an earlier provider of its chain.
    pub failbacks: IntCounter,
    /// Signatures made by an emergency key.
    pub emergency_signatures: IntCounter,
    /// Signature cache hits and misses.
    pub cache_hits: IntCounter,
    /// Signature cache misses.
    pub cache_misses: IntCounter,
    /// Key rotations.
    pub rotations: IntCounter,
    /// Audit batch write latency.
    pub audit_write_seconds: Histogram,
    /// Failed audit writes (alert on any).
    pub audit_write_failures: IntCounter,
    /// Audit records written.
    pub audit_records: IntCounter,
    /// Audit checkpoints signed.
    pub audit_checkpoints: IntCounter,
    /// 1 while the audit log can be written, 0 while it cannot (and Custos refuses to sign).
    pub audit_up: IntGauge,
    /// Requests refused for a missing or bad token.
    pub auth_failures: IntCounter,
    /// Requests refused by a rate limit, by token.
    pub rate_limited: IntCounter,
    /// Rotation scheduler passes that failed (an error or a panic).
    pub scheduler_failures: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("metric names are fixed and unique");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are fixed and unique");
    metric
}

impl Metrics {
    /// Creates and registers every metric. Names are fixed and unique, so registration cannot fail.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("custos".into()), None)
            .expect("metric names are fixed and unique");
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are fixed and unique")
        };
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(requests.clone()));
        let in_flight = IntGauge::new("http_requests_in_flight", "HTTP requests being served")
            .expect("metric names are fixed and unique");
        reg(Box::new(in_flight.clone()));
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let sign_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sign_duration_seconds",
                "Signing latency through the provider chain",
            )
            .buckets(buckets.clone()),
            &["provider", "algorithm"],
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(sign_seconds.clone()));
        let provider_up = IntGaugeVec::new(
            Opts::new("provider_up", "Provider health (1 up, 0 down)"),
            &["provider", "kind"],
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(provider_up.clone()));
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "provider_circuit_state",
                "Circuit breaker (0 closed, 1 open, 2 half-open)",
            ),
            &["provider"],
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(circuit_state.clone()));
        let audit_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "audit_write_duration_seconds",
                "Audit batch write latency (one fsync per batch)",
            )
            .buckets(buckets),
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(audit_write_seconds.clone()));
        let audit_up = IntGauge::new(
            "audit_up",
            "1 while the audit log can be written; 0 means Custos refuses to sign",
        )
        .expect("metric names are fixed and unique");
        reg(Box::new(audit_up.clone()));
        audit_up.set(1);
        Metrics {
            scheduler_failures: counter(
                &registry,
                "scheduler_failures_total",
                "Rotation scheduler passes that failed (an error or a panic); the next pass runs as usual",
            ),
            failovers: counter(
                &registry,
                "failovers_total",
                "Switches of a key's signing to a later provider of its chain",
            ),
            failbacks: counter(
                &registry,
                "failbacks_total",
                "Switches of a key's signing back to an earlier provider of its chain",
            ),
            emergency_signatures: counter(
                &registry,
                "emergency_signatures_total",
                "Signatures made by an emergency key",
            ),
            cache_hits: counter(
                &registry,
                "signature_cache_hits_total",
                "Signature cache hits",
            ),
            cache_misses: counter(
                &registry,
                "signature_cache_misses_total",
                "Signature cache misses",
            ),
            rotations: counter(&registry, "rotations_total", "Key rotations"),
            audit_write_failures: counter(
                &registry,
                "audit_write_failures_total",
                "Failed audit writes",
            ),
            audit_records: counter(&registry, "audit_records_total", "Audit records written"),
            audit_checkpoints: counter(
                &registry,
                "audit_checkpoints_total",
                "Audit checkpoints signed",
            ),
            auth_failures: counter(
                &registry,
                "auth_failures_total",
                "Requests refused for a missing or bad token",
            ),
            rate_limited: counter(
                &registry,
                "rate_limited_total",
                "Requests refused by a rate limit",
            ),
            requests,
            in_flight,
            sign_seconds,
            provider_up,
            circuit_state,
            audit_write_seconds,
            audit_up,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

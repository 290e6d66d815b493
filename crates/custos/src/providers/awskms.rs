//! The AWS KMS factory: the region and endpoint, with credentials from the standard AWS chain
//! (environment, profile, instance role), and the request limits in front of every call.

use std::sync::Arc;

use anyhow::bail;
use async_trait::async_trait;
use custos_provider::KeyProvider;
use custos_provider_awskms::{KmsLimits, KmsProvider};
use custos_types::ProviderName;
use serde::Deserialize;

use super::{settings, BuildEnv, ProviderFactory};

/// `type = "awskms"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The region (default: from the AWS chain).
    #[serde(default)]
    region: Option<String>,
    /// An endpoint override (a VPC endpoint, or an emulator).
    #[serde(default)]
    endpoint: Option<String>,
    /// Request limits; unset fields keep the provider's defaults.
    #[serde(default)]
    limits: Limits,
}

/// `limits = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    /// Sustained requests per second (keep below the account's KMS quota).
    requests_per_second: Option<u32>,
    /// Requests allowed at once above the sustained rate.
    burst: Option<u32>,
    /// Requests in flight at once.
    max_concurrency: Option<usize>,
    /// Milliseconds a request may wait for its turn before failing as throttled.
    max_wait_ms: Option<u64>,
    /// Attempts per request (throttling and transient errors are retried with backoff).
    max_attempts: Option<u32>,
}

pub(super) struct Awskms;

#[async_trait]
impl ProviderFactory for Awskms {
    fn kind(&self) -> &'static str {
        "awskms"
    }

    fn check(&self, table: &toml::Table) -> anyhow::Result<()> {
        settings::<Settings>(table).map(|_| ())
    }

    async fn build(
        &self,
        name: ProviderName,
        table: &toml::Table,
        _env: &BuildEnv<'_>,
    ) -> anyhow::Result<Arc<dyn KeyProvider>> {
        let settings: Settings = settings(table)?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = settings.region {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(endpoint) = settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            bail!("provider {name}: no AWS region: set `region` in the config or AWS_REGION");
        }
        let defaults = KmsLimits::default();
        let limits = settings.limits;
        let limits = KmsLimits {
            requests_per_second: limits
                .requests_per_second
                .unwrap_or(defaults.requests_per_second),
            burst: limits.burst.unwrap_or(defaults.burst),
            max_concurrency: limits.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_wait: limits
                .max_wait_ms
                .map_or(defaults.max_wait, std::time::Duration::from_millis),
            max_attempts: limits.max_attempts.unwrap_or(defaults.max_attempts),
        };
        Ok(Arc::new(KmsProvider::new(name, &sdk, limits)))
    }
}

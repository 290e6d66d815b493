//! The software keystore's factory: sealed with the master password, kept in the data directory's store.

use std::sync::Arc;

use async_trait::async_trait;
use custos_provider::{KeyProvider, ProviderError};
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_types::ProviderName;
use serde::Deserialize;

use super::{settings, BuildEnv, ProviderFactory};

/// `type = "soft"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Argon2id cost for a new keystore.
    #[serde(default)]
    kdf: Option<KdfParams>,
}

pub(super) struct Soft;

#[async_trait]
impl ProviderFactory for Soft {
    fn kind(&self) -> &'static str {
        "soft"
    }

    fn check(&self, table: &toml::Table) -> anyhow::Result<()> {
        settings::<Settings>(table).map(|_| ())
    }

    async fn build(
        &self,
        name: ProviderName,
        table: &toml::Table,
        env: &BuildEnv<'_>,
    ) -> anyhow::Result<Arc<dyn KeyProvider>> {
        let Settings { kdf } = settings(table)?;
        let soft = SoftProvider::open(
            name.clone(),
            Arc::clone(env.store),
            env.password,
            kdf.unwrap_or_default(),
        )
        .await
        .map_err(|e| match e {
            ProviderError::Locked(_) => anyhow::anyhow!(
                "{e}. Nothing was changed. Check CUSTOS_MASTER_PASSWORD (or the master_password \
                 reference in the config)."
            ),
            other => anyhow::anyhow!("cannot open provider {name}: {other}"),
        })?;
        Ok(Arc::new(soft))
    }
}

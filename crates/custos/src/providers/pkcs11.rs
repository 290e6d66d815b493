//! The PKCS#11 factory: an HSM's module, its token (by label or slot), the PIN as a secret reference.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use custos_provider::KeyProvider;
use custos_provider_pkcs11::{Pkcs11Config, Pkcs11Provider, TokenRef};
use custos_types::ProviderName;
use serde::Deserialize;

use super::{settings, BuildEnv, ProviderFactory};
use crate::config::SecretRef;

/// `type = "pkcs11"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The PKCS#11 module (shared library).
    module: PathBuf,
    /// The token's label (recommended), or `slot`.
    #[serde(default)]
    token_label: Option<String>,
    /// The slot id, when the token has no stable label.
    #[serde(default)]
    slot: Option<u64>,
    /// The user PIN, as a secret reference.
    pin: SecretRef,
    /// The most concurrent sessions (default 4).
    #[serde(default)]
    sessions: Option<usize>,
}

pub(super) struct Pkcs11;

fn token(settings: &Settings) -> anyhow::Result<TokenRef> {
    match (&settings.token_label, settings.slot) {
        (Some(label), None) => Ok(TokenRef::Label(label.clone())),
        (None, Some(slot)) => Ok(TokenRef::Slot(slot)),
        _ => bail!("give exactly one of token_label and slot"),
    }
}

#[async_trait]
impl ProviderFactory for Pkcs11 {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn check(&self, table: &toml::Table) -> anyhow::Result<()> {
        token(&settings::<Settings>(table)?).map(|_| ())
    }

    async fn build(
        &self,
        name: ProviderName,
        table: &toml::Table,
        _env: &BuildEnv<'_>,
    ) -> anyhow::Result<Arc<dyn KeyProvider>> {
        let settings: Settings = settings(table)?;
        let config = Pkcs11Config {
            module: settings.module.clone(),
            token: token(&settings).with_context(|| format!("provider {name}"))?,
            pin: settings
                .pin
                .read()
                .with_context(|| format!("provider {name}: cannot read the PIN"))?,
            sessions: settings.sessions.unwrap_or(4),
        };
        let provider = Pkcs11Provider::new(name.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot open PKCS#11 provider {name}: {e}"))?;
        Ok(Arc::new(provider))
    }
}

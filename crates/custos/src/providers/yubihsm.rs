//! The YubiHSM2 factory: `yubihsm-connector`'s URL, an authentication key and its password reference.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use custos_provider::KeyProvider;
use custos_provider_yubihsm::{YubiHsmConfig, YubiHsmProvider};
use custos_types::ProviderName;
use serde::Deserialize;

use super::{settings, BuildEnv, ProviderFactory};
use crate::config::SecretRef;

/// `type = "yubihsm"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The connector's URL (default `http://127.0.0.1:12345`).
    #[serde(default = "default_connector")]
    connector: String,
    /// The authentication key's object id.
    auth_key_id: u16,
    /// The authentication key's password, as a secret reference.
    password: SecretRef,
    /// The domain new keys belong to (1-16; default 1).
    #[serde(default = "default_domain")]
    domain: u8,
}

fn default_connector() -> String {
    "http://127.0.0.1:12345".into()
}

fn default_domain() -> u8 {
    1
}

/// The host and port of `http://HOST:PORT`.
fn host_port(connector: &str) -> anyhow::Result<(String, u16)> {
    connector
        .strip_prefix("http://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
        .context("connector must look like http://HOST:PORT")
}

pub(super) struct Yubihsm;

#[async_trait]
impl ProviderFactory for Yubihsm {
    fn kind(&self) -> &'static str {
        "yubihsm"
    }

    fn check(&self, table: &toml::Table) -> anyhow::Result<()> {
        let settings: Settings = settings(table)?;
        if !(1..=16).contains(&settings.domain) {
            anyhow::bail!("domain must be between 1 and 16");
        }
        Ok(())
    }

    async fn build(
        &self,
        name: ProviderName,
        table: &toml::Table,
        _env: &BuildEnv<'_>,
    ) -> anyhow::Result<Arc<dyn KeyProvider>> {
        let settings: Settings = settings(table)?;
        let (addr, port) =
            host_port(&settings.connector).with_context(|| format!("provider {name}"))?;
        let http = yubihsm::HttpConfig {
            addr,
            port,
            timeout_ms: 5000,
        };
        let config = YubiHsmConfig {
            auth_key_id: settings.auth_key_id,
            password: settings
                .password
                .read()
                .with_context(|| format!("provider {name}: cannot read the password"))?,
            domain: settings.domain,
        };
        let provider = YubiHsmProvider::new(name.clone(), yubihsm::Connector::http(&http), config)
            .map_err(|e| anyhow::anyhow!("cannot open YubiHSM provider {name}: {e}"))?;
        Ok(Arc::new(provider))
    }
}

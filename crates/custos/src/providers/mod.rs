//! The provider factories, one per provider family, registered in one list keyed by `type`: each reads
//! its own settings (refusing fields it does not know) and builds its provider. A family compiled out of
//! this build (its cargo feature off) is named, with the feature that brings it back.

mod soft;

#[cfg(feature = "awskms")]
mod awskms;
#[cfg(feature = "pkcs11")]
mod pkcs11;
#[cfg(feature = "yubihsm")]
mod yubihsm;

use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_trait::async_trait;
use custos_provider::KeyProvider;
use custos_store::Store;
use custos_types::ProviderName;
use secrecy::SecretString;
use serde::de::DeserializeOwned;

/// What a factory may need beyond its settings.
pub struct BuildEnv<'a> {
    /// The data directory's store (the software keystore keeps its sealed keys there).
    pub store: &'a Arc<dyn Store>,
    /// The master password.
    pub password: &'a SecretString,
}

/// Builds the providers of one family.
#[async_trait]
pub trait ProviderFactory: Sync {
    /// The `type` it answers to.
    fn kind(&self) -> &'static str;

    /// Checks the settings without building anything (at config load).
    fn check(&self, settings: &toml::Table) -> anyhow::Result<()>;

    /// Builds one provider.
    async fn build(
        &self,
        name: ProviderName,
        settings: &toml::Table,
        env: &BuildEnv<'_>,
    ) -> anyhow::Result<Arc<dyn KeyProvider>>;
}

/// Every factory in this build.
fn factories() -> Vec<&'static dyn ProviderFactory> {
    vec![
        &soft::Soft,
        #[cfg(feature = "pkcs11")]
        &pkcs11::Pkcs11,
        #[cfg(feature = "yubihsm")]
        &yubihsm::Yubihsm,
        #[cfg(feature = "awskms")]
        &awskms::Awskms,
    ]
}

/// Families a build may leave out, and the cargo feature that brings each in.
const FEATURES: &[(&str, &str)] = &[
    ("pkcs11", "pkcs11"),
    ("yubihsm", "yubihsm"),
    ("awskms", "awskms"),
];

fn factory(kind: &str) -> anyhow::Result<&'static dyn ProviderFactory> {
    if let Some(factory) = factories().into_iter().find(|f| f.kind() == kind) {
        return Ok(factory);
    }
    if let Some((_, feature)) = FEATURES.iter().find(|(k, _)| *k == kind) {
        return Err(anyhow!(
            "this build of custos has no {kind} support: build it with the cargo feature `{feature}`"
        ));
    }
    Err(anyhow!(
        "unknown provider type {kind:?}; known: {}",
        factories()
            .iter()
            .map(|f| f.kind())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Checks one provider's settings.
pub fn check(kind: &str, settings: &toml::Table) -> anyhow::Result<()> {
    factory(kind)?.check(settings)
}

/// Builds one provider.
pub async fn build(
    kind: &str,
    name: ProviderName,
    settings: &toml::Table,
    env: &BuildEnv<'_>,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    factory(kind)?.build(name, settings, env).await
}

/// A factory's typed settings from the table (unknown fields refused by the type).
pub(crate) fn settings<T: DeserializeOwned>(table: &toml::Table) -> anyhow::Result<T> {
    toml::Value::Table(table.clone())
        .try_into()
        .context("invalid provider settings")
}

//! The Custos `Store` trait: the only way Custos reads or writes state; SQLite is the embedded default.
//!
//! Keys, their versions and where each version lives; API tokens (hashes only); sealed key material of the
//! software provider; small named settings. Every write that touches more than one row is one transaction.

mod error;
mod records;
mod sqlite;

use async_trait::async_trait;
use custos_types::{KeyHandle, KeyName, KeyVersion, ProviderName, VersionState};

pub use error::StoreError;
pub use records::{KeyRecord, Location, SealedKey, TokenRecord, VersionRecord};
pub use sqlite::SqliteStore;

/// Durable state behind Custos. Implementations are safe to share between tasks.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Checks the store can be read and written.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a key with its first version(s). [`StoreError::Conflict`] if the name is taken.
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;

    /// Adds `version` as the new current version of `name` and moves the previous current version to
    /// `previous_state`, in one transaction. The new version number must be one above the highest.
    async fn add_current_version(
        &self,
        name: &KeyName,
        version: &VersionRecord,
        previous_state: VersionState,
    ) -> Result<(), StoreError>;

    /// Sets the state of one version (not to or from `current`; use `add_current_version` for that).
    async fn set_version_state(
        &self,
        name: &KeyName,
        version: KeyVersion,
        state: VersionState,
    ) -> Result<(), StoreError>;

    /// One key with all its versions, or `None`.
    async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError>;

    /// All keys, ordered by name.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Stores a new API token record. [`StoreError::Conflict`] if the id exists.
    async fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// All token records.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Stores sealed (encrypted) key material for a provider. [`StoreError::Conflict`] if it exists.
    async fn put_sealed_key(&self, key: &SealedKey) -> Result<(), StoreError>;

    /// All sealed key material of one provider.
    async fn list_sealed_keys(&self, provider: &ProviderName)
        -> Result<Vec<SealedKey>, StoreError>;

    /// One sealed key, or `None`.
    async fn get_sealed_key(
        &self,
        provider: &ProviderName,
        handle: &KeyHandle,
    ) -> Result<Option<SealedKey>, StoreError>;

    /// A named setting (for example a keystore header), or `None`.
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a named setting only if it does not exist yet; returns whether it was written.
    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError>;
}

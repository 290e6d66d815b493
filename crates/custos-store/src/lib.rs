//! The Custos store: role traits for every kind of durable state, and SQLite as the embedded default.
//!
//! Each role trait holds one kind of state: keys and their versions, tokens, sealed key material, small
//! named settings, the audit log, the equivocation guard's watermarks, leases, and the records of the
//! compatibility APIs (aliases, sealing keys, pending imports, client-named keys). [`Store`] is all of
//! them together; a component that needs one role can take just that trait. Every write that touches
//! more than one row is one transaction. Behind the `conformance` feature, [`conformance`] is the suite
//! every store implementation runs.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use custos_audit::{AuditQuery, AuditRecord, Checkpoint, Head};
use custos_types::{
    AliasRecord, ClientKeyRecord, ImportRecord, ImportWrapping, KeyHandle, KeyName, KeyRecord,
    KeyState, KeyVersion, ProviderName, SealedKey, SealingKeyRecord, Timestamp, TokenRecord,
    VersionRecord, VersionState, Watermark,
};

pub use error::StoreError;
pub use sqlite::SqliteStore;

/// Keys, their versions and where each version lives; key state, description and tags.
#[async_trait]
pub trait KeyStore: Send + Sync {
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

    /// Sets a key's state. Destroying a key also destroys every version, in the same transaction.
    /// [`StoreError::NotFound`] if there is no such key.
    async fn set_key_state(&self, name: &KeyName, state: KeyState) -> Result<(), StoreError>;

    /// Sets a key's description.
    async fn set_key_description(
        &self,
        name: &KeyName,
        description: &str,
    ) -> Result<(), StoreError>;

    /// One key with all its versions, or `None`.
    async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError>;

    /// All keys, ordered by name.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// The tags of a key (or sealing key) id.
    async fn tags(&self, id: &str) -> Result<BTreeMap<String, String>, StoreError>;

    /// Sets the tags in `set` and removes those in `remove`, in one transaction.
    async fn update_tags(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), StoreError>;
}

/// API tokens (hashes only).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new API token record. [`StoreError::Conflict`] if the id exists.
    async fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// All token records.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Marks a token revoked at `at`. [`StoreError::NotFound`] if there is no such token.
    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;

    /// Records when tokens were last used.
    async fn touch_tokens(&self, uses: &[(String, Timestamp)]) -> Result<(), StoreError>;
}

/// Sealed (encrypted) key material of the software provider.
#[async_trait]
pub trait SealedKeyStore: Send + Sync {
    /// Stores sealed key material for a provider. [`StoreError::Conflict`] if it exists.
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
}

/// Small named settings (a keystore header, rotation policies and jobs, emergency counters).
#[async_trait]
pub trait SettingStore: Send + Sync {
    /// A named setting, or `None`.
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a named setting only if it does not exist yet; returns whether it was written.
    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError>;

    /// Writes a named setting, replacing any earlier value.
    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Removes a named setting (nothing happens if there is none).
    async fn delete_setting(&self, name: &str) -> Result<(), StoreError>;

    /// Every setting whose name starts with `prefix`, ordered by name.
    async fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// The audit log and its checkpoints.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends audit records durably, all in one transaction (one fsync for the whole batch). They must
    /// continue the chain from [`AuditStore::audit_head`].
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// The audit chain's head (sequence number and hash of the last record).
    async fn audit_head(&self) -> Result<Head, StoreError>;

    /// Audit records matching `query`, in sequence order (newest first when `query.newest_first`).
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Stores a checkpoint; a second one for the same sequence number is ignored.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Checkpoints with sequence numbers in `from..=to`, in order.
    async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, StoreError>;
}

/// The equivocation guard's watermarks.
#[async_trait]
pub trait WatermarkStore: Send + Sync {
    /// The watermark for a key, if it has signed with a sequence.
    async fn watermark(&self, key: &KeyName) -> Result<Option<Watermark>, StoreError>;

    /// Raises many watermarks in one transaction (one fsync), each a compare-and-set: the answer says, per
    /// mark in order, whether it was above the stored one and was written. Marks for the same key apply
    /// in order.
    async fn advance_watermarks(
        &self,
        marks: &[(KeyName, Watermark)],
    ) -> Result<Vec<bool>, StoreError>;
}

/// Leases: one of several processes does scheduled work.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews the lease `name` for `holder` until `until`; succeeds only if the lease is free,
    /// expired at `now`, or already held by `holder`. Returns whether `holder` now holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// Aliases of keys.
#[async_trait]
pub trait AliasStore: Send + Sync {
    /// Creates an alias. [`StoreError::Conflict`] if the name is taken.
    async fn create_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;

    /// Points an existing alias at another target. [`StoreError::NotFound`] if there is none.
    async fn retarget_alias(
        &self,
        name: &str,
        target: &str,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Removes an alias. [`StoreError::NotFound`] if there is none.
    async fn delete_alias(&self, name: &str) -> Result<(), StoreError>;

    /// One alias, or `None`.
    async fn get_alias(&self, name: &str) -> Result<Option<AliasRecord>, StoreError>;

    /// Every alias, ordered by name.
    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError>;
}

/// Sealing (symmetric) keys.
#[async_trait]
pub trait SealingKeyStore: Send + Sync {
    /// Creates a sealing key. [`StoreError::Conflict`] if the id is taken.
    async fn create_sealing_key(&self, key: &SealingKeyRecord) -> Result<(), StoreError>;

    /// One sealing key, or `None`.
    async fn get_sealing_key(&self, id: &str) -> Result<Option<SealingKeyRecord>, StoreError>;

    /// Every sealing key, ordered by id.
    async fn list_sealing_keys(&self) -> Result<Vec<SealingKeyRecord>, StoreError>;

    /// Sets a sealing key's state. [`StoreError::NotFound`] if there is none.
    async fn set_sealing_key_state(&self, id: &str, state: KeyState) -> Result<(), StoreError>;
}

/// Keys waiting for imported key material.
#[async_trait]
pub trait ImportStore: Send + Sync {
    /// Records a key awaiting its material. [`StoreError::Conflict`] if the id is taken.
    async fn create_import(&self, import: &ImportRecord) -> Result<(), StoreError>;

    /// One pending import, or `None`.
    async fn get_import(&self, id: &str) -> Result<Option<ImportRecord>, StoreError>;

    /// Every pending import, ordered by id.
    async fn list_imports(&self) -> Result<Vec<ImportRecord>, StoreError>;

    /// Sets (or with `None` ends) the one-time wrapping key of a pending import.
    async fn set_import_wrapping(
        &self,
        id: &str,
        wrapping: Option<&ImportWrapping>,
    ) -> Result<(), StoreError>;

    /// Sets a pending import's state.
    async fn set_import_state(&self, id: &str, state: KeyState) -> Result<(), StoreError>;

    /// The material arrived: removes the pending import and creates `key` in its place (its state and
    /// description carried over by the caller), in one transaction.
    async fn complete_import(&self, id: &str, key: &KeyRecord) -> Result<(), StoreError>;
}

/// Keys that client APIs name by their own ids.
#[async_trait]
pub trait ClientKeyStore: Send + Sync {
    /// Records a client-named key. [`StoreError::Conflict`] if the namespace already has the id.
    async fn create_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError>;

    /// One client-named key, or `None`.
    async fn get_client_key(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ClientKeyRecord>, StoreError>;

    /// Links a client-named key to the Custos key that signs for it.
    async fn link_client_key(
        &self,
        namespace: &str,
        id: &str,
        key: &KeyName,
    ) -> Result<(), StoreError>;
}

/// Durable state behind Custos: every role together. Implementations are safe to share between tasks.
#[async_trait]
pub trait Store:
    KeyStore
    + TokenStore
    + SealedKeyStore
    + SettingStore
    + AuditStore
    + WatermarkStore
    + LeaseStore
    + AliasStore
    + SealingKeyStore
    + ImportStore
    + ClientKeyStore
    + std::fmt::Debug
{
    /// Checks the store can be read and written.
    async fn ping(&self) -> Result<(), StoreError>;
}

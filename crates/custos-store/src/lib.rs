//! The Custos `Store` trait: the only way Custos reads or writes state; SQLite is the embedded default.
//!
//! Keys, their versions and where each version lives; API tokens (hashes only); sealed key material of the
//! software provider; small named settings; the audit log and its checkpoints; the equivocation guard's
//! watermarks; leases that let one of several processes do scheduled work. Every write that touches
//! more than one row is one transaction.

mod error;
mod records;
mod sqlite;

use async_trait::async_trait;
use custos_audit::{AuditRecord, Checkpoint, Head};
use custos_types::{KeyHandle, KeyName, KeyVersion, ProviderName, Timestamp, VersionState};

pub use error::StoreError;
pub use records::{
    AuditQuery, KeyRecord, Location, SealedKey, TokenRecord, VersionRecord, Watermark,
};
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

    /// Writes a named setting, replacing any earlier value.
    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Removes a named setting (nothing happens if there is none).
    async fn delete_setting(&self, name: &str) -> Result<(), StoreError>;

    /// Every setting whose name starts with `prefix`, ordered by name.
    async fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `until`; succeeds only if the lease is free,
    /// expired at `now`, or already held by `holder`. Returns whether `holder` now holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Marks a token revoked at `at`. [`StoreError::NotFound`] if there is no such token.
    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;

    /// Records when tokens were last used.
    async fn touch_tokens(&self, uses: &[(String, Timestamp)]) -> Result<(), StoreError>;

    /// Appends audit records durably, all in one transaction (one fsync for the whole batch). They must
    /// continue the chain from [`Store::audit_head`].
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// The equivocation guard's watermark for a key, if it has signed with a sequence.
    async fn watermark(&self, key: &KeyName) -> Result<Option<Watermark>, StoreError>;

    /// Durably raises a key's watermark; [`StoreError::Conflict`] unless `mark.sequence` is above the
    /// stored one (a compare-and-set in one transaction).
    async fn advance_watermark(&self, key: &KeyName, mark: &Watermark) -> Result<(), StoreError> {
        let advanced = self
            .advance_watermarks(&[(key.clone(), mark.clone())])
            .await?;
        if advanced.first() == Some(&true) {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "key {key} has signed sequence {} or above",
                mark.sequence
            )))
        }
    }

    /// Raises many watermarks in one transaction (one fsync), each a compare-and-set: the answer says, per
    /// mark in order, whether it was above the stored one and was written. Marks for the same key apply
    /// in order.
    async fn advance_watermarks(
        &self,
        marks: &[(KeyName, Watermark)],
    ) -> Result<Vec<bool>, StoreError>;

    /// The audit chain's head (sequence number and hash of the last record).
    async fn audit_head(&self) -> Result<Head, StoreError>;

    /// Audit records matching `query`, in sequence order.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Stores a checkpoint; a second one for the same sequence number is ignored.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Checkpoints with sequence numbers in `from..=to`, in order.
    async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, StoreError>;
}

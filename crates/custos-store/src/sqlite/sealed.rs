//! Sealed key material of the software provider.

use async_trait::async_trait;
use custos_types::{KeyHandle, ProviderName, SealedKey};
use rusqlite::{params, OptionalExtension as _, Row};

use super::{corrupt, ts, SqliteStore};
use crate::{SealedKeyStore, StoreError};

const SEALED_COLUMNS: &str = "provider, handle, algorithm, nonce, ciphertext, created_at";

/// The raw columns of a `sealed_keys` row, before validation.
type SealedRow = (String, String, String, Vec<u8>, Vec<u8>, String);

fn sealed_from_row(row: &Row<'_>) -> rusqlite::Result<SealedRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn sealed_from_parts(parts: SealedRow) -> Result<SealedKey, StoreError> {
    let (provider, handle, algorithm, nonce, ciphertext, created_at) = parts;
    Ok(SealedKey {
        provider: ProviderName::new(provider).map_err(corrupt)?,
        handle: KeyHandle::new(handle),
        algorithm: algorithm.parse().map_err(corrupt)?,
        nonce,
        ciphertext,
        created_at: ts(&created_at)?,
    })
}

#[async_trait]
impl SealedKeyStore for SqliteStore {
    async fn put_sealed_key(&self, key: &SealedKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let inserted = conn.execute(
                &format!("INSERT OR IGNORE INTO sealed_keys ({SEALED_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    key.provider.as_str(),
                    key.handle.as_str(),
                    key.algorithm.as_str(),
                    key.nonce,
                    key.ciphertext,
                    key.created_at.to_string()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("sealed key {}", key.handle)));
            }
            Ok(())
        })
        .await
    }

    async fn list_sealed_keys(
        &self,
        provider: &ProviderName,
    ) -> Result<Vec<SealedKey>, StoreError> {
        let provider = provider.clone();
        self.run(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {SEALED_COLUMNS} FROM sealed_keys WHERE provider = ?1 ORDER BY handle"
            ))?;
            let rows = stmt.query_map([provider.as_str()], sealed_from_row)?;
            rows.map(|row| sealed_from_parts(row?)).collect()
        })
        .await
    }

    async fn get_sealed_key(
        &self,
        provider: &ProviderName,
        handle: &KeyHandle,
    ) -> Result<Option<SealedKey>, StoreError> {
        let (provider, handle) = (provider.clone(), handle.clone());
        self.run(move |conn| {
            let parts = conn
                .query_row(
                    &format!(
                        "SELECT {SEALED_COLUMNS} FROM sealed_keys WHERE provider = ?1 AND handle = ?2"
                    ),
                    [provider.as_str(), handle.as_str()],
                    sealed_from_row,
                )
                .optional()?;
            parts.map(sealed_from_parts).transpose()
        })
        .await
    }
}

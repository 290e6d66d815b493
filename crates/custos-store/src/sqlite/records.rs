//! Aliases, sealing (symmetric) keys and keys awaiting imported material.

use async_trait::async_trait;
use custos_types::{
    AliasRecord, ImportRecord, ImportWrapping, KeyRecord, KeyState, ProviderName, SealingKeyRecord,
    Timestamp,
};
use rusqlite::{params, OptionalExtension as _, Row, TransactionBehavior};

use super::{corrupt, opt_ts, state_columns, state_from_columns, ts, SqliteStore};
use crate::{AliasStore, ImportStore, SealingKeyStore, StoreError};

fn alias_from_row(row: &Row<'_>) -> rusqlite::Result<(String, String, String, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn alias_from_parts(parts: (String, String, String, String)) -> Result<AliasRecord, StoreError> {
    let (name, target, created_at, updated_at) = parts;
    Ok(AliasRecord {
        name,
        target,
        created_at: ts(&created_at)?,
        updated_at: ts(&updated_at)?,
    })
}

#[async_trait]
impl AliasStore for SqliteStore {
    async fn create_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        let alias = alias.clone();
        self.run(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO aliases (name, target, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    alias.name,
                    alias.target,
                    alias.created_at.to_string(),
                    alias.updated_at.to_string()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("alias {}", alias.name)));
            }
            Ok(())
        })
        .await
    }

    async fn retarget_alias(
        &self,
        name: &str,
        target: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let (name, target) = (name.to_owned(), target.to_owned());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE aliases SET target = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, target, at.to_string()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("alias {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn delete_alias(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let changed = conn.execute("DELETE FROM aliases WHERE name = ?1", [&name])?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("alias {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn get_alias(&self, name: &str) -> Result<Option<AliasRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.query_row(
                "SELECT name, target, created_at, updated_at FROM aliases WHERE name = ?1",
                [name],
                alias_from_row,
            )
            .optional()?
            .map(alias_from_parts)
            .transpose()
        })
        .await
    }

    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, target, created_at, updated_at FROM aliases ORDER BY name",
            )?;
            let rows = stmt.query_map([], alias_from_row)?;
            rows.map(|row| alias_from_parts(row?)).collect()
        })
        .await
    }
}

type SealingRow = (String, String, String, Option<String>, String, String);

fn sealing_from_row(row: &Row<'_>) -> rusqlite::Result<SealingRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn sealing_from_parts(parts: SealingRow) -> Result<SealingKeyRecord, StoreError> {
    let (id, provider, state, deletion_at, description, created_at) = parts;
    Ok(SealingKeyRecord {
        id,
        provider: ProviderName::new(provider).map_err(corrupt)?,
        state: state_from_columns(&state, deletion_at)?,
        description,
        created_at: ts(&created_at)?,
    })
}

const SEALING_COLUMNS: &str = "id, provider, state, deletion_at, description, created_at";

#[async_trait]
impl SealingKeyStore for SqliteStore {
    async fn create_sealing_key(&self, key: &SealingKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let (state, at) = state_columns(key.state);
            let inserted = conn.execute(
                &format!("INSERT OR IGNORE INTO sealing_keys ({SEALING_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    key.id,
                    key.provider.as_str(),
                    state,
                    at,
                    key.description,
                    key.created_at.to_string()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("sealing key {}", key.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_sealing_key(&self, id: &str) -> Result<Option<SealingKeyRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {SEALING_COLUMNS} FROM sealing_keys WHERE id = ?1"),
                [id],
                sealing_from_row,
            )
            .optional()?
            .map(sealing_from_parts)
            .transpose()
        })
        .await
    }

    async fn list_sealing_keys(&self) -> Result<Vec<SealingKeyRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {SEALING_COLUMNS} FROM sealing_keys ORDER BY id"
            ))?;
            let rows = stmt.query_map([], sealing_from_row)?;
            rows.map(|row| sealing_from_parts(row?)).collect()
        })
        .await
    }

    async fn set_sealing_key_state(&self, id: &str, state: KeyState) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let (text, at) = state_columns(state);
            let changed = conn.execute(
                "UPDATE sealing_keys SET state = ?2, deletion_at = ?3 WHERE id = ?1",
                params![id, text, at],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("sealing key {id}")));
            }
            Ok(())
        })
        .await
    }
}

const IMPORT_COLUMNS: &str = "id, algorithm, description, state, deletion_at, created_at, \
                              wrapping_key, token_hash, wrapping_algorithm, valid_to";

type ImportRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
);

fn import_from_row(row: &Row<'_>) -> rusqlite::Result<ImportRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

fn import_from_parts(parts: ImportRow) -> Result<ImportRecord, StoreError> {
    let (id, algorithm, description, state, deletion_at, created_at, key, token, wrap_alg, valid) =
        parts;
    let wrapping = match (key, token, wrap_alg, opt_ts(valid)?) {
        (Some(key), Some(token), Some(algorithm), Some(valid_to)) => Some(ImportWrapping {
            sealed_private_key: key,
            token_hash: token
                .try_into()
                .map_err(|_| corrupt("import token hash length"))?,
            algorithm,
            valid_to,
        }),
        (None, None, None, None) => None,
        _ => return Err(corrupt(format!("import {id}: partial wrapping key"))),
    };
    Ok(ImportRecord {
        algorithm: algorithm.parse().map_err(corrupt)?,
        description,
        state: state_from_columns(&state, deletion_at)?,
        created_at: ts(&created_at)?,
        wrapping,
        id,
    })
}

#[async_trait]
impl ImportStore for SqliteStore {
    async fn create_import(&self, import: &ImportRecord) -> Result<(), StoreError> {
        let import = import.clone();
        self.run(move |conn| {
            let (state, at) = state_columns(import.state);
            let wrapping = import.wrapping.as_ref();
            let inserted = conn.execute(
                &format!(
                    "INSERT OR IGNORE INTO imports ({IMPORT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    import.id,
                    import.algorithm.as_str(),
                    import.description,
                    state,
                    at,
                    import.created_at.to_string(),
                    wrapping.map(|w| w.sealed_private_key.clone()),
                    wrapping.map(|w| w.token_hash.to_vec()),
                    wrapping.map(|w| w.algorithm.clone()),
                    wrapping.map(|w| w.valid_to.to_string()),
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("import {}", import.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_import(&self, id: &str) -> Result<Option<ImportRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE id = ?1"),
                [id],
                import_from_row,
            )
            .optional()?
            .map(import_from_parts)
            .transpose()
        })
        .await
    }

    async fn list_imports(&self) -> Result<Vec<ImportRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {IMPORT_COLUMNS} FROM imports ORDER BY id"))?;
            let rows = stmt.query_map([], import_from_row)?;
            rows.map(|row| import_from_parts(row?)).collect()
        })
        .await
    }

    async fn set_import_wrapping(
        &self,
        id: &str,
        wrapping: Option<&ImportWrapping>,
    ) -> Result<(), StoreError> {
        let (id, wrapping) = (id.to_owned(), wrapping.cloned());
        self.run(move |conn| {
            let w = wrapping.as_ref();
            let changed = conn.execute(
                "UPDATE imports SET wrapping_key = ?2, token_hash = ?3, wrapping_algorithm = ?4, valid_to = ?5
                 WHERE id = ?1",
                params![
                    id,
                    w.map(|w| w.sealed_private_key.clone()),
                    w.map(|w| w.token_hash.to_vec()),
                    w.map(|w| w.algorithm.clone()),
                    w.map(|w| w.valid_to.to_string()),
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("import {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn set_import_state(&self, id: &str, state: KeyState) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let (text, at) = state_columns(state);
            let changed = conn.execute(
                "UPDATE imports SET state = ?2, deletion_at = ?3 WHERE id = ?1",
                params![id, text, at],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("import {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn complete_import(&self, id: &str, key: &KeyRecord) -> Result<(), StoreError> {
        let (id, key) = (id.to_owned(), key.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute("DELETE FROM imports WHERE id = ?1", [&id])?;
            if removed == 0 {
                return Err(StoreError::NotFound(format!("import {id}")));
            }
            super::keys::insert_key(&tx, &key)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

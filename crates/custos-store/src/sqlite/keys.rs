//! Keys, versions and locations; key state, description and tags.

use std::collections::BTreeMap;

use async_trait::async_trait;
use custos_types::{
    Algorithm, KeyHandle, KeyKind, KeyName, KeyRecord, KeyState, KeyVersion, Location,
    ProviderName, PublicKey, VersionRecord, VersionState,
};
use rusqlite::{params, Connection, TransactionBehavior};

use super::{corrupt, from_json, state_columns, state_from_columns, to_json, ts, SqliteStore};
use crate::{KeyStore, StoreError};

/// Inserts a key row and its versions (inside the caller's transaction).
pub(super) fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    let (state, deletion_at) = state_columns(key.state);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO keys (name, algorithm, providers, created_at, kind, state, deletion_at, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key.name.as_str(),
            key.algorithm.as_str(),
            to_json(&key.providers)?,
            key.created_at.to_string(),
            key.kind.as_str(),
            state,
            deletion_at,
            key.description,
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!("key {}", key.name)));
    }
    for version in &key.versions {
        insert_version(tx, &key.name, version)?;
    }
    Ok(())
}

fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    name: &KeyName,
    version: &VersionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO key_versions (key_name, version, state, public_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name.as_str(),
            version.version.0,
            version.state.as_str(),
            version.public_key.as_bytes(),
            version.created_at.to_string()
        ],
    )?;
    for (position, location) in version.locations.iter().enumerate() {
        tx.execute(
            "INSERT INTO key_locations (key_name, version, position, provider, handle)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name.as_str(),
                version.version.0,
                position as u32,
                location.provider.as_str(),
                location.handle.as_str()
            ],
        )?;
    }
    Ok(())
}

/// Loads keys (all, or the one named) with their versions and locations.
fn load_keys(conn: &Connection, only: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
    let filter = if only.is_some() {
        "WHERE name = ?1"
    } else {
        ""
    };
    let mut keys = BTreeMap::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT name, algorithm, providers, created_at, kind, state, deletion_at, description
         FROM keys {filter} ORDER BY name"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(only))?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let algorithm: String = row.get(1)?;
        let kind: String = row.get(4)?;
        let state: String = row.get(5)?;
        let key = KeyRecord {
            name: KeyName::new(name.clone()).map_err(corrupt)?,
            algorithm: algorithm.parse::<Algorithm>().map_err(corrupt)?,
            kind: KeyKind::parse(&kind).ok_or_else(|| corrupt(format!("key kind {kind:?}")))?,
            state: state_from_columns(&state, row.get(6)?)?,
            description: row.get(7)?,
            providers: from_json(&row.get::<_, String>(2)?)?,
            created_at: ts(&row.get::<_, String>(3)?)?,
            versions: Vec::new(),
        };
        keys.insert(name, key);
    }
    let key_filter = if only.is_some() {
        "WHERE key_name = ?1"
    } else {
        ""
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT key_name, version, state, public_key, created_at FROM key_versions {key_filter}
         ORDER BY key_name, version"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(only))?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let Some(key) = keys.get_mut(&name) else {
            return Err(corrupt(format!("version of unknown key {name:?}")));
        };
        let state: String = row.get(2)?;
        let public: Vec<u8> = row.get(3)?;
        key.versions.push(VersionRecord {
            version: KeyVersion(row.get(1)?),
            state: VersionState::parse(&state).ok_or_else(|| corrupt(&state))?,
            public_key: PublicKey::from_bytes(key.algorithm, &public).map_err(corrupt)?,
            created_at: ts(&row.get::<_, String>(4)?)?,
            locations: Vec::new(),
        });
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT key_name, version, provider, handle FROM key_locations {key_filter}
         ORDER BY key_name, version, position"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(only))?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let version = KeyVersion(row.get(1)?);
        let record = keys
            .get_mut(&name)
            .and_then(|k| k.versions.iter_mut().find(|v| v.version == version))
            .ok_or_else(|| corrupt(format!("location of unknown version {name} v{version}")))?;
        record.locations.push(Location {
            provider: ProviderName::new(row.get::<_, String>(2)?).map_err(corrupt)?,
            handle: KeyHandle::new(row.get::<_, String>(3)?),
        });
    }
    Ok(keys.into_values().collect())
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_key(&tx, &key)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn add_current_version(
        &self,
        name: &KeyName,
        version: &VersionRecord,
        previous_state: VersionState,
    ) -> Result<(), StoreError> {
        if version.state != VersionState::Current || previous_state == VersionState::Current {
            return Err(StoreError::Conflict(
                "the new version must be current and the old one must not".into(),
            ));
        }
        let (name, version) = (name.clone(), version.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let highest: Option<u32> = tx.query_row(
                "SELECT max(version) FROM key_versions WHERE key_name = ?1",
                [name.as_str()],
                |row| row.get(0),
            )?;
            let Some(highest) = highest else {
                return Err(StoreError::NotFound(format!("key {name}")));
            };
            if Some(version.version) != KeyVersion(highest).next() {
                return Err(StoreError::Conflict(format!(
                    "key {name} is at version {highest}; cannot add version {}",
                    version.version
                )));
            }
            tx.execute(
                "UPDATE key_versions SET state = ?2 WHERE key_name = ?1 AND state = 'current'",
                params![name.as_str(), previous_state.as_str()],
            )?;
            insert_version(&tx, &name, &version)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_version_state(
        &self,
        name: &KeyName,
        version: KeyVersion,
        state: VersionState,
    ) -> Result<(), StoreError> {
        if state == VersionState::Current {
            return Err(StoreError::Conflict(
                "a version becomes current only through add_current_version".into(),
            ));
        }
        let name = name.clone();
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE key_versions SET state = ?3
                 WHERE key_name = ?1 AND version = ?2 AND state <> 'current'",
                params![name.as_str(), version.0, state.as_str()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!(
                    "non-current version {version} of key {name}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn set_key_state(&self, name: &KeyName, state: KeyState) -> Result<(), StoreError> {
        let name = name.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (text, at) = state_columns(state);
            let changed = tx.execute(
                "UPDATE keys SET state = ?2, deletion_at = ?3 WHERE name = ?1",
                params![name.as_str(), text, at],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("key {name}")));
            }
            if state == KeyState::Destroyed {
                // The one-current-version index allows zero current versions.
                tx.execute(
                    "UPDATE key_versions SET state = 'destroyed' WHERE key_name = ?1",
                    [name.as_str()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_key_description(
        &self,
        name: &KeyName,
        description: &str,
    ) -> Result<(), StoreError> {
        let (name, description) = (name.clone(), description.to_owned());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE keys SET description = ?2 WHERE name = ?1",
                params![name.as_str(), description],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("key {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError> {
        let name = name.clone();
        self.run(move |conn| Ok(load_keys(conn, Some(name.as_str()))?.pop()))
            .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(|conn| load_keys(conn, None)).await
    }

    async fn tags(&self, id: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let mut stmt =
                conn.prepare("SELECT tag, value FROM key_tags WHERE key_id = ?1 ORDER BY tag")?;
            let rows = stmt.query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<BTreeMap<String, String>, _>>()?)
        })
        .await
    }

    async fn update_tags(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), StoreError> {
        let (id, set, remove) = (id.to_owned(), set.clone(), remove.to_vec());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (tag, value) in &set {
                tx.execute(
                    "INSERT INTO key_tags (key_id, tag, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key_id, tag) DO UPDATE SET value = ?3",
                    params![id, tag, value],
                )?;
            }
            for tag in &remove {
                tx.execute(
                    "DELETE FROM key_tags WHERE key_id = ?1 AND tag = ?2",
                    params![id, tag],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

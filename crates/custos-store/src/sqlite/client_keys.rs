//! Keys that client APIs name by their own ids (BitGo names keys by their public key and source).

use std::collections::BTreeMap;

use async_trait::async_trait;
use custos_types::{ClientKeyRecord, KeyName};
use rusqlite::{params, OptionalExtension as _};

use super::{corrupt, from_json, to_json, ts, SqliteStore};
use crate::{ClientKeyStore, StoreError};

#[async_trait]
impl ClientKeyStore for SqliteStore {
    async fn create_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO client_keys (namespace, id, key_name, sealed, attributes, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.namespace,
                    key.id,
                    key.key.as_ref().map(|k| k.as_str().to_owned()),
                    key.sealed,
                    to_json(&key.attributes)?,
                    key.created_at.to_string()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "client key {} in {}",
                    key.id, key.namespace
                )));
            }
            Ok(())
        })
        .await
    }

    async fn get_client_key(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ClientKeyRecord>, StoreError> {
        let (namespace, id) = (namespace.to_owned(), id.to_owned());
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT key_name, sealed, attributes, created_at FROM client_keys
                     WHERE namespace = ?1 AND id = ?2",
                    params![namespace, id],
                    |row| {
                        Ok((
                            row.get::<_, Option<String>>(0)?,
                            row.get::<_, Option<Vec<u8>>>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    },
                )
                .optional()?;
            row.map(|(key, sealed, attributes, created_at)| {
                Ok(ClientKeyRecord {
                    key: key.map(KeyName::new).transpose().map_err(corrupt)?,
                    sealed,
                    attributes: from_json::<BTreeMap<String, String>>(&attributes)?,
                    created_at: ts(&created_at)?,
                    namespace: namespace.clone(),
                    id: id.clone(),
                })
            })
            .transpose()
        })
        .await
    }

    async fn link_client_key(
        &self,
        namespace: &str,
        id: &str,
        key: &KeyName,
    ) -> Result<(), StoreError> {
        let (namespace, id, key) = (namespace.to_owned(), id.to_owned(), key.clone());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE client_keys SET key_name = ?3 WHERE namespace = ?1 AND id = ?2",
                params![namespace, id, key.as_str()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!(
                    "client key {id} in {namespace}"
                )));
            }
            Ok(())
        })
        .await
    }
}

//! Small named settings.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension as _};

use super::SqliteStore;
use crate::{SettingStore, StoreError};

#[async_trait]
impl SettingStore for SqliteStore {
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM settings WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.run(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)",
                params![name, value],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = ?2",
                params![name, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.execute("DELETE FROM settings WHERE name = ?1", [name])?;
            Ok(())
        })
        .await
    }

    async fn list_settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT name, value FROM settings WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
            )?;
            let rows = stmt
                .query_map([prefix], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

//! Leases: one of several processes does scheduled work.

use async_trait::async_trait;
use custos_types::Timestamp;
use rusqlite::params;

use super::SqliteStore;
use crate::{LeaseStore, StoreError};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let (now, until) = (now.as_millisecond(), until.as_millisecond());
        self.run(move |conn| {
            let changed = conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?4)
                 ON CONFLICT(name) DO UPDATE SET holder = ?2, expires_at = ?4
                 WHERE leases.holder = ?2 OR leases.expires_at <= ?3",
                params![name, holder, now, until],
            )?;
            Ok(changed == 1)
        })
        .await
    }
}

//! API token records (hashes only) and their last use.

use async_trait::async_trait;
use custos_types::{Timestamp, TokenRecord};
use rusqlite::params;

use super::{corrupt, from_json, opt_ts, to_json, ts, SqliteStore};
use crate::{StoreError, TokenStore};

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let token = token.clone();
        self.run(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO api_tokens
                 (id, name, secret_hash, scopes, created_at, expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.id,
                    token.name,
                    token.secret_hash.as_slice(),
                    to_json(&token.scopes)?,
                    token.created_at.to_string(),
                    token.expires_at.map(|t| t.to_string()),
                    token.revoked_at.map(|t| t.to_string()),
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("token {}", token.id)));
            }
            Ok(())
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, secret_hash, scopes, created_at, expires_at, revoked_at, last_used_at
                 FROM api_tokens ORDER BY created_at, id",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let hash: Vec<u8> = row.get(2)?;
                out.push(TokenRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    secret_hash: hash.try_into().map_err(|_| corrupt("token hash length"))?,
                    scopes: from_json(&row.get::<_, String>(3)?)?,
                    created_at: ts(&row.get::<_, String>(4)?)?,
                    expires_at: opt_ts(row.get(5)?)?,
                    revoked_at: opt_ts(row.get(6)?)?,
                    last_used_at: opt_ts(row.get(7)?)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                params![id, at.to_string()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("token {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn touch_tokens(&self, uses: &[(String, Timestamp)]) -> Result<(), StoreError> {
        let uses = uses.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for (id, at) in &uses {
                tx.execute(
                    "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                    params![id, at.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

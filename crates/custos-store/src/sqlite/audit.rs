//! The audit log and its checkpoints.

use async_trait::async_trait;
use custos_audit::{AuditQuery, AuditRecord, Checkpoint, Head};
use rusqlite::{params, OptionalExtension as _, TransactionBehavior};

use super::{corrupt, SqliteStore};
use crate::{AuditStore, StoreError};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO audit_log (seq, time_us, operation, key_name, actor_id, actor_name, outcome, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for record in &records {
                    let actor = record.entry.actor.as_ref();
                    insert.execute(params![
                        i64::try_from(record.seq).map_err(corrupt)?,
                        record.time.as_microsecond(),
                        record.entry.operation,
                        record.entry.key,
                        actor.and_then(|a| a.token_id.clone()),
                        actor.and_then(|a| a.token_name.clone()),
                        record.entry.outcome.as_str(),
                        serde_json::to_string(record).map_err(corrupt)?,
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn audit_head(&self) -> Result<Head, StoreError> {
        self.run(|conn| {
            let last: Option<String> = conn
                .query_row(
                    "SELECT record FROM audit_log ORDER BY seq DESC LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            match last {
                None => Ok(Head::GENESIS),
                Some(json) => {
                    let record: AuditRecord = serde_json::from_str(&json).map_err(corrupt)?;
                    record.head().ok_or_else(|| corrupt("audit record hash"))
                }
            }
        })
        .await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let query = query.clone();
        self.run(move |conn| {
            let (position, order) = if query.newest_first {
                ("(?1 = 0 OR seq < ?1)", "DESC")
            } else {
                ("seq > ?1", "ASC")
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT record FROM audit_log
                 WHERE {position}
                   AND (?2 IS NULL OR time_us >= ?2)
                   AND (?3 IS NULL OR time_us <= ?3)
                   AND (?4 IS NULL OR key_name = ?4)
                   AND (?5 IS NULL OR operation = ?5)
                   AND (?6 IS NULL OR actor_id = ?6 OR actor_name = ?6)
                   AND (?7 IS NULL OR outcome = ?7)
                 ORDER BY seq {order} LIMIT ?8"
            ))?;
            let rows = stmt.query_map(
                params![
                    i64::try_from(query.after_seq).map_err(corrupt)?,
                    query.from.map(|t| t.as_microsecond()),
                    query.to.map(|t| t.as_microsecond()),
                    query.key,
                    query.operation,
                    query.actor,
                    query.outcome,
                    query.limit,
                ],
                |row| row.get::<_, String>(0),
            )?;
            rows.map(|json| serde_json::from_str(&json?).map_err(corrupt))
                .collect()
        })
        .await
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let checkpoint = checkpoint.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, record) VALUES (?1, ?2)",
                params![
                    i64::try_from(checkpoint.seq).map_err(corrupt)?,
                    serde_json::to_string(&checkpoint).map_err(corrupt)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM audit_checkpoints WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(
                params![
                    i64::try_from(from).map_err(corrupt)?,
                    i64::try_from(to).unwrap_or(i64::MAX)
                ],
                |row| row.get::<_, String>(0),
            )?;
            rows.map(|json| serde_json::from_str(&json?).map_err(corrupt))
                .collect()
        })
        .await
    }
}

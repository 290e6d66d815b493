//! The equivocation guard's watermarks: one compare-and-set per mark, many marks per transaction.

use async_trait::async_trait;
use custos_types::{KeyName, KeyVersion, ProviderName, Watermark};
use rusqlite::{params, OptionalExtension as _, Row, TransactionBehavior};

use super::{corrupt, SqliteStore};
use crate::{StoreError, WatermarkStore};

/// The raw columns of a `sign_watermarks` row: sequence, payload hash, version, provider, signature.
type WatermarkRow = (i64, Vec<u8>, u32, String, Vec<u8>);

fn watermark_from_row(row: &Row<'_>) -> rusqlite::Result<WatermarkRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

#[async_trait]
impl WatermarkStore for SqliteStore {
    async fn watermark(&self, key: &KeyName) -> Result<Option<Watermark>, StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT sequence, payload_hash, version, provider, signature FROM sign_watermarks WHERE key_name = ?1",
                    [key.as_str()],
                    watermark_from_row,
                )
                .optional()?;
            row.map(|(sequence, hash, version, provider, signature)| {
                Ok(Watermark {
                    sequence: u64::try_from(sequence).map_err(corrupt)?,
                    payload_hash: hash.try_into().map_err(|_| corrupt("watermark hash length"))?,
                    version: KeyVersion(version),
                    provider: ProviderName::new(provider).map_err(corrupt)?,
                    signature,
                })
            })
            .transpose()
        })
        .await
    }

    async fn advance_watermarks(
        &self,
        marks: &[(KeyName, Watermark)],
    ) -> Result<Vec<bool>, StoreError> {
        let marks = marks.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut advanced = Vec::with_capacity(marks.len());
            for (key, mark) in &marks {
                let Ok(sequence) = i64::try_from(mark.sequence) else {
                    advanced.push(false);
                    continue;
                };
                let current: Option<i64> = tx
                    .query_row(
                        "SELECT sequence FROM sign_watermarks WHERE key_name = ?1",
                        [key.as_str()],
                        |row| row.get(0),
                    )
                    .optional()?;
                if current.is_some_and(|current| current >= sequence) {
                    advanced.push(false);
                    continue;
                }
                tx.execute(
                    "INSERT INTO sign_watermarks (key_name, sequence, payload_hash, version, provider, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(key_name) DO UPDATE SET sequence = ?2, payload_hash = ?3, version = ?4, provider = ?5, signature = ?6",
                    params![
                        key.as_str(),
                        sequence,
                        mark.payload_hash.as_slice(),
                        mark.version.0,
                        mark.provider.as_str(),
                        mark.signature
                    ],
                )?;
                advanced.push(true);
            }
            tx.commit()?;
            Ok(advanced)
        })
        .await
    }
}

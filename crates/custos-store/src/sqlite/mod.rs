//! The SQLite store: one database file in the data directory, WAL mode, versioned migrations.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. The sign path never touches the
//! store (core keeps the key registry in memory), so one connection behind a mutex is enough. Each role
//! trait is implemented in its own module; the migrations are the numbered `.sql` files in `migrations/`,
//! applied in order under `PRAGMA user_version`.

mod audit;
mod client_keys;
mod guard;
mod keys;
mod leases;
mod records;
mod sealed;
mod settings;
mod tokens;

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use custos_types::{KeyState, Timestamp};
use rusqlite::{Connection, TransactionBehavior};

use crate::{Store, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_keys_tokens_sealed_settings",
        include_str!("../../migrations/0001_keys_tokens_sealed_settings.sql"),
    ),
    (
        "0002_audit_log",
        include_str!("../../migrations/0002_audit_log.sql"),
    ),
    (
        "0003_sign_watermarks",
        include_str!("../../migrations/0003_sign_watermarks.sql"),
    ),
    (
        "0004_leases",
        include_str!("../../migrations/0004_leases.sql"),
    ),
    (
        "0005_key_state_and_records",
        include_str!("../../migrations/0005_key_state_and_records.sql"),
    ),
];

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl SqliteStore {
    /// The database file's name inside the data directory.
    pub const FILE_NAME: &'static str = "custos.db";

    /// Opens the store in an initialised data directory; [`StoreError::NotInitialised`] if there is none.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join(Self::FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::NotInitialised(data_dir.display().to_string()));
        }
        Self::connect(path)
    }

    /// Creates the data directory (mode 0700) and the database file (mode 0600), or opens them if they
    /// exist.
    pub fn create(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(Self::FILE_NAME);
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        Self::connect(path)
    }

    fn connect(path: PathBuf) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(Some(conn)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Closes the connection; every later call fails with [`StoreError::Unavailable`].
    pub fn close(&self) {
        if let Ok(mut conn) = self.inner.conn.lock() {
            conn.take();
        }
    }

    /// Runs `f` on the connection, on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner
                .conn
                .lock()
                .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
            let conn = guard
                .as_mut()
                .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
            let started = std::time::Instant::now();
            let result = f(conn);
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                ok = result.is_ok(),
                "store transaction"
            );
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as u32;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tracing::info!(schema = i + 1, migration = name, "applied store migration");
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT count(*) FROM settings", [], |row| {
                row.get::<_, i64>(0)
            })?;
            Ok(())
        })
        .await
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn ts(text: &str) -> Result<Timestamp, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("bad timestamp {text:?}")))
}

fn opt_ts(text: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    text.as_deref().map(ts).transpose()
}

fn from_json<T: for<'de> serde::Deserialize<'de>>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt)
}

/// A key state as its two columns: the name and the deletion date.
fn state_columns(state: KeyState) -> (&'static str, Option<String>) {
    (state.as_str(), state.deletion_date().map(|t| t.to_string()))
}

/// A key state from its two columns.
fn state_from_columns(name: &str, at: Option<String>) -> Result<KeyState, StoreError> {
    KeyState::from_parts(name, opt_ts(at)?)
        .ok_or_else(|| corrupt(format!("bad key state {name:?}")))
}

#[cfg(test)]
mod tests;

//! The SQLite store: one database file in the data directory, WAL mode, versioned migrations.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. The sign path never touches the
//! store (core keeps the key registry in memory), so one connection behind a mutex is enough.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use custos_audit::{AuditRecord, Checkpoint, Head};
use custos_types::{
    Algorithm, KeyHandle, KeyName, KeyVersion, ProviderName, PublicKey, Timestamp, VersionState,
};
use rusqlite::{params, Connection, OptionalExtension as _, Row, TransactionBehavior};

use crate::{
    AuditQuery, KeyRecord, Location, SealedKey, Store, StoreError, TokenRecord, VersionRecord,
    Watermark,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE keys (
    name        TEXT PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    providers   TEXT NOT NULL,            -- JSON array of provider names, primary first
    created_at  TEXT NOT NULL
);
CREATE TABLE key_versions (
    key_name    TEXT NOT NULL REFERENCES keys(name),
    version     INTEGER NOT NULL CHECK (version >= 1),
    state       TEXT NOT NULL CHECK (state IN ('current','enabled','disabled','destroyed')),
    public_key  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (key_name, version)
);
-- At most one current version per key, enforced by the database itself.
CREATE UNIQUE INDEX key_versions_one_current ON key_versions(key_name) WHERE state = 'current';
CREATE TABLE key_locations (
    key_name    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    provider    TEXT NOT NULL,
    handle      TEXT NOT NULL,
    PRIMARY KEY (key_name, version, provider),
    FOREIGN KEY (key_name, version) REFERENCES key_versions(key_name, version)
);
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    scopes      TEXT NOT NULL,            -- JSON array of scope strings
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);
CREATE TABLE sealed_keys (
    provider    TEXT NOT NULL,
    handle      TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (provider, handle)
);
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL
);
"#,
    r#"
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    time_us     INTEGER NOT NULL,             -- microseconds since the Unix epoch, for range queries
    operation   TEXT NOT NULL,
    key_name    TEXT,
    actor_id    TEXT,
    actor_name  TEXT,
    outcome     TEXT NOT NULL,
    record      TEXT NOT NULL                 -- the record as JSON, exactly as it was hashed
);
CREATE INDEX audit_log_time ON audit_log(time_us);
CREATE TABLE audit_checkpoints (
    seq         INTEGER PRIMARY KEY,
    record      TEXT NOT NULL
);
ALTER TABLE api_tokens ADD COLUMN last_used_at TEXT;
"#,
    r#"
CREATE TABLE sign_watermarks (
    key_name     TEXT PRIMARY KEY REFERENCES keys(name),
    sequence     INTEGER NOT NULL,           -- the highest sequence signed (0 ..= i64::MAX)
    payload_hash BLOB NOT NULL,              -- SHA-256 of the bytes signed at that sequence
    version      INTEGER NOT NULL,
    provider     TEXT NOT NULL,
    signature    BLOB NOT NULL               -- the 64-byte signature released for it
);
"#,
    r#"
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL              -- Unix milliseconds
);
"#,
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
            f(conn)
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
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tracing::info!(schema = i + 1, "applied store migration");
    }
    tx.commit()?;
    Ok(())
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

fn json_names<T: for<'de> serde::Deserialize<'de>>(text: &str) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt)
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
        "SELECT name, algorithm, providers, created_at FROM keys {filter} ORDER BY name"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(only), |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (name, algorithm, providers, created_at) = row?;
        let key = KeyRecord {
            name: KeyName::new(name.clone()).map_err(corrupt)?,
            algorithm: algorithm.parse::<Algorithm>().map_err(corrupt)?,
            providers: json_names(&providers)?,
            created_at: ts(&created_at)?,
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

const SEALED_COLUMNS: &str = "provider, handle, algorithm, nonce, ciphertext, created_at";

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

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO keys (name, algorithm, providers, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    key.name.as_str(),
                    key.algorithm.as_str(),
                    to_json(&key.providers)?,
                    key.created_at.to_string()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("key {}", key.name)));
            }
            for version in &key.versions {
                insert_version(&tx, &key.name, version)?;
            }
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

    async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError> {
        let name = name.clone();
        self.run(move |conn| Ok(load_keys(conn, Some(name.as_str()))?.pop()))
            .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(|conn| load_keys(conn, None)).await
    }

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
                    scopes: json_names(&row.get::<_, String>(3)?)?,
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
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM audit_log
                 WHERE seq > ?1
                   AND (?2 IS NULL OR time_us >= ?2)
                   AND (?3 IS NULL OR time_us <= ?3)
                   AND (?4 IS NULL OR key_name = ?4)
                   AND (?5 IS NULL OR operation = ?5)
                   AND (?6 IS NULL OR actor_id = ?6 OR actor_name = ?6)
                   AND (?7 IS NULL OR outcome = ?7)
                 ORDER BY seq LIMIT ?8",
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The RFC 8032 test 1 public key: any valid point will do for storage tests.
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn version(n: u32, state: VersionState) -> VersionRecord {
        VersionRecord {
            version: KeyVersion(n),
            state,
            public_key: PublicKey::from_bytes(Algorithm::Ed25519, &hex_decode(PUBLIC)).unwrap(),
            created_at: Timestamp::now(),
            locations: vec![Location {
                provider: ProviderName::new("soft").unwrap(),
                handle: KeyHandle::new(format!("h{n}")),
            }],
        }
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(name: &str) -> KeyRecord {
        KeyRecord {
            name: KeyName::new(name).unwrap(),
            algorithm: Algorithm::Ed25519,
            providers: vec![ProviderName::new("soft").unwrap()],
            created_at: Timestamp::now(),
            versions: vec![version(1, VersionState::Current)],
        }
    }

    #[tokio::test]
    async fn keys_versions_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SqliteStore::open(dir.path()),
            Err(StoreError::NotInitialised(_))
        ));
        let store = SqliteStore::create(dir.path()).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        store.create_key(&key("a")).await.unwrap();
        assert!(matches!(
            store.create_key(&key("a")).await,
            Err(StoreError::Conflict(_))
        ));
        let name = KeyName::new("a").unwrap();
        store
            .add_current_version(
                &name,
                &version(2, VersionState::Current),
                VersionState::Enabled,
            )
            .await
            .unwrap();
        // Skipping a number, or adding twice, is refused and changes nothing.
        assert!(store
            .add_current_version(
                &name,
                &version(2, VersionState::Current),
                VersionState::Enabled
            )
            .await
            .is_err());
        store
            .set_version_state(&name, KeyVersion(1), VersionState::Disabled)
            .await
            .unwrap();
        assert!(store
            .set_version_state(&name, KeyVersion(2), VersionState::Disabled)
            .await
            .is_err());
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let loaded = store.get_key(&name).await.unwrap().unwrap();
        assert_eq!(loaded.versions.len(), 2);
        assert_eq!(loaded.current().unwrap().version, KeyVersion(2));
        assert_eq!(
            loaded.version(KeyVersion(1)).unwrap().state,
            VersionState::Disabled
        );
        assert_eq!(loaded.versions[1].locations[0].handle.as_str(), "h2");
        assert_eq!(store.list_keys().await.unwrap().len(), 1);
        assert!(store
            .get_key(&KeyName::new("b").unwrap())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn audit_records_append_query_and_checkpoint() {
        use custos_audit::{Actor, AuditEntry, Outcome};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::create(dir.path()).unwrap();
        assert_eq!(store.audit_head().await.unwrap(), Head::GENESIS);
        let mut head = Head::GENESIS;
        let mut batch = Vec::new();
        for i in 0..5u32 {
            let mut entry = AuditEntry::new(if i % 2 == 0 { "sign" } else { "verify" });
            entry.key = Some(format!("k{}", i % 2));
            entry.actor = Some(Actor {
                token_id: Some("t1".into()),
                token_name: Some("ci".into()),
                cert_fingerprint: None,
            });
            entry.outcome = if i == 4 { Outcome::Error } else { Outcome::Ok };
            let record = AuditRecord::seal(head, Timestamp::now(), entry);
            head = record.head().unwrap();
            batch.push(record);
        }
        store.append_audit(&batch).await.unwrap();
        assert_eq!(store.audit_head().await.unwrap(), head);
        // A batch that reuses a sequence number is refused whole.
        assert!(store.append_audit(&batch[3..]).await.is_err());
        assert_eq!(store.audit_head().await.unwrap(), head);
        let all = store
            .query_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all, batch);
        let q = |f: fn(&mut AuditQuery)| {
            let mut query = AuditQuery {
                limit: 100,
                ..Default::default()
            };
            f(&mut query);
            query
        };
        assert_eq!(
            store
                .query_audit(&q(|q| q.operation = Some("sign".into())))
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            store
                .query_audit(&q(|q| q.key = Some("k1".into())))
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store
                .query_audit(&q(|q| q.actor = Some("ci".into())))
                .await
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            store
                .query_audit(&q(|q| q.outcome = Some("error".into())))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .query_audit(&q(|q| {
                    q.after_seq = 2;
                    q.limit = 2
                }))
                .await
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        let future = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        assert!(store
            .query_audit(&q(
                |q| q.from = Some(Timestamp::now() + jiff::SignedDuration::from_secs(60))
            ))
            .await
            .unwrap()
            .is_empty());
        let _ = future;
        let checkpoint = Checkpoint {
            seq: 5,
            head_hash: hex_encode(&head.hash),
            time: Timestamp::now(),
            signature: "00".into(),
        };
        store.put_checkpoint(&checkpoint).await.unwrap();
        store.put_checkpoint(&checkpoint).await.unwrap();
        assert_eq!(store.checkpoints(0, 10).await.unwrap(), vec![checkpoint]);
    }

    fn hex_encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tokio::test]
    async fn the_database_refuses_two_current_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::create(dir.path()).unwrap();
        let mut k = key("two");
        k.versions.push(version(2, VersionState::Current));
        assert!(matches!(
            store.create_key(&k).await,
            Err(StoreError::Conflict(_))
        ));
        // The failed transaction left nothing behind.
        assert!(store.list_keys().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tokens_settings_sealed_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::create(dir.path()).unwrap();
        let token = TokenRecord {
            id: "t1".into(),
            name: "root".into(),
            secret_hash: [9; 32],
            scopes: vec!["admin".into()],
            created_at: Timestamp::now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        store.create_token(&token).await.unwrap();
        assert!(store.create_token(&token).await.is_err());
        assert_eq!(store.list_tokens().await.unwrap(), vec![token.clone()]);
        let now = Timestamp::now();
        store.touch_tokens(&[("t1".into(), now)]).await.unwrap();
        store.revoke_token("t1", now).await.unwrap();
        assert!(store.revoke_token("nope", now).await.is_err());
        let stored = store.list_tokens().await.unwrap().remove(0);
        assert_eq!(
            (stored.revoked_at, stored.last_used_at),
            (Some(now), Some(now))
        );
        assert!(store.put_setting_if_absent("x", b"1").await.unwrap());
        assert!(!store.put_setting_if_absent("x", b"2").await.unwrap());
        assert_eq!(store.get_setting("x").await.unwrap().unwrap(), b"1");
        store.put_setting("x", b"3").await.unwrap();
        store.put_setting("x:a", b"4").await.unwrap();
        store.put_setting("y", b"5").await.unwrap();
        assert_eq!(
            store.list_settings("x").await.unwrap(),
            vec![
                ("x".to_owned(), b"3".to_vec()),
                ("x:a".to_owned(), b"4".to_vec())
            ]
        );
        store.delete_setting("x").await.unwrap();
        assert_eq!(store.get_setting("x").await.unwrap(), None);
        // Leases: one holder at a time until expiry; the holder renews.
        let t0 = Timestamp::from_second(1_000).unwrap();
        let later = |s: i64| Timestamp::from_second(1_000 + s).unwrap();
        assert!(store
            .acquire_lease("rot", "a", t0, later(30))
            .await
            .unwrap());
        assert!(!store
            .acquire_lease("rot", "b", later(10), later(40))
            .await
            .unwrap());
        assert!(store
            .acquire_lease("rot", "a", later(10), later(40))
            .await
            .unwrap());
        assert!(store
            .acquire_lease("rot", "b", later(40), later(70))
            .await
            .unwrap());
        assert!(!store
            .acquire_lease("rot", "a", later(41), later(71))
            .await
            .unwrap());
        let provider = ProviderName::new("soft").unwrap();
        let sealed = SealedKey {
            provider: provider.clone(),
            handle: KeyHandle::new("h"),
            algorithm: Algorithm::P256,
            nonce: vec![1; 24],
            ciphertext: vec![2; 48],
            created_at: Timestamp::now(),
        };
        store.put_sealed_key(&sealed).await.unwrap();
        assert!(store.put_sealed_key(&sealed).await.is_err());
        assert_eq!(
            store.list_sealed_keys(&provider).await.unwrap(),
            vec![sealed.clone()]
        );
        assert_eq!(
            store
                .get_sealed_key(&provider, &KeyHandle::new("h"))
                .await
                .unwrap(),
            Some(sealed)
        );
        store.ping().await.unwrap();
        store.close();
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
    }
}

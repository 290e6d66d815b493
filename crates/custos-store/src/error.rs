//! The store's error type.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record exists already (caller's fault: a duplicate name or id).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The record does not exist (caller's fault).
    #[error("not found: {0}")]
    NotFound(String),
    /// The data directory has not been initialised (operator's fault: run `custos init`).
    #[error("no Custos data in {0}: run `custos init` (or `custos dev`) to create it")]
    NotInitialised(String),
    /// The database was written by a newer Custos (operator's fault: upgrade the binary).
    #[error("the data was written by a newer Custos (schema {found}, this build knows {known})")]
    TooNew {
        /// The schema version found.
        found: u32,
        /// The newest schema this build knows.
        known: u32,
    },
    /// The database cannot be used right now: I/O error, locked, closed (retryable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row cannot be decoded (needs an operator).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::SqliteFailure(e, _)
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict("constraint violated".into())
            }
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(err.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

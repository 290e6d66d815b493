//! Which audit records to return: the filters a query can use, shared by the store and its callers.

use custos_types::Timestamp;

/// Which audit records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Paging: only records after this sequence number (oldest first), or before it (newest first);
    /// 0 means from the start (or the end).
    pub after_seq: u64,
    /// At most this many.
    pub limit: u32,
    /// Newest first: the page ends at the newest record, and `after_seq` is read as "before".
    pub newest_first: bool,
    /// Not before this time.
    pub from: Option<Timestamp>,
    /// Not after this time.
    pub to: Option<Timestamp>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this actor (token id or token name).
    pub actor: Option<String>,
    /// Only this outcome (`ok`, `error`, `denied`).
    pub outcome: Option<String>,
}

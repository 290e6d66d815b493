//! Custos audit records: the hash chain, signed checkpoints, and the offline verifier of exports.
//!
//! Every record carries the hash of the record before it and its own hash over a canonical encoding of
//! its body, so editing, deleting, inserting or reordering records breaks the chain. Every N records or T
//! seconds, and at the end of every export, Custos signs the chain head (sequence number and hash) with
//! its audit key: a checkpoint. An export that ends without a checkpoint, or whose records disagree with
//! a checkpoint, was tampered with or truncated. Nothing here does I/O.

mod query;
mod record;
mod verify;

pub use query::AuditQuery;
pub use record::{
    payload_mac, Actor, AuditEntry, AuditRecord, Checkpoint, ExportLine, Head, Outcome,
};
pub use verify::{verify_export, VerifyFailure, VerifyReport};

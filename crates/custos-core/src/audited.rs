//! The one way an operation is decided and recorded: authorise the caller, run the operation, append its
//! audit record (fail closed), answer. A refusal is recorded under the operation's own name with outcome
//! `denied`, so "who was refused what" is one query.

use std::future::Future;

use custos_audit::{AuditEntry, Outcome};

use crate::{AuditLog, CoreError, Operation, RequestContext};

/// Checks that the caller may do `op`; a refusal is written to the audit log as `entry` with outcome
/// `denied`. Reads use this alone (a permitted read writes no record).
pub(crate) async fn authorize(
    audit: &AuditLog,
    ctx: &RequestContext,
    op: Operation<'_>,
    entry: impl FnOnce() -> AuditEntry,
) -> Result<(), CoreError> {
    let Err(err) = ctx.authorize(op) else {
        return Ok(());
    };
    let mut entry = entry();
    if entry.key.is_none() {
        entry.key = op.key().map(str::to_owned);
    }
    entry.outcome = Outcome::Denied;
    entry.error_code = Some(err.code().as_str().to_owned());
    entry.subject.get_or_insert_with(|| op.to_string());
    audit.append(entry).await?;
    Err(err)
}

/// Authorises `op`, runs `work` only if allowed, and records the outcome: `describe` adds what the
/// result says (version, provider) to the entry; an error adds its code. The result is returned only
/// after its record is durable; a failed write turns it into `audit_unavailable`.
pub(crate) async fn run<T, F>(
    audit: &AuditLog,
    ctx: &RequestContext,
    op: Operation<'_>,
    mut entry: AuditEntry,
    work: F,
    describe: impl FnOnce(&T, &mut AuditEntry),
) -> Result<T, CoreError>
where
    F: Future<Output = Result<T, CoreError>>,
{
    if entry.key.is_none() {
        entry.key = op.key().map(str::to_owned);
    }
    let denied = entry.clone();
    authorize(audit, ctx, op, || denied).await?;
    record(audit, entry, work.await, describe).await
}

/// Records `result` in `entry` and appends it; returns `result` once the record is durable.
pub(crate) async fn record<T>(
    audit: &AuditLog,
    mut entry: AuditEntry,
    result: Result<T, CoreError>,
    describe: impl FnOnce(&T, &mut AuditEntry),
) -> Result<T, CoreError> {
    match &result {
        Ok(value) => describe(value, &mut entry),
        Err(err) => {
            entry.outcome = match err {
                CoreError::PolicyDenied { .. } | CoreError::Forbidden(_) => Outcome::Denied,
                _ => Outcome::Error,
            };
            entry.error_code = Some(err.code().as_str().to_owned());
        }
    }
    audit.append(entry).await?;
    result
}

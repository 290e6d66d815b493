//! Reading the audit log: queries, exports and server-side verification, for callers with `audit:read`.

use custos_audit::{AuditQuery, AuditRecord, VerifyFailure, VerifyReport};

use super::KeyManager;
use crate::{audited, CoreError, Operation, RequestContext};

impl KeyManager {
    /// Records matching `query`; needs `audit:read`.
    pub async fn query_audit(
        &self,
        ctx: &RequestContext,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadAudit, || {
            ctx.entry("audit_query")
        })
        .await?;
        self.audit.query(query).await
    }

    /// The whole log as JSON lines, sealed at the end; needs `audit:read`. The export itself is
    /// recorded.
    pub async fn export_audit(&self, ctx: &RequestContext) -> Result<String, CoreError> {
        audited::run(
            &self.audit,
            ctx,
            Operation::ReadAudit,
            ctx.entry("audit_export"),
            self.audit.export(),
            |_, _| {},
        )
        .await
    }

    /// Verifies the whole log server-side; needs `audit:read`.
    pub async fn verify_audit(
        &self,
        ctx: &RequestContext,
    ) -> Result<Result<VerifyReport, VerifyFailure>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadAudit, || {
            ctx.entry("audit_verify")
        })
        .await?;
        let export = self.audit.export().await?;
        Ok(custos_audit::verify_export(
            &export,
            self.audit.public_key(),
        ))
    }
}

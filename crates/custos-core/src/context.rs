//! Who is asking, from where, under which request id: carried from the front end into every operation,
//! where core decides what the caller may do and writes it into the audit record.

use custos_audit::{Actor, AuditEntry};

use crate::{CoreError, Operation, Principal};

/// The context of one request.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The request id, as in the logs and the `x-request-id` header.
    pub request_id: String,
    /// The authenticated token, when there is one.
    pub principal: Option<Principal>,
    /// SHA-256 fingerprint (hex) of the client certificate, under mutual TLS.
    pub cert_fingerprint: Option<String>,
    /// The peer address.
    pub source: Option<String>,
    /// Custos acting on its own behalf (start-up, the scheduler, offline recovery): allowed everything.
    /// Only code in this process can set it; no request can.
    pub system: bool,
}

impl RequestContext {
    /// The context of Custos acting on its own (start-up, the scheduler, initialisation).
    pub fn system(request_id: &str) -> RequestContext {
        RequestContext {
            request_id: request_id.to_owned(),
            system: true,
            ..RequestContext::default()
        }
    }

    /// Allows `op` for this caller, or says why not: [`CoreError::Unauthenticated`] without a token,
    /// [`CoreError::Forbidden`] without the scope.
    pub fn authorize(&self, op: Operation<'_>) -> Result<(), CoreError> {
        if self.system {
            return Ok(());
        }
        match &self.principal {
            Some(principal) => principal.authorize(op),
            None => Err(CoreError::Unauthenticated),
        }
    }

    /// An audit entry for `operation` in this context (outcome ok until told otherwise).
    pub fn entry(&self, operation: &str) -> AuditEntry {
        let mut entry = AuditEntry::new(operation);
        entry.request_id = (!self.request_id.is_empty()).then(|| self.request_id.clone());
        entry.source = self.source.clone();
        if self.principal.is_some() || self.cert_fingerprint.is_some() {
            entry.actor = Some(Actor {
                token_id: self.principal.as_ref().map(|p| p.token_id.clone()),
                token_name: self.principal.as_ref().map(|p| p.name.clone()),
                cert_fingerprint: self.cert_fingerprint.clone(),
            });
        }
        entry
    }
}

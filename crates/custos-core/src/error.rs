//! The core error type: a stable [`ErrorCode`] and a kind (whose fault) for every failure.

use custos_provider::ProviderError;
use custos_store::StoreError;
use custos_types::{ErrorCode, KeyName, KeyState, KeyVersion, TypesError, VersionState};

/// Whose fault an error is, which decides how a front end reports it. It follows from the code's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was malformed or asked for something impossible.
    BadInput,
    /// The request carries a value larger than allowed.
    TooLarge,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the needed scope, or a policy refused.
    Forbidden,
    /// The named key, version, token or alias does not exist.
    NotFound,
    /// The request conflicts with current state (a duplicate name, a state that forbids it).
    Conflict,
    /// Too many requests.
    RateLimited,
    /// A provider, the store or the audit log is unavailable; retrying later can help.
    Unavailable,
    /// Something inside Custos failed; the detail is logged, never returned.
    Internal,
}

/// Why a core operation failed. [`CoreError::code`] is the stable code clients match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The caller's request was refused with a stable code (bad input, too large, a conflict, not
    /// found); the message says what was wrong.
    #[error("{message}")]
    Refused {
        /// The stable code; its status says whose fault it is.
        code: ErrorCode,
        /// What was wrong, for the caller.
        message: String,
    },
    /// No key of that name.
    #[error("no key named {0}")]
    KeyNotFound(KeyName),
    /// The key has no such version.
    #[error("key {key} has no version {version}")]
    VersionNotFound {
        /// The key.
        key: KeyName,
        /// The version asked for.
        version: KeyVersion,
    },
    /// The name is taken.
    #[error("a key named {0} exists already")]
    KeyExists(KeyName),
    /// The version exists but its state does not allow the operation.
    #[error("version {version} of key {key} is {state} and cannot sign")]
    VersionNotUsable {
        /// The key.
        key: KeyName,
        /// The version.
        version: KeyVersion,
        /// Its state.
        state: VersionState,
    },
    /// The key's own state forbids using it (disabled, pending deletion, destroyed).
    #[error("key {key} is {}", describe_state(*.state))]
    KeyUnusable {
        /// The key (or sealing key) id.
        key: String,
        /// Its state.
        state: KeyState,
    },
    /// The equivocation guard refused: the key has signed at or above this sequence, with another payload.
    #[error("key {key} has already signed sequence {signed}; refusing to sign a different payload at sequence {sequence}")]
    Equivocation {
        /// The key.
        key: KeyName,
        /// The sequence asked for.
        sequence: u64,
        /// The highest sequence signed.
        signed: u64,
    },
    /// Missing, unknown, expired or revoked token.
    #[error("missing or invalid API token")]
    Unauthenticated,
    /// The token lacks the scope for this operation.
    #[error("this token may not {0}")]
    Forbidden(String),
    /// A signing policy refused the request.
    #[error("policy {policy} refused: {reason}")]
    PolicyDenied {
        /// The policy that decided.
        policy: String,
        /// Why.
        reason: String,
    },
    /// A signing policy holds the request until approvals arrive.
    #[error("policy {policy} requires approvals: {}", requirements.join("; "))]
    ApprovalRequired {
        /// The policy that decided.
        policy: String,
        /// What is still required.
        requirements: Vec<String>,
    },
    /// No provider could serve the request; retrying later can help. The detail is internal.
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot be read or written; retrying later can help. The detail is internal.
    #[error("store: {0}")]
    StoreUnavailable(String),
    /// Every provider failed and emergency mode could not sign: off for this operation, or its limits
    /// reached.
    #[error("{0}")]
    EmergencyRefused(String),
    /// The audit log cannot be written, so the operation was refused (fail closed; retryable).
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// An internal failure; the detail is internal.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_state(state: KeyState) -> String {
    match state {
        KeyState::Enabled => "enabled".into(),
        KeyState::Disabled => "disabled: enable it to use it".into(),
        KeyState::PendingDeletion { at } => {
            format!("scheduled for deletion at {at}: cancel the deletion to use it")
        }
        KeyState::Destroyed => "destroyed".into(),
    }
}

impl CoreError {
    /// A refusal with a stable code and a message for the caller.
    pub fn bad(code: ErrorCode, message: impl Into<String>) -> CoreError {
        CoreError::Refused {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Refused { code, .. } => *code,
            CoreError::KeyNotFound(_) => ErrorCode::KeyNotFound,
            CoreError::VersionNotFound { .. } => ErrorCode::VersionNotFound,
            CoreError::KeyExists(_) => ErrorCode::KeyExists,
            CoreError::VersionNotUsable { .. } => ErrorCode::VersionNotUsable,
            CoreError::KeyUnusable { state, .. } => match state {
                KeyState::PendingDeletion { .. } => ErrorCode::KeyPendingDeletion,
                _ => ErrorCode::KeyDisabled,
            },
            CoreError::Equivocation { .. } => ErrorCode::Equivocation,
            CoreError::Unauthenticated => ErrorCode::Unauthenticated,
            CoreError::Forbidden(_) => ErrorCode::Forbidden,
            CoreError::PolicyDenied { .. } => ErrorCode::PolicyDenied,
            CoreError::ApprovalRequired { .. } => ErrorCode::ApprovalRequired,
            CoreError::Unavailable(_) => ErrorCode::ProviderUnavailable,
            CoreError::StoreUnavailable(_) => ErrorCode::StoreUnavailable,
            CoreError::EmergencyRefused(_) => ErrorCode::EmergencyRestricted,
            CoreError::AuditUnavailable(_) => ErrorCode::AuditUnavailable,
            CoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self.code().status() {
            400 => ErrorKind::BadInput,
            413 => ErrorKind::TooLarge,
            401 => ErrorKind::Unauthenticated,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::RateLimited,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

impl From<TypesError> for CoreError {
    fn from(err: TypesError) -> Self {
        let code = match &err {
            TypesError::InvalidName { .. } => ErrorCode::InvalidName,
            TypesError::UnknownAlgorithm(_) => ErrorCode::UnknownAlgorithm,
            TypesError::UnknownHash(_) => ErrorCode::UnknownHash,
            TypesError::InvalidDigestLength { .. } => ErrorCode::InvalidDigest,
            TypesError::NotSupported(_) => ErrorCode::NotSupported,
            TypesError::InvalidPublicKey(_) => ErrorCode::InvalidPublicKey,
            TypesError::MalformedSignature(_) => ErrorCode::InvalidSignature,
            _ => ErrorCode::InvalidRequest,
        };
        CoreError::bad(code, err.to_string())
    }
}

impl From<StoreError> for CoreError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => CoreError::StoreUnavailable(detail),
            other => CoreError::Internal(other.to_string()),
        }
    }
}

impl From<ProviderError> for CoreError {
    fn from(err: ProviderError) -> Self {
        if err.is_retryable() {
            CoreError::Unavailable(err.to_string())
        } else {
            match err {
                ProviderError::UnsupportedAlgorithm(alg) => CoreError::bad(
                    ErrorCode::UnsupportedAlgorithm,
                    format!("the provider does not support {alg}"),
                ),
                ProviderError::InvalidPayload(why) => {
                    CoreError::bad(ErrorCode::InvalidPayload, why)
                }
                ProviderError::NotSupported(why) => CoreError::bad(ErrorCode::NotSupported, why),
                other => CoreError::Internal(other.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_codes_status() {
        assert_eq!(
            CoreError::bad(ErrorCode::MessageTooLarge, "x").kind(),
            ErrorKind::TooLarge
        );
        assert_eq!(
            CoreError::KeyUnusable {
                key: "k".into(),
                state: KeyState::Disabled
            }
            .code(),
            ErrorCode::KeyDisabled
        );
        assert_eq!(
            CoreError::from(StoreError::Unavailable("x".into())).code(),
            ErrorCode::StoreUnavailable
        );
        assert_eq!(CoreError::Internal("x".into()).kind(), ErrorKind::Internal);
    }
}

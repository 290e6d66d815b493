//! The core error type: a stable machine code and a kind (whose fault) for every failure.

use custos_provider::ProviderError;
use custos_store::StoreError;
use custos_types::{KeyName, KeyVersion, TypesError, VersionState};

/// Whose fault an error is, which decides how a front end reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was malformed or asked for something impossible.
    BadInput,
    /// The request carries a value larger than allowed.
    TooLarge,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the needed scope.
    Forbidden,
    /// The named key or version does not exist.
    NotFound,
    /// The request conflicts with current state (a duplicate name, a version that cannot sign).
    Conflict,
    /// A provider or the store is unavailable; retrying later can help.
    Unavailable,
    /// Something inside Custos failed; the detail is logged, never returned.
    Internal,
}

/// Why a core operation failed. [`CoreError::code`] is the stable code clients match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Bad input, with a stable code (`invalid_name`, `invalid_digest`, `empty_message`, ...).
    #[error("{message}")]
    BadInput {
        /// The stable code.
        code: &'static str,
        /// What was wrong, for the caller.
        message: String,
    },
    /// A value over a configured limit.
    #[error("{message}")]
    TooLarge {
        /// The stable code.
        code: &'static str,
        /// What was too large and the limit.
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
    /// No provider could serve the request; retrying later can help. The detail is internal.
    #[error("{0}")]
    Unavailable(String),
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

impl CoreError {
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> CoreError {
        CoreError::BadInput {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::BadInput { code, .. } | CoreError::TooLarge { code, .. } => code,
            CoreError::KeyNotFound(_) => "key_not_found",
            CoreError::VersionNotFound { .. } => "version_not_found",
            CoreError::KeyExists(_) => "key_exists",
            CoreError::VersionNotUsable { .. } => "version_not_usable",
            CoreError::Equivocation { .. } => "equivocation",
            CoreError::Unauthenticated => "unauthenticated",
            CoreError::Forbidden(_) => "forbidden",
            CoreError::Unavailable(_) => "provider_unavailable",
            CoreError::EmergencyRefused(_) => "emergency_restricted",
            CoreError::AuditUnavailable(_) => "audit_unavailable",
            CoreError::Internal(_) => "internal",
        }
    }

    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::BadInput { .. } => ErrorKind::BadInput,
            CoreError::TooLarge { .. } => ErrorKind::TooLarge,
            CoreError::KeyNotFound(_) | CoreError::VersionNotFound { .. } => ErrorKind::NotFound,
            CoreError::KeyExists(_)
            | CoreError::VersionNotUsable { .. }
            | CoreError::Equivocation { .. } => ErrorKind::Conflict,
            CoreError::Unauthenticated => ErrorKind::Unauthenticated,
            CoreError::Forbidden(_) => ErrorKind::Forbidden,
            CoreError::Unavailable(_)
            | CoreError::EmergencyRefused(_)
            | CoreError::AuditUnavailable(_) => ErrorKind::Unavailable,
            CoreError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<TypesError> for CoreError {
    fn from(err: TypesError) -> Self {
        let code = match &err {
            TypesError::InvalidName { .. } => "invalid_name",
            TypesError::UnknownAlgorithm(_) => "unknown_algorithm",
            TypesError::UnknownHash(_) => "unknown_hash",
            TypesError::InvalidDigestLength { .. } => "invalid_digest",
            TypesError::NotSupported(_) => "not_supported",
            TypesError::InvalidPublicKey(_) => "invalid_public_key",
            TypesError::MalformedSignature(_) => "invalid_signature",
            _ => "invalid_request",
        };
        CoreError::bad(code, err.to_string())
    }
}

impl From<StoreError> for CoreError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => CoreError::Unavailable(format!("store: {detail}")),
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
                    "unsupported_algorithm",
                    format!("the provider does not support {alg}"),
                ),
                ProviderError::InvalidPayload(why) => CoreError::bad("invalid_payload", why),
                ProviderError::NotSupported(why) => CoreError::bad("not_supported", why),
                other => CoreError::Internal(other.to_string()),
            }
        }
    }
}

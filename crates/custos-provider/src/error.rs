//! The provider error type: each variant says whose fault it is and whether trying again can help.

use custos_types::{Algorithm, KeyHandle};

/// Why a provider operation failed.
///
/// Failover reads [`ProviderError::is_retryable`], never the message: a retryable error means the same
/// request may succeed later or on another provider holding the same key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider holds no key with this handle (caller's or configuration's fault; not retryable).
    #[error("the provider holds no key with handle {0}")]
    UnknownKey(KeyHandle),
    /// The provider cannot do this algorithm (caller's fault; not retryable).
    #[error("the provider does not support {0}")]
    UnsupportedAlgorithm(Algorithm),
    /// The payload does not fit the key (a digest for Ed25519, a message for ECDSA; not retryable).
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
    /// The provider does not offer this operation (caller's or configuration's fault; not retryable).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The back-end cannot be reached or is not ready (retryable).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The back-end did not answer in time (retryable).
    #[error("provider timed out")]
    Timeout,
    /// The back-end asked us to slow down (retryable after a pause).
    #[error("provider is throttling requests")]
    Throttled,
    /// The back-end refused the operation: a login failure, a policy on the device (not retryable).
    #[error("provider refused the operation: {0}")]
    Refused(String),
    /// The keystore cannot be unlocked, for example because the master password is wrong (not retryable).
    #[error("keystore cannot be unlocked: {0}")]
    Locked(String),
    /// Stored key material is damaged or inconsistent (not retryable; needs an operator).
    #[error("stored key material is corrupt: {0}")]
    Corrupt(String),
}

impl ProviderError {
    /// Whether trying again, later or on another provider holding the same key, can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Unavailable(_) | ProviderError::Timeout | ProviderError::Throttled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(ProviderError::Unavailable("down".into()).is_retryable());
        assert!(ProviderError::Timeout.is_retryable());
        assert!(ProviderError::Throttled.is_retryable());
        assert!(!ProviderError::UnknownKey(KeyHandle::new("x")).is_retryable());
        assert!(!ProviderError::Refused("pin".into()).is_retryable());
        assert!(!ProviderError::Locked("wrong password".into()).is_retryable());
    }
}

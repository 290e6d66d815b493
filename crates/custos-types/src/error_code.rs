//! The stable error codes of every Custos surface: one typed list with each code's HTTP status and meaning.
//!
//! Clients match on the code string, so a code never changes its spelling or meaning once published. Core
//! returns these; the server answers them with their status; the README and the OpenAPI document list
//! every one (a test holds them to it).

use std::fmt;

macro_rules! error_codes {
    ( $( $(#[$doc:meta])* $variant:ident = $code:literal, $status:literal, $meaning:literal; )* ) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order the documentation lists them.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as clients see it (`key_not_found`).
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status the native API answers it with.
            pub const fn status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// What it means, for the documentation.
            pub const fn meaning(self) -> &'static str {
                match self { $( ErrorCode::$variant => $meaning, )* }
            }

            /// The code with this spelling, if there is one.
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON.
    InvalidJson = "invalid_json", 400, "the body is not valid JSON for this request";
    /// A field is missing, unknown or of the wrong type.
    InvalidRequest = "invalid_request", 400, "a field is missing, unknown, empty, out of range, or of the wrong type (the message names it)";
    /// A byte field is not base64.
    InvalidBase64 = "invalid_base64", 400, "a byte field is not standard base64";
    /// A name breaks the naming rules.
    InvalidName = "invalid_name", 400, "a key, provider or token name breaks the naming rules";
    /// An unknown algorithm.
    UnknownAlgorithm = "unknown_algorithm", 400, "the algorithm is not ed25519, secp256k1 or p256";
    /// An unknown hash.
    UnknownHash = "unknown_hash", 400, "the hash is not sha256 or keccak256";
    /// An unknown signature format.
    UnknownFormat = "unknown_format", 400, "the signature format is not raw or der";
    /// No provider of that name.
    UnknownProvider = "unknown_provider", 400, "no provider of that name is configured";
    /// The provider cannot hold keys of the algorithm.
    UnsupportedAlgorithm = "unsupported_algorithm", 400, "the provider cannot hold keys of this algorithm";
    /// A rotation policy field is invalid.
    InvalidRotationPolicy = "invalid_rotation_policy", 400, "a rotation policy field is invalid or out of its documented range (the message names it)";
    /// The providers of a chain cannot hold the same key.
    ChainCannotShare = "chain_cannot_share", 400, "the providers of the chain cannot hold the same key (one must export, the others import)";
    /// An empty message.
    EmptyMessage = "empty_message", 400, "the message is empty";
    /// An empty batch.
    EmptyBatch = "empty_batch", 400, "the batch has no items";
    /// A digest of the wrong length.
    InvalidDigest = "invalid_digest", 400, "the digest is not 32 bytes";
    /// A signature that does not decode.
    InvalidSignature = "invalid_signature", 400, "the signature does not decode (length, DER)";
    /// Public key bytes that do not decode.
    InvalidPublicKey = "invalid_public_key", 400, "the public key bytes are not a valid key of the algorithm";
    /// A payload the provider refuses as malformed.
    InvalidPayload = "invalid_payload", 400, "the provider refused the bytes to sign as malformed";
    /// A sequence outside the guard's range.
    InvalidSequence = "invalid_sequence", 400, "the sequence is outside 0 ..= 9223372036854775807";
    /// The import token is not the one handed out for this key.
    InvalidImportToken = "invalid_import_token", 400, "the import token is not the one handed out for this key, or it was used up by a failed import";
    /// The import token has expired.
    ImportTokenExpired = "import_token_expired", 400, "the import token has expired; ask for new import parameters";
    /// The imported material is not a key of the expected algorithm.
    IncorrectKeyMaterial = "incorrect_key_material", 400, "the key material does not unwrap to a private key of the key's algorithm; the import token is used up";
    /// An unknown token scope.
    InvalidScope = "invalid_scope", 400, "a token scope is not recognised";
    /// No provider key matches the adopt reference.
    AdoptNotFound = "adopt_not_found", 400, "the provider has no key matching the adopt reference";
    /// The provider key is already a Custos key.
    AdoptConflict = "adopt_conflict", 400, "that provider key already belongs to a Custos key";
    /// The operation does not apply.
    NotSupported = "not_supported", 400, "the operation does not apply to this key, algorithm or provider";
    /// No or bad credentials.
    Unauthenticated = "unauthenticated", 401, "no token, or an unknown, expired or revoked one";
    /// The scopes do not cover the operation.
    Forbidden = "forbidden", 403, "the token's scopes do not cover this operation";
    /// A client certificate is needed.
    ClientCertificateRequired = "client_certificate_required", 403, "the operation needs a client certificate on the allowlist (mutual TLS)";
    /// A policy refused the request.
    PolicyDenied = "policy_denied", 403, "a signing policy refused the request (the message names the policy and why)";
    /// A policy holds the request for approvals.
    ApprovalRequired = "approval_required", 403, "a signing policy requires approvals before this request is signed (the message lists what is still required)";
    /// No such key.
    KeyNotFound = "key_not_found", 404, "no key of that name";
    /// No such version.
    VersionNotFound = "version_not_found", 404, "the key has no such version";
    /// No such token.
    TokenNotFound = "token_not_found", 404, "no token with that id";
    /// No such alias.
    AliasNotFound = "alias_not_found", 404, "no alias of that name";
    /// No such route.
    NotFound = "not_found", 404, "no such route";
    /// The route takes other methods.
    MethodNotAllowed = "method_not_allowed", 405, "the route does not take this method";
    /// The name is taken.
    KeyExists = "key_exists", 409, "a key of that name exists";
    /// The alias is taken.
    AliasExists = "alias_exists", 409, "an alias of that name exists";
    /// The version's state forbids the operation.
    VersionNotUsable = "version_not_usable", 409, "the version's state does not allow the operation";
    /// The key is disabled.
    KeyDisabled = "key_disabled", 409, "the key is disabled: it neither signs nor verifies until enabled";
    /// The key is scheduled for deletion.
    KeyPendingDeletion = "key_pending_deletion", 409, "the key is scheduled for deletion: it neither signs nor verifies unless the deletion is cancelled";
    /// The key state change does not apply.
    InvalidKeyState = "invalid_key_state", 409, "the key's state does not allow this change (for example enabling a key pending deletion)";
    /// The key has no version numbers left.
    VersionLimit = "version_limit", 409, "the key has used every version number";
    /// The equivocation guard refused.
    Equivocation = "equivocation", 409, "the key has signed a different payload at this sequence, or a higher sequence";
    /// The sequence jumps too far.
    SequenceTooFar = "sequence_too_far", 409, "the sequence is further above the key's last signed sequence than its policy allows";
    /// The last admin token cannot be revoked.
    LastAdminToken = "last_admin_token", 409, "revoking this token would leave no usable admin token";
    /// The request body is too large.
    BodyTooLarge = "body_too_large", 413, "the request body is over the limit";
    /// A message is too large.
    MessageTooLarge = "message_too_large", 413, "a message is over the limit";
    /// A batch is too large.
    BatchTooLarge = "batch_too_large", 413, "a batch has too many items";
    /// Too many requests.
    RateLimited = "rate_limited", 429, "the token or address is over its request rate; retry after the Retry-After seconds";
    /// An internal error.
    Internal = "internal", 500, "an internal error; details are in the server log";
    /// No provider could serve the request.
    ProviderUnavailable = "provider_unavailable", 503, "no provider could serve the request; retry later";
    /// The store could not be reached.
    StoreUnavailable = "store_unavailable", 503, "the database could not be read or written; retry later";
    /// The audit log cannot be written.
    AuditUnavailable = "audit_unavailable", 503, "the audit log cannot be written, so nothing was done (fail closed); retry later";
    /// Emergency mode may not sign.
    EmergencyRestricted = "emergency_restricted", 503, "every provider failed and emergency mode may not sign (off for the operation, or its limits reached)";
    /// Too many requests in flight.
    Overloaded = "overloaded", 503, "too many requests in flight; retry shortly";
    /// The request took too long.
    Timeout = "timeout", 503, "the request took longer than the server allows";
}

impl ErrorCode {
    /// Whether trying the same request again later can succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(self.status(), 429 | 503)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(code
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(!code.meaning().is_empty());
        }
        assert_eq!(ErrorCode::parse("nope"), None);
        assert!(ErrorCode::ProviderUnavailable.is_retryable());
        assert!(!ErrorCode::KeyNotFound.is_retryable());
    }
}

//! Custos HTTP API v1: the JSON request and response bodies, shared by the server and the CLI client.
//!
//! Bytes travel as standard base64 (with padding). Errors are `{"error": {"code", "message"}}`; the codes
//! are stable and listed in [`ErrorCode::ALL`].

use serde::{Deserialize, Serialize};

pub use custos_audit::{AuditRecord, Checkpoint};
pub use custos_types::Timestamp;

/// Standard base64, as every byte field in the API uses it.
pub mod b64 {
    use base64::Engine as _;

    /// Encodes bytes.
    pub fn encode(bytes: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Decodes, or `None` when the text is not standard base64.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }
}

/// The stable error codes, each with its HTTP status and meaning: [`ErrorCode::ALL`].
pub use custos_types::ErrorCode;

/// The error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The stable code (see [`ErrorCode::ALL`]).
    pub code: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The key name.
    pub name: String,
    /// `ed25519`, `secp256k1` or `p256`.
    pub algorithm: String,
    /// The provider to hold the key (default: the configured default provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Instead of `provider`: an ordered failover chain, primary first. Every member holds the same key:
    /// the first whose keys can be exported generates it, the others import it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    /// Adopt a key that already exists in the provider instead of generating one (PKCS#11:
    /// `label:<text>` or `id:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<String>,
}

/// A key with all its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    /// The key name.
    pub name: String,
    /// The algorithm.
    pub algorithm: String,
    /// The current version.
    pub current_version: u32,
    /// `standard`, or `bip32` for a BIP32 master.
    pub kind: String,
    /// `enabled`, `disabled`, `pending_deletion` or `destroyed`: only an enabled key signs or verifies.
    pub state: String,
    /// When a key pending deletion is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<Timestamp>,
    /// A free-text description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The provider chain, primary first.
    pub providers: Vec<String>,
    /// When the key was created.
    pub created_at: Timestamp,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// `POST /v1/keys/{name}/schedule-deletion`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletionRequest {
    /// Days until the key is destroyed, 7 to 30 (default 30). Until then it neither signs nor verifies,
    /// and the deletion can be cancelled.
    #[serde(default = "thirty")]
    pub pending_window_days: u32,
}

fn thirty() -> u32 {
    30
}

/// One version of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// Its number.
    pub version: u32,
    /// `current`, `enabled`, `disabled` or `destroyed`.
    pub state: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its public key.
    pub public_key: PublicKeyView,
    /// Where its private key lives.
    pub locations: Vec<LocationView>,
}

/// A public key in every encoding Custos offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicKeyView {
    /// Base64 of the raw key (32 bytes Ed25519; 65-byte uncompressed SEC1 for ECDSA).
    pub raw: String,
    /// PEM SubjectPublicKeyInfo.
    pub pem: String,
    /// Solana address (Ed25519) or EIP-55 Ethereum address (secp256k1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Where one version's private key lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocationView {
    /// The provider instance.
    pub provider: String,
    /// The provider family (`soft`, `pkcs11`, ...).
    pub kind: String,
    /// The provider's handle for the key.
    pub handle: String,
    /// Whether the private key can ever leave that provider.
    pub exportable: bool,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    /// Every key, by name.
    pub keys: Vec<KeyView>,
}

/// `POST /v1/keys/{name}/sign`, and each item of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequestBody {
    /// Base64 message (exactly one of `message` and `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Base64 32-byte digest, ECDSA only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `sha256` (default) or `keccak256`, for an ECDSA message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// A specific version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// `raw` (default) or `der` (ECDSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The equivocation guard: a sequence such as a block height. Refused with 409 `equivocation` when the
    /// key has signed a different payload at this sequence, or anything at a higher one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

/// A signature and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    /// The key name.
    pub key: String,
    /// The version that signed.
    pub version: u32,
    /// The provider that signed.
    pub provider: String,
    /// The algorithm.
    pub algorithm: String,
    /// Base64 signature.
    pub signature: String,
    /// `raw` or `der`.
    pub format: String,
    /// ECDSA recovery id (0 or 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<u8>,
    /// True when every provider failed and an emergency key signed: a different key, whose public key
    /// is `emergency_public_key`. Such a signature does not verify under the key's own public key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
    /// The emergency key's public key, when `emergency` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_public_key: Option<PublicKeyView>,
}

/// `POST /v1/keys/{name}/sign-batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBatchRequest {
    /// The items, each like a single sign request.
    pub items: Vec<SignRequestBody>,
}

/// One batch result: a signature or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchItemResult {
    /// The item was signed.
    Ok(SignResponse),
    /// The item failed; other items are unaffected.
    Err(ErrorBody),
}

/// The batch response: one result per item, in input order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignBatchResponse {
    /// The results.
    pub results: Vec<BatchItemResult>,
}

/// `POST /v1/keys/{name}/verify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequestBody {
    /// Base64 message (exactly one of `message` and `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Base64 32-byte digest, ECDSA only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `sha256` (default) or `keccak256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Base64 signature.
    pub signature: String,
    /// `raw` (default) or `der`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A specific version (default: any version that can verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// The verification result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// Whether the signature is valid.
    pub valid: bool,
    /// The version it is valid under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    /// `ok` when ready, `unavailable` otherwise.
    pub status: String,
    /// `ok` or `unavailable`.
    pub store: String,
    /// `ok`, or `unavailable` while the audit log cannot be written (Custos then refuses to sign).
    pub audit: String,
    /// `ok`, `failing` when the rotation scheduler's last pass failed, or `off`.
    pub scheduler: String,
    /// Each provider's state.
    pub providers: Vec<ProviderHealthView>,
}

/// One provider's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderHealthView {
    /// The provider instance.
    pub name: String,
    /// The provider family.
    pub kind: String,
    /// Whether it can sign now.
    pub available: bool,
    /// Why not, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET`/`PUT /v1/keys/{name}/rotation`: a key's rotation policy and when it next rotates.
///
/// The policy's fields: `interval_days` (required), `overlap_days`, `rotation_time` (`HH:MM:SS`),
/// `time_zone` (IANA), `backup_enabled`, `backup_location` (a directory), `backup_recipient` (`age1…`);
/// the seed's camelCase names are accepted too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationView {
    /// The key.
    pub key: String,
    /// The policy, or null when the key rotates only on demand.
    pub policy: Option<serde_json::Value>,
    /// When the next scheduled rotation is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Timestamp>,
}

/// `GET /v1/providers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderList {
    /// Every configured provider.
    pub providers: Vec<ProviderView>,
}

/// One provider: what it is, whether it answers, and its circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderView {
    /// The provider instance.
    pub name: String,
    /// The provider family.
    pub kind: String,
    /// Algorithms it can hold.
    pub algorithms: Vec<String>,
    /// Whether its keys can leave it (to share with a chain, or to back up).
    pub exportable: bool,
    /// Whether it can import key material.
    pub import: bool,
    /// Whether its health probe answered.
    pub available: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `closed` (used), `open` (skipped) or `half_open` (one probe in flight).
    pub circuit: String,
    /// Retryable failures in a row.
    pub consecutive_failures: u32,
    /// Times signing switched to this provider from another of a chain.
    pub switches_to: u64,
    /// The last error seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A name for the token.
    pub name: String,
    /// Scopes: `admin`, `keys:create`, `keys:read`, `keys:rotate`, `sign:<pattern>`, `verify:<pattern>`.
    pub scopes: Vec<String>,
    /// Lifetime in seconds (default: no expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Also issue an AWS access key for the KMS-compatible API (Signature Version 4), with the same
    /// scopes and life.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aws: bool,
}

/// A new token; the token itself is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTokenResponse {
    /// The token's public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The bearer token. Store it now: Custos keeps only a hash.
    pub token: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The AWS access key id, when `aws` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    /// The AWS secret access key (shown once), when `aws` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<String>,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    /// The public id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The scopes.
    pub scopes: Vec<String>,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    /// When it was last used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    /// Every token.
    pub tokens: Vec<TokenView>,
}

/// `GET /v1/audit` query parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryParams {
    /// Not before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Not after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only this operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Only this actor (token id or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Only this outcome: `ok`, `error` or `denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Records after this sequence number (the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Page size (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One page of audit records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// The records, in sequence order.
    pub records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// `GET /v1/audit/verify`: the server checking its own log, as `custos audit verify` does offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    /// Whether the whole chain and every checkpoint are intact.
    pub valid: bool,
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The first problem found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/audit/key`: the key that signs audit checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditKeyResponse {
    /// Always `ed25519`.
    pub algorithm: String,
    /// Base64 of the raw 32-byte public key.
    pub public_key: String,
    /// PEM SubjectPublicKeyInfo.
    pub pem: String,
}

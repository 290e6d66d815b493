//! Audit records, checkpoints, and how both are hashed and signed.

use custos_types::Timestamp;
use hmac::Mac as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The API token's public id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// SHA-256 fingerprint (hex) of the client certificate, under mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// It failed (see the error code).
    Error,
    /// Authentication or authorisation refused it.
    Denied,
}

impl Outcome {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
        }
    }
}

/// What a caller reports; the log adds the sequence number, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The request id, as in the logs and the `x-request-id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// From where (address and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What (`sign`, `sign_batch`, `verify`, `key_create`, `key_rotate`, `token_create`, `token_revoke`,
    /// `auth_failure`, `startup`, ...).
    pub operation: String,
    /// Which key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What else the operation acted on (a token id, a setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Which version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Which provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The stable error code, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// HMAC-SHA256 (hex) of the request payload under the audit salt: lets an auditor who holds the
    /// payload confirm it, without the log ever holding the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_mac: Option<String>,
    /// Items in a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
}

impl AuditEntry {
    /// An entry for `operation` with outcome `ok` and nothing else set.
    pub fn new(operation: &str) -> AuditEntry {
        AuditEntry {
            request_id: None,
            actor: None,
            source: None,
            operation: operation.to_owned(),
            key: None,
            subject: None,
            version: None,
            provider: None,
            outcome: Outcome::Ok,
            error_code: None,
            payload_mac: None,
            items: None,
        }
    }
}

/// The chain head: the last record's sequence number and hash (zero hash before the first record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last sequence number (0 when empty).
    pub seq: u64,
    /// The last record's hash.
    pub hash: [u8; 32],
}

impl Head {
    /// The head of an empty log.
    pub const GENESIS: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
    pub time: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hex of the previous record's hash.
    pub prev_hash: String,
    /// Hex of this record's hash.
    pub hash: String,
}

/// The hashed part of a record: everything but its own hash, in a fixed field order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a Timestamp,
    #[serde(flatten)]
    entry: &'a AuditEntry,
    prev_hash: &'a str,
}

const RECORD_DOMAIN: &[u8] = b"custos-audit-record-v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"custos-audit-checkpoint-v1\0";

impl AuditRecord {
    /// The hash this record should have: SHA-256 over a domain tag and the canonical JSON of its body.
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = Body {
            seq: self.seq,
            time: &self.time,
            entry: &self.entry,
            prev_hash: &self.prev_hash,
        };
        // Serialising a struct of strings, numbers and options cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update(RECORD_DOMAIN);
        hasher.update(&json);
        hasher.finalize().into()
    }

    /// Appends `entry` after `head` at `time`.
    pub fn seal(head: Head, time: Timestamp, entry: AuditEntry) -> AuditRecord {
        let mut record = AuditRecord {
            seq: head.seq + 1,
            time,
            entry,
            prev_hash: hex::encode(head.hash),
            hash: String::new(),
        };
        record.hash = hex::encode(record.compute_hash());
        record
    }

    /// The head after this record.
    pub fn head(&self) -> Option<Head> {
        let hash: [u8; 32] = hex::decode(&self.hash).ok()?.try_into().ok()?;
        Some(Head {
            seq: self.seq,
            hash,
        })
    }
}

/// A signature over the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The head's sequence number.
    pub seq: u64,
    /// Hex of the head's hash.
    pub head_hash: String,
    /// When it was signed.
    pub time: Timestamp,
    /// Base64-free hex of the audit key's Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes: a domain tag, the sequence number (8 bytes, big-endian) and the head hash.
    pub fn message(head: &Head) -> Vec<u8> {
        let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 40);
        message.extend_from_slice(CHECKPOINT_DOMAIN);
        message.extend_from_slice(&head.seq.to_be_bytes());
        message.extend_from_slice(&head.hash);
        message
    }
}

/// One line of an export (JSON lines): a record or a checkpoint.
// Lines are built and consumed one at a time, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    /// A record.
    Record(AuditRecord),
    /// A checkpoint over the records before it.
    Checkpoint(Checkpoint),
}

/// HMAC-SHA256 (hex) of `payload` under `salt`.
#[expect(clippy::expect_used, reason = "HMAC-SHA256 takes keys of any length")]
pub fn payload_mac(salt: &[u8; 32], payload: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_chain_and_hashes_are_stable() {
        let time: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let first = AuditRecord::seal(Head::GENESIS, time, AuditEntry::new("startup"));
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev_hash, "0".repeat(64));
        let second = AuditRecord::seal(first.head().unwrap(), time, AuditEntry::new("sign"));
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(second.compute_hash(), second.head().unwrap().hash);
        // A stored record round-trips through JSON to the same hash.
        let json = serde_json::to_string(&second).unwrap();
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(hex::encode(back.compute_hash()), second.hash);
        let mut edited = back;
        edited.entry.key = Some("other".into());
        assert_ne!(hex::encode(edited.compute_hash()), second.hash);
    }

    #[test]
    fn checkpoint_message_is_big_endian() {
        let message = Checkpoint::message(&Head {
            seq: 0x0102,
            hash: [7; 32],
        });
        let tail = &message[message.len() - 40..];
        assert_eq!(&tail[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(payload_mac(&[1; 32], b"x").len(), 64);
        assert_ne!(payload_mac(&[1; 32], b"x"), payload_mac(&[2; 32], b"x"));
    }
}

/// Known answers that pin the byte layouts an audit log and its exports depend on. They run in the
/// big-endian (s390x) lane too, so both byte orders must produce these exact bytes.
#[cfg(test)]
mod known_answers {
    use super::*;

    fn fixed_record() -> AuditRecord {
        let mut entry = AuditEntry::new("sign");
        entry.request_id = Some("0011223344556677".into());
        entry.actor = Some(Actor {
            token_id: Some("a1b2".into()),
            token_name: Some("ci".into()),
            cert_fingerprint: None,
        });
        entry.source = Some("127.0.0.1:4242".into());
        entry.key = Some("seq-1".into());
        entry.version = Some(3);
        entry.provider = Some("soft".into());
        entry.payload_mac = Some(payload_mac(&[1; 32], b"block 1"));
        AuditRecord::seal(
            Head {
                seq: 41,
                hash: [0xab; 32],
            },
            "2026-11-21T12:00:00Z".parse().unwrap(),
            entry,
        )
    }

    #[test]
    fn record_hash_and_encoding_are_pinned() {
        let record = fixed_record();
        assert_eq!(record.seq, 42);
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            concat!(
                r#"{"seq":42,"time":"2026-11-21T12:00:00Z","request_id":"0011223344556677","#,
                r#""actor":{"token_id":"a1b2","token_name":"ci"},"source":"127.0.0.1:4242","operation":"sign","#,
                r#""key":"seq-1","version":3,"provider":"soft","outcome":"ok","#,
                r#""payload_mac":"MAC","#,
                r#""prev_hash":"abababababababababababababababababababababababababababababababab","hash":"HASH"}"#
            )
            .replace("MAC", &record.entry.payload_mac.clone().unwrap())
            .replace("HASH", &record.hash)
        );
        assert_eq!(record.hash, KNOWN_RECORD_HASH);
    }

    const KNOWN_RECORD_HASH: &str =
        "60c4f80b8330973d92411819c16e2431353e22b002bf3ed14d2f053238ecd797";

    #[test]
    fn payload_mac_and_checkpoint_bytes_are_pinned() {
        // HMAC-SHA256 with a 32-byte key of 0x01 over "block 1".
        assert_eq!(payload_mac(&[1; 32], b"block 1"), KNOWN_MAC);
        let message = Checkpoint::message(&Head {
            seq: 0x0102_0304_0506_0708,
            hash: [0xcd; 32],
        });
        let mut expected = b"custos-audit-checkpoint-v1\0".to_vec();
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0xcd; 32]);
        assert_eq!(message, expected);
    }

    const KNOWN_MAC: &str = "23bb19a3e6941a24dcb7ebee7f5622dc622dfee3dab777541e81d2b14f82123b";
}

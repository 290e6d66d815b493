//! The request of every operation as a typed struct, decoded from AWS's JSON 1.1 (PascalCase names,
//! base64 blobs). Fields AWS defines that Custos has no use for (`GrantTokens`, `DryRun`, ...) are
//! accepted and ignored, as AWS clients send them.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::KmsError;

/// A base64 blob, decoded; zeroized when dropped (it may be a plaintext).
#[derive(Clone, Default)]
pub(crate) struct Blob(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob(<{} bytes>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        B64.decode(text.as_bytes())
            .map(|b| Blob(Zeroizing::new(b)))
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// Decodes one operation's request: a body that is not JSON is a `SerializationException`, a field of
/// the wrong type or a missing one a `ValidationException` naming it.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            KmsError::validation(e.to_string())
        } else {
            KmsError::new(
                "SerializationException",
                format!("the body is not a JSON object: {e}"),
            )
        }
    })
}

/// An encryption context: string pairs bound to a ciphertext.
pub(crate) type EncryptionContext = BTreeMap<String, String>;

/// `CreateKey`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateKey {
    pub key_spec: Option<String>,
    pub customer_master_key_spec: Option<String>,
    pub key_usage: Option<String>,
    #[serde(default)]
    pub description: String,
    pub origin: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A tag.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tag {
    pub tag_key: String,
    #[serde(default)]
    pub tag_value: String,
}

/// Every operation that names one key and nothing else (`DescribeKey`, `GetPublicKey`, `EnableKey`,
/// `DisableKey`, `CancelKeyDeletion`, `GetKeyRotationStatus`, `ListResourceTags`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyIdOnly {
    pub key_id: String,
}

/// `ListKeys` and `ListAliases` paging (and `ListAliases`'s key filter).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct List {
    pub limit: Option<i64>,
    pub marker: Option<String>,
    pub key_id: Option<String>,
}

/// `ScheduleKeyDeletion`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ScheduleKeyDeletion {
    pub key_id: String,
    pub pending_window_in_days: Option<i64>,
}

/// `Sign`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Sign {
    pub key_id: String,
    pub message: Blob,
    pub message_type: Option<String>,
    pub signing_algorithm: String,
}

/// `Verify`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Verify {
    pub key_id: String,
    pub message: Blob,
    pub message_type: Option<String>,
    pub signing_algorithm: String,
    pub signature: Blob,
}

/// `Encrypt`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Encrypt {
    pub key_id: String,
    pub plaintext: Blob,
    #[serde(default)]
    pub encryption_context: EncryptionContext,
    pub encryption_algorithm: Option<String>,
}

/// `Decrypt`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Decrypt {
    pub key_id: Option<String>,
    pub ciphertext_blob: Blob,
    #[serde(default)]
    pub encryption_context: EncryptionContext,
    pub encryption_algorithm: Option<String>,
}

/// `GenerateDataKey` and `GenerateDataKeyWithoutPlaintext`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateDataKey {
    pub key_id: String,
    pub key_spec: Option<String>,
    pub number_of_bytes: Option<i64>,
    #[serde(default)]
    pub encryption_context: EncryptionContext,
}

/// `CreateAlias` and `UpdateAlias`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Alias {
    pub alias_name: String,
    pub target_key_id: String,
}

/// `DeleteAlias`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteAlias {
    pub alias_name: String,
}

/// `TagResource`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TagResource {
    pub key_id: String,
    pub tags: Vec<Tag>,
}

/// `UntagResource`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UntagResource {
    pub key_id: String,
    pub tag_keys: Vec<String>,
}

/// `GetParametersForImport`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetParametersForImport {
    pub key_id: String,
    pub wrapping_algorithm: String,
    pub wrapping_key_spec: String,
}

/// `ImportKeyMaterial`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImportKeyMaterial {
    pub key_id: String,
    pub import_token: Blob,
    pub encrypted_key_material: Blob,
    pub expiration_model: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_with_their_errors() {
        let sign: Sign = decode(
            br#"{"KeyId":"k","Message":"aGk=","SigningAlgorithm":"ECDSA_SHA_256","GrantTokens":[]}"#,
        )
        .unwrap();
        assert_eq!(sign.message.0.as_slice(), b"hi");
        assert_eq!(
            decode::<Sign>(b"not json").unwrap_err().kind,
            "SerializationException"
        );
        let missing = decode::<Sign>(br#"{"KeyId":"k"}"#).unwrap_err();
        assert_eq!(missing.kind, "ValidationException");
        assert!(missing.message.contains("Message"), "{}", missing.message);
        assert_eq!(
            decode::<Sign>(br#"{"KeyId":"k","Message":"!!","SigningAlgorithm":"x"}"#)
                .unwrap_err()
                .kind,
            "ValidationException"
        );
        let list: List = decode(b"{}").unwrap();
        assert!(list.limit.is_none());
        let context: Encrypt =
            decode(br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"b":"2","a":"1"}}"#)
                .unwrap();
        assert_eq!(
            context.encryption_context.keys().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!format!("{:?}", context.plaintext).contains("hi"));
    }
}

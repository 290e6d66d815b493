//! The request of every path as a typed struct, as BitGo's spec defines it.

use serde::{Deserialize, Serialize};

/// Whose key it is in a BitGo wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    User,
    Backup,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Backup => "backup",
        }
    }

    /// The client-key namespace of this source.
    pub(crate) fn namespace(self) -> &'static str {
        match self {
            Source::User => "bitgo:user",
            Source::Backup => "bitgo:backup",
        }
    }
}

/// An independent key or a TSS share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyType {
    Independent,
    Tss,
}

impl KeyType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Independent => "independent",
            KeyType::Tss => "tss",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<KeyType> {
        match text {
            "independent" => Some(KeyType::Independent),
            "tss" => Some(KeyType::Tss),
            _ => None,
        }
    }
}

/// `POST /key`.
#[derive(Debug, Deserialize)]
pub(crate) struct StoreKey {
    pub prv: String,
    #[serde(rename = "pub")]
    pub public: String,
    pub coin: String,
    pub source: Source,
    #[serde(rename = "type")]
    pub kind: KeyType,
}

/// `POST /key/generate`.
#[derive(Debug, Deserialize)]
pub(crate) struct GenerateKey {
    pub coin: String,
    pub source: Source,
    #[serde(rename = "type")]
    pub kind: KeyType,
}

/// `GET /key/{pub}?source=`.
#[derive(Debug, Deserialize)]
pub(crate) struct SourceQuery {
    pub source: Source,
}

/// `POST /sign`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sign {
    #[serde(rename = "pub")]
    pub public: String,
    pub source: Source,
    pub signable_payload: String,
    pub algorithm: String,
}

/// `POST /generateDataKey`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataKey {
    pub key_type: String,
}

/// `POST /decryptDataKey`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DecryptDataKey {
    pub encrypted_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_as_the_spec_writes_them() {
        let sign: Sign = serde_json::from_str(
            r#"{"pub":"xpub1","source":"backup","signablePayload":"00","algorithm":"ecdsa"}"#,
        )
        .unwrap();
        assert_eq!(
            (sign.source, sign.public.as_str()),
            (Source::Backup, "xpub1")
        );
        assert!(serde_json::from_str::<Sign>(
            r#"{"pub":"x","source":"other","signablePayload":"","algorithm":"e"}"#
        )
        .is_err());
        let store: StoreKey = serde_json::from_str(
            r#"{"prv":"p","pub":"q","coin":"btc","source":"user","type":"tss"}"#,
        )
        .unwrap();
        assert_eq!(store.kind, KeyType::Tss);
        assert_eq!(Source::User.namespace(), "bitgo:user");
        let generate: GenerateKey =
            serde_json::from_str(r#"{"coin":"tsol","source":"backup","type":"independent"}"#)
                .unwrap();
        assert_eq!(
            (generate.coin.as_str(), generate.source),
            ("tsol", Source::Backup)
        );
        assert!(serde_json::from_str::<GenerateKey>(r#"{"coin":"btc","source":"user"}"#).is_err());
        let query: SourceQuery = serde_json::from_str(r#"{"source":"user"}"#).unwrap();
        assert_eq!(query.source, Source::User);
        let data: DataKey = serde_json::from_str(r#"{"keyType":"AES-256"}"#).unwrap();
        assert_eq!(data.key_type, "AES-256");
        assert!(serde_json::from_str::<DataKey>(r#"{"key_type":"AES-256"}"#).is_err());
        let decrypt: DecryptDataKey = serde_json::from_str(r#"{"encryptedKey":"1,2,3"}"#).unwrap();
        assert_eq!(decrypt.encrypted_key, "1,2,3");
        assert_eq!(
            KeyType::parse(KeyType::Independent.as_str()),
            Some(KeyType::Independent)
        );
    }
}

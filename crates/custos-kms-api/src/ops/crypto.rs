//! Cryptography: `Sign` and `Verify` with Custos keys (through the whole sign path), and `Encrypt`,
//! `Decrypt`, `GenerateDataKey` and `GenerateDataKeyWithoutPlaintext` with sealing keys.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use custos_core::{Operation, RequestContext, SignInput, SignRequest, VerifyRequest};
use custos_types::{Algorithm, ErrorCode, HashAlgorithm, KeyRecord, SignatureFormat};
use rand_core::{OsRng, RngCore as _};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{signing_algorithm, spec_of, Key, MAX_MESSAGE};
use crate::requests::{self, decode, EncryptionContext};
use crate::{KmsApi, KmsError};

/// The first bytes of every ciphertext blob Custos makes.
const BLOB_MAGIC: &[u8; 4] = b"CKM1";

/// A `SIGN_VERIFY` key's record, for a caller allowed `op` on it.
async fn signing_key(
    api: &KmsApi,
    ctx: &RequestContext,
    key_id: &str,
    verify: bool,
) -> Result<std::sync::Arc<KeyRecord>, KmsError> {
    let Key::Asymmetric(name) = api.resolve(key_id).await? else {
        return Err(KmsError::new(
            "InvalidKeyUsageException",
            "this operation needs a SIGN_VERIFY key with its key material",
        ));
    };
    let (op, operation) = if verify {
        (Operation::Verify(name.as_str()), "verify")
    } else {
        (Operation::Sign(name.as_str()), "sign")
    };
    Ok(api.keys.key_for(ctx, op, operation, &name).await?)
}

/// What to sign for a KMS message of `message_type`, and the signature's encoding.
fn sign_input(
    record: &KeyRecord,
    signing: &str,
    message: &[u8],
    message_type: Option<&str>,
) -> Result<(SignInput, Option<HashAlgorithm>, SignatureFormat), KmsError> {
    if signing != signing_algorithm(record.algorithm) {
        return Err(KmsError::new(
            "InvalidKeyUsageException",
            format!(
                "key {} ({}) signs with {}, not {signing}",
                record.name,
                spec_of(record.algorithm),
                signing_algorithm(record.algorithm)
            ),
        ));
    }
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(KmsError::validation("Message must be 1 to 4096 bytes"));
    }
    let (input, hash) =
        match (message_type.unwrap_or("RAW"), record.algorithm) {
            ("RAW", Algorithm::Ed25519) => (SignInput::Message(message.to_vec()), None),
            ("RAW", _) => (
                SignInput::Message(message.to_vec()),
                Some(HashAlgorithm::Sha256),
            ),
            ("DIGEST", Algorithm::Ed25519) => return Err(KmsError::validation(
                "ED25519_SHA_512 signs RAW messages; DIGEST needs ED25519_PH_SHA_512 (Ed25519ph), \
                 which Custos does not offer",
            )),
            ("DIGEST", _) if message.len() == 32 => (SignInput::Digest(message.to_vec()), None),
            ("DIGEST", _) => {
                return Err(KmsError::validation(
                    "a DIGEST for ECDSA_SHA_256 is 32 bytes",
                ))
            }
            (other, _) => {
                return Err(KmsError::validation(format!(
                    "MessageType {other} is not RAW or DIGEST"
                )))
            }
        };
    let format = if record.algorithm.is_ecdsa() {
        SignatureFormat::Der
    } else {
        SignatureFormat::Raw
    };
    Ok((input, hash, format))
}

pub(super) async fn sign(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Sign = decode(body)?;
    let record = signing_key(api, ctx, &request.key_id, false).await?;
    let (input, hash, format) = sign_input(
        &record,
        &request.signing_algorithm,
        &request.message.0,
        request.message_type.as_deref(),
    )?;
    let outcome = api
        .keys
        .sign(
            ctx,
            &record.name,
            &SignRequest {
                input,
                hash,
                version: None,
                sequence: None,
            },
        )
        .await?;
    if outcome.emergency.is_some() {
        // A KMS client cannot be told that another key signed: refuse rather than mislead it.
        return Err(KmsError::new(
            "KeyUnavailableException",
            "every provider of the key failed; emergency signatures are not given to KMS clients",
        ));
    }
    let signature = outcome.signature.encode(format)?;
    Ok(json!({
        "KeyId": api.arn(record.name.as_str()),
        "Signature": B64.encode(signature),
        "SigningAlgorithm": request.signing_algorithm,
    }))
}

pub(super) async fn verify(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Verify = decode(body)?;
    let record = signing_key(api, ctx, &request.key_id, true).await?;
    let (input, hash, format) = sign_input(
        &record,
        &request.signing_algorithm,
        &request.message.0,
        request.message_type.as_deref(),
    )?;
    let invalid = || KmsError::new("KMSInvalidSignatureException", "signature is invalid");
    let outcome = api
        .keys
        .verify(
            ctx,
            &record.name,
            &VerifyRequest {
                input,
                hash,
                signature: request.signature.0.to_vec(),
                format,
                version: None,
            },
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::InvalidSignature => invalid(),
            _ => e.into(),
        })?;
    if !outcome.valid {
        return Err(invalid());
    }
    Ok(json!({
        "KeyId": api.arn(record.name.as_str()),
        "SignatureValid": true,
        "SigningAlgorithm": request.signing_algorithm,
    }))
}

/// The caller's encryption context in the bytes the sealing key binds: each pair in key order, each
/// part as a 4-byte big-endian length and its bytes.
fn context_bytes(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in context {
        for part in [k.as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn invalid_ciphertext() -> KmsError {
    KmsError::new(
        "InvalidCiphertextException",
        "The ciphertext is invalid or was not made for this key and context.",
    )
}

/// A ciphertext blob: the magic, the key id (length-prefixed) and the sealed bytes.
fn blob(id: &str, sealed: &[u8]) -> Result<Vec<u8>, KmsError> {
    let mut blob = BLOB_MAGIC.to_vec();
    blob.push(u8::try_from(id.len()).map_err(|_| KmsError::validation("key id too long"))?);
    blob.extend_from_slice(id.as_bytes());
    blob.extend_from_slice(sealed);
    Ok(blob)
}

fn blob_key_id(blob: &[u8]) -> Result<(&str, &[u8]), KmsError> {
    let rest = blob
        .strip_prefix(BLOB_MAGIC.as_slice())
        .ok_or_else(invalid_ciphertext)?;
    let (&len, rest) = rest.split_first().ok_or_else(invalid_ciphertext)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(invalid_ciphertext());
    }
    let (id, sealed) = rest.split_at(len);
    Ok((
        std::str::from_utf8(id).map_err(|_| invalid_ciphertext())?,
        sealed,
    ))
}

async fn symmetric(api: &KmsApi, key_id: &str, operation: &str) -> Result<String, KmsError> {
    match api.resolve(key_id).await? {
        Key::Symmetric(record) => Ok(record.id),
        _ => Err(KmsError::new(
            "InvalidKeyUsageException",
            format!("{operation} needs a symmetric (ENCRYPT_DECRYPT) key"),
        )),
    }
}

fn check_algorithm(algorithm: Option<&str>) -> Result<(), KmsError> {
    match algorithm {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(KmsError::validation(format!(
            "EncryptionAlgorithm {other} is not SYMMETRIC_DEFAULT"
        ))),
    }
}

pub(super) async fn encrypt(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Encrypt = decode(body)?;
    check_algorithm(request.encryption_algorithm.as_deref())?;
    let id = symmetric(api, &request.key_id, "Encrypt").await?;
    let plaintext = &request.plaintext.0;
    if plaintext.is_empty() || plaintext.len() > MAX_MESSAGE {
        return Err(KmsError::validation("Plaintext must be 1 to 4096 bytes"));
    }
    let sealed = api
        .keys
        .seal_with(
            ctx,
            &id,
            plaintext,
            &context_bytes(&request.encryption_context),
        )
        .await?;
    Ok(json!({
        "CiphertextBlob": B64.encode(blob(&id, &sealed)?),
        "KeyId": api.arn(&id),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

pub(super) async fn decrypt(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Decrypt = decode(body)?;
    check_algorithm(request.encryption_algorithm.as_deref())?;
    let (id, sealed) = blob_key_id(&request.ciphertext_blob.0)?;
    if let Some(asked) = &request.key_id {
        if api.resolve(asked).await?.id() != id {
            return Err(KmsError::new(
                "IncorrectKeyException",
                "The key ID in the request does not identify the key that made the ciphertext.",
            ));
        }
    }
    let id = match api.resolve(id).await.map_err(|_| invalid_ciphertext())? {
        Key::Symmetric(record) => record.id,
        _ => return Err(invalid_ciphertext()),
    };
    let plaintext = api
        .keys
        .unseal_with(
            ctx,
            &id,
            sealed,
            &context_bytes(&request.encryption_context),
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::InvalidPayload => invalid_ciphertext(),
            _ => e.into(),
        })?;
    Ok(json!({
        "KeyId": api.arn(&id),
        "Plaintext": B64.encode(plaintext.as_slice()),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

pub(super) async fn generate_data_key(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
    with_plaintext: bool,
) -> Result<Value, KmsError> {
    let request: requests::GenerateDataKey = decode(body)?;
    let id = symmetric(api, &request.key_id, "GenerateDataKey").await?;
    let bytes = match (request.key_spec.as_deref(), request.number_of_bytes) {
        (Some("AES_256"), None) => 32,
        (Some("AES_128"), None) => 16,
        (None, Some(n)) if (1..=1024).contains(&n) => usize::try_from(n).unwrap_or(32),
        _ => {
            return Err(KmsError::validation(
                "give KeySpec (AES_256 or AES_128) or NumberOfBytes (1-1024), not both",
            ))
        }
    };
    let mut plaintext = Zeroizing::new(vec![0u8; bytes]);
    OsRng.fill_bytes(&mut plaintext);
    let sealed = api
        .keys
        .seal_with(
            ctx,
            &id,
            &plaintext,
            &context_bytes(&request.encryption_context),
        )
        .await?;
    let mut answer = json!({
        "CiphertextBlob": B64.encode(blob(&id, &sealed)?),
        "KeyId": api.arn(&id),
    });
    if with_plaintext {
        answer["Plaintext"] = json!(B64.encode(plaintext.as_slice()));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer: the encryption context encoding is fixed (big-endian lengths, sorted keys), so
    /// ciphertexts made before still open.
    #[test]
    fn the_context_encoding_is_pinned() {
        let context =
            EncryptionContext::from([("b".into(), "22".into()), ("a".into(), "1".into())]);
        assert_eq!(
            context_bytes(&context),
            [0, 0, 0, 1, b'a', 0, 0, 0, 1, b'1', 0, 0, 0, 1, b'b', 0, 0, 0, 2, b'2', b'2']
        );
        let made = blob("k1", b"sealed").unwrap();
        assert_eq!(blob_key_id(&made).unwrap(), ("k1", b"sealed".as_slice()));
        assert!(blob_key_id(b"CKM1\x09ab").is_err());
        assert!(blob_key_id(b"nope").is_err());
    }
}

//! The handlers: one per path of the spec, each a translation between BitGo's JSON and the key manager.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use custos_core::{
    ClientKeyFormat, NewClientKey, Operation, RequestContext, SignInput, SignRequest,
};
use custos_http::{ApiError, Auth};
use custos_types::{Algorithm, ClientKeyRecord, ErrorCode, PublicKey};
use rand_core::{OsRng, RngCore as _};
use serde_json::{json, Value};

use crate::requests::{self, KeyType, Source};
use crate::{BitgoApi, BitgoError, BITGO, BITGO_RETRIEVE};

type Answer = Result<Json<Value>, BitgoError>;

/// Coins whose keys are EdDSA (Ed25519); every other coin gets secp256k1 ECDSA keys.
const EDDSA_COINS: &[&str] = &[
    "sol", "near", "sui", "apt", "dot", "algo", "xlm", "ada", "hbar", "ton", "xtz", "icp", "tao",
];

const DATA_KEY_CONTEXT: &[u8] = b"custos-bitgo-data-key-v1";

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BitgoError> {
    serde_json::from_slice(body).map_err(|e| BitgoError::bad(e.to_string()))
}

fn non_empty(field: &str, value: &str) -> Result<(), BitgoError> {
    if value.is_empty() {
        return Err(BitgoError::bad(format!("{field} must not be empty")));
    }
    Ok(())
}

/// The sealing context of a stored key: bound to its source and public key.
fn seal_context(source: Source, public: &str) -> Vec<u8> {
    format!("custos-bitgo-key-v1\0{}\0{public}", source.as_str()).into_bytes()
}

fn short(public: &str) -> String {
    public.chars().take(24).collect()
}

fn not_found(public: &str, source: Source) -> BitgoError {
    BitgoError::new(
        StatusCode::NOT_FOUND,
        format!(
            "Entry with pub {}... and source {} not found in database",
            short(public),
            source.as_str()
        ),
    )
}

/// Comma-separated decimal bytes, as the spec carries keys.
fn byte_list(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_byte_list(text: &str) -> Option<Vec<u8>> {
    text.split(',')
        .map(|b| b.trim().parse::<u8>().ok())
        .collect()
}

fn algorithm_for(coin: &str) -> Algorithm {
    let base = coin
        .strip_prefix('t')
        .filter(|b| EDDSA_COINS.contains(b))
        .unwrap_or(coin);
    if EDDSA_COINS.contains(&base) {
        Algorithm::Ed25519
    } else {
        Algorithm::Secp256k1
    }
}

/// How a coin's stored `prv` signs: an `xprv` for UTXO coins, 32 bytes of hex otherwise.
fn format_for(coin: &str, prv: &str) -> ClientKeyFormat {
    if crate::utxo::is_utxo(coin) && prv.trim_start().starts_with("xprv") {
        ClientKeyFormat::Xprv
    } else {
        ClientKeyFormat::Hex(algorithm_for(coin))
    }
}

/// The public key as BitGo-style wallets show it: base58 for Ed25519, compressed SEC1 hex for
/// secp256k1.
fn public_text(key: &PublicKey) -> String {
    let bytes = key.as_bytes();
    match key.algorithm() {
        Algorithm::Ed25519 => bs58::encode(bytes).into_string(),
        _ => {
            // Uncompressed SEC1 is 0x04 ‖ x ‖ y; compressed is (2 + parity of y) ‖ x.
            let mut compressed = vec![2 + (bytes[64] & 1)];
            compressed.extend_from_slice(&bytes[1..33]);
            hex::encode(compressed)
        }
    }
}

fn attributes(coin: &str, kind: KeyType) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("coin".to_owned(), coin.to_owned()),
        ("type".to_owned(), kind.as_str().to_owned()),
    ])
}

fn kind_of(record: &ClientKeyRecord) -> KeyType {
    record
        .attributes
        .get("type")
        .and_then(|t| KeyType::parse(t))
        .unwrap_or(KeyType::Independent)
}

fn authenticated(auth: Result<Auth, ApiError>) -> Result<RequestContext, BitgoError> {
    Ok(auth?.0)
}

async fn record(
    api: &BitgoApi,
    ctx: &RequestContext,
    op: Operation<'_>,
    source: Source,
    public: &str,
) -> Result<ClientKeyRecord, BitgoError> {
    api.keys()
        .client_key(ctx, op, source.namespace(), public)
        .await?
        .ok_or_else(|| not_found(public, source))
}

/// `POST /key`: seal and store a private key; it also signs when it is one.
pub async fn store_key(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    body: Bytes,
) -> Answer {
    let ctx = authenticated(auth)?;
    api.keys()
        .authorize(&ctx, Operation::Extension(&BITGO), "client_key_store")
        .await?;
    let request: requests::StoreKey = parse(&body)?;
    non_empty("prv", &request.prv)?;
    non_empty("pub", &request.public)?;
    non_empty("coin", &request.coin)?;
    let stored = api
        .keys()
        .store_client_key(
            &ctx,
            Operation::Extension(&BITGO),
            request.source.namespace(),
            &request.public,
            request.prv.as_bytes(),
            &seal_context(request.source, &request.public),
            Some(format_for(&request.coin, &request.prv)),
            attributes(&request.coin, request.kind),
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::KeyExists => BitgoError::new(
                StatusCode::CONFLICT,
                format!(
                    "Duplicated Key for source: {} and pub: {}...",
                    request.source.as_str(),
                    short(&request.public)
                ),
            ),
            _ => e.into(),
        })?;
    Ok(Json(json!({
        "pub": stored.id,
        "coin": request.coin,
        "source": request.source,
        "type": request.kind,
    })))
}

/// `GET /key/{pub}?source=`: a stored private key, decrypted. Needs `bitgo:retrieve`.
pub async fn get_key(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    Path(public): Path<String>,
    query: Result<Query<requests::SourceQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let ctx = authenticated(auth)?;
    let op = Operation::Extension(&BITGO_RETRIEVE);
    api.keys()
        .authorize(&ctx, op, "client_key_retrieve")
        .await?;
    let Query(query) = query.map_err(|_| {
        BitgoError::bad("the query parameter source is required and is one of [user, backup]")
    })?;
    let stored = record(&api, &ctx, op, query.source, &public).await?;
    let prv = api
        .keys()
        .retrieve_client_key(
            &ctx,
            op,
            &stored,
            &seal_context(query.source, &public),
            api.retrieve_needs_client_cert,
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::ClientCertificateRequired => BitgoError::new(
                StatusCode::FORBIDDEN,
                "retrieving a private key needs a client certificate on the allowlist",
            ),
            ErrorCode::NotSupported => not_found(&public, query.source),
            _ => e.into(),
        })?;
    let prv = String::from_utf8(prv.to_vec()).map_err(|_| {
        BitgoError::from(custos_core::CoreError::Internal(
            "a stored key is not text".into(),
        ))
    })?;
    Ok(Json(json!({
        "prv": prv,
        "pub": stored.id,
        "source": query.source,
        "type": kind_of(&stored),
    })))
}

/// `POST /key/generate`: a new key held by the default provider, as a Custos key (a BIP32 master for a
/// UTXO coin, answered as its `xpub`).
pub async fn generate_key(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    body: Bytes,
) -> Answer {
    let ctx = authenticated(auth)?;
    api.keys()
        .authorize(&ctx, Operation::Extension(&BITGO), "key_create")
        .await?;
    let request: requests::GenerateKey = parse(&body)?;
    non_empty("coin", &request.coin)?;
    // A `tss` key generated here is an ordinary key held by the provider, labelled as the caller asked
    // (multi-party shares themselves come from the wallet's ceremony and arrive through `POST /key`).
    let kind = if crate::utxo::is_utxo(&request.coin) {
        NewClientKey::Bip32
    } else {
        NewClientKey::Key(algorithm_for(&request.coin))
    };
    let (stored, _) = api
        .keys()
        .generate_client_key(
            &ctx,
            Operation::Extension(&BITGO),
            request.source.namespace(),
            kind,
            attributes(&request.coin, request.kind),
            |public, chain_code| match chain_code {
                Some(code) => crate::utxo::xpub(public.as_bytes(), code)
                    .map_err(custos_core::CoreError::Internal),
                None => Ok(public_text(public)),
            },
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::KeyExists => BitgoError::new(StatusCode::CONFLICT, e.to_string()),
            _ => e.into(),
        })?;
    Ok(Json(json!({
        "pub": stored.id,
        "coin": request.coin,
        "source": request.source,
        "type": request.kind,
    })))
}

/// The payload as bytes: hex, with or without `0x`.
fn payload_bytes(text: &str) -> Result<Vec<u8>, BitgoError> {
    let hex_text = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(hex_text)
        .map_err(|_| BitgoError::bad("signablePayload must be hex (optionally 0x-prefixed)"))
}

/// The answer for a signature: `0x{r}{s}{v}` (v = 27 + recovery id) for ECDSA, hex for EdDSA.
fn signature_text(signature: &custos_types::Signature) -> String {
    match signature.recovery_id() {
        Some(id) => format!("0x{}{:02x}", hex::encode(signature.raw()), 27 + id),
        None => hex::encode(signature.raw()),
    }
}

/// `POST /sign`: signs with the Custos key behind a generated or stored key; a PSBT is signed input by
/// input with children of a BIP32 master, inside the provider.
pub async fn sign(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    body: Bytes,
) -> Answer {
    let ctx = authenticated(auth)?;
    let op = Operation::Extension(&BITGO);
    api.keys().authorize(&ctx, op, "sign").await?;
    let request: requests::Sign = parse(&body)?;
    non_empty("pub", &request.public)?;
    // An unknown key is 404 before anything about the payload is judged, as the spec orders it.
    let stored = record(&api, &ctx, op, request.source, &request.public).await?;
    let wanted = match request.algorithm.as_str() {
        "ecdsa" => Algorithm::Secp256k1,
        "eddsa" => Algorithm::Ed25519,
        other => {
            return Err(BitgoError::bad(format!(
                "algorithm must be one of [ecdsa, eddsa], not {other:?}"
            )))
        }
    };
    let payload = payload_bytes(&request.signable_payload)?;
    if payload.is_empty() {
        return Err(BitgoError::bad("signablePayload must not be empty"));
    }
    let context = seal_context(request.source, &request.public);
    if payload.starts_with(crate::utxo::PSBT_MAGIC) {
        if wanted != Algorithm::Secp256k1 {
            return Err(BitgoError::bad("a PSBT is signed with ecdsa"));
        }
        let key = api
            .keys()
            .client_signing_key(&ctx, op, &stored, &context, ClientKeyFormat::Xprv)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::NotSupported | ErrorCode::InvalidPayload => BitgoError::bad(
                    "this key is not a BIP32 key: PSBTs are signed by keys generated for UTXO coins, \
                     or stored as an xprv",
                ),
                _ => e.into(),
            })?;
        let master = key
            .current()
            .map(|v| v.public_key.as_bytes().to_vec())
            .ok_or_else(|| {
                BitgoError::from(custos_core::CoreError::Internal(
                    "no current version".into(),
                ))
            })?;
        let fingerprint = crate::utxo::fingerprint(&master).map_err(BitgoError::bad)?;
        let mut psbt = bitcoin::psbt::Psbt::deserialize(&payload)
            .map_err(|e| BitgoError::bad(format!("not a valid PSBT: {e}")))?;
        for signable in crate::utxo::signables(&psbt, fingerprint).map_err(BitgoError::bad)? {
            let expected = PublicKey::from_bytes(
                Algorithm::Secp256k1,
                &signable.public.serialize_uncompressed(),
            )
            .map_err(custos_core::CoreError::from)?;
            let signature = api
                .keys()
                .sign_derived(
                    &ctx,
                    op,
                    &key.name,
                    &signable.path,
                    &signable.digest,
                    &expected,
                )
                .await
                .map_err(|e| match e.code() {
                    ErrorCode::InvalidPublicKey => BitgoError::bad(format!(
                        "input {}: the key derived along the PSBT's path is not the one it names",
                        signable.index
                    )),
                    _ => e.into(),
                })?;
            let der = signature
                .encode(custos_types::SignatureFormat::Der)
                .map_err(custos_core::CoreError::from)?;
            crate::utxo::add_signature(&mut psbt, &signable, &der).map_err(BitgoError::bad)?;
        }
        return Ok(Json(json!({ "signature": hex::encode(psbt.serialize()) })));
    }
    if wanted.is_ecdsa() && payload.len() != 32 {
        return Err(BitgoError::bad(
            "for ecdsa, signablePayload is a PSBT or the 32-byte hash to sign (an operation hash)",
        ));
    }
    let key = api
        .keys()
        .client_signing_key(&ctx, op, &stored, &context, ClientKeyFormat::Hex(wanted))
        .await
        .map_err(|e| match e.code() {
            ErrorCode::InvalidPayload => BitgoError::bad(
                "the stored private key is not a 32-byte hex key, which is what Custos signs with",
            ),
            _ => e.into(),
        })?;
    if key.algorithm != wanted {
        return Err(BitgoError::bad(format!(
            "key {}... does not sign with {}",
            short(&request.public),
            request.algorithm
        )));
    }
    let input = if wanted.is_ecdsa() {
        SignInput::Digest(payload)
    } else {
        SignInput::Message(payload)
    };
    let outcome = api
        .keys()
        .sign_as(&ctx, op, &key.name, &SignRequest::new(input))
        .await?;
    Ok(Json(
        json!({ "signature": signature_text(&outcome.signature) }),
    ))
}

/// `POST /generateDataKey`: a fresh data key, and the same key sealed by the provider.
pub async fn generate_data_key(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    body: Bytes,
) -> Answer {
    let ctx = authenticated(auth)?;
    let op = Operation::Extension(&BITGO);
    api.keys()
        .authorize(&ctx, op, "bitgo_generate_data_key")
        .await?;
    let request: requests::DataKey = parse(&body)?;
    // AES-256: 32 random bytes. RSA-2048 and ECDSA-P256: a fresh private key as PKCS#8 DER.
    let key: zeroize::Zeroizing<Vec<u8>> = match request.key_type.as_str() {
        "AES-256" => {
            let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
            OsRng.fill_bytes(&mut key);
            key
        }
        "ECDSA-P256" => {
            use p256::pkcs8::EncodePrivateKey as _;
            let der = p256::SecretKey::random(&mut OsRng)
                .to_pkcs8_der()
                .map_err(|e| BitgoError::from(custos_core::CoreError::Internal(e.to_string())))?;
            zeroize::Zeroizing::new(der.as_bytes().to_vec())
        }
        "RSA-2048" => tokio::task::spawn_blocking(|| {
            use aws_lc_rs::encoding::AsDer as _;
            let key =
                aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|e| e.to_string())?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                key.as_der().map_err(|e| e.to_string())?;
            Ok::<_, String>(zeroize::Zeroizing::new(der.as_ref().to_vec()))
        })
        .await
        .map_err(|e| BitgoError::from(custos_core::CoreError::Internal(e.to_string())))?
        .map_err(|e| BitgoError::from(custos_core::CoreError::Internal(e)))?,
        other => {
            return Err(BitgoError::bad(format!(
                "keyType must be one of [AES-256, RSA-2048, ECDSA-P256], not {:?}",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let sealed = api
        .keys()
        .seal_secret(
            &ctx,
            op,
            "bitgo_generate_data_key",
            DATA_KEY_CONTEXT,
            &key,
            request.key_type.clone(),
        )
        .await?;
    Ok(Json(json!({
        "plaintextKey": byte_list(&key),
        "encryptedKey": byte_list(&sealed),
    })))
}

/// `POST /decryptDataKey`: the data key inside an `encryptedKey` from `generateDataKey`.
pub async fn decrypt_data_key(
    State(api): State<BitgoApi>,
    auth: Result<Auth, ApiError>,
    body: Bytes,
) -> Answer {
    let ctx = authenticated(auth)?;
    let op = Operation::Extension(&BITGO);
    api.keys()
        .authorize(&ctx, op, "bitgo_decrypt_data_key")
        .await?;
    let request: requests::DecryptDataKey = parse(&body)?;
    let not_ours = || {
        BitgoError::new(
            StatusCode::NOT_FOUND,
            "Encrypted key not found: it was not made by this key provider, or it was altered",
        )
    };
    let sealed = parse_byte_list(&request.encrypted_key).ok_or_else(not_ours)?;
    let key = api
        .keys()
        .unseal_secret(
            &ctx,
            op,
            "bitgo_decrypt_data_key",
            DATA_KEY_CONTEXT,
            &sealed,
        )
        .await
        .map_err(|e| match e.code() {
            ErrorCode::InvalidPayload => not_ours(),
            _ => e.into(),
        })?;
    Ok(Json(json!({ "plaintextKey": byte_list(&key) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coins_pick_their_algorithm_and_format() {
        assert_eq!(algorithm_for("sol"), Algorithm::Ed25519);
        assert_eq!(algorithm_for("tsol"), Algorithm::Ed25519);
        assert_eq!(algorithm_for("eth"), Algorithm::Secp256k1);
        assert_eq!(format_for("btc", "xprv9s21..."), ClientKeyFormat::Xprv);
        assert_eq!(
            format_for("btc", "ab"),
            ClientKeyFormat::Hex(Algorithm::Secp256k1)
        );
        assert_eq!(
            format_for("eth", "xprv"),
            ClientKeyFormat::Hex(Algorithm::Secp256k1)
        );
        assert_eq!(parse_byte_list("1, 2,3"), Some(vec![1, 2, 3]));
        assert_eq!(parse_byte_list("1,x"), None);
        assert_eq!(byte_list(&[0, 255]), "0,255");
        assert_eq!(payload_bytes("0x0aff").unwrap(), [10, 255]);
        assert!(payload_bytes("zz").is_err());
    }
}

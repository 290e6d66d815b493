//! Imported key material: `GetParametersForImport` (a one-time RSA wrapping key and token, made by core)
//! and `ImportKeyMaterial` (unwrapped by core in constant time; a failed attempt ends the token).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use custos_core::{RequestContext, WrappingAlgorithm};
use serde_json::{json, Value};

use super::Key;
use crate::requests::{self, decode};
use crate::{KmsApi, KmsError};

pub(super) async fn parameters_for_import(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::GetParametersForImport = decode(body)?;
    let Key::Pending(import) = api.resolve(&request.key_id).await? else {
        return Err(KmsError::new(
            "UnsupportedOperationException",
            "only a key created with Origin EXTERNAL and no key material yet takes an import",
        ));
    };
    let algorithm = WrappingAlgorithm::parse(&request.wrapping_algorithm).ok_or_else(|| {
        KmsError::validation("WrappingAlgorithm must be RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1")
    })?;
    let bits = match request.wrapping_key_spec.as_str() {
        "RSA_2048" => 2048,
        "RSA_3072" => 3072,
        "RSA_4096" => 4096,
        _ => {
            return Err(KmsError::validation(
                "WrappingKeySpec must be RSA_2048, RSA_3072 or RSA_4096",
            ))
        }
    };
    let parameters = api
        .keys
        .import_parameters(ctx, &import.id, algorithm, bits)
        .await?;
    Ok(json!({
        "KeyId": api.arn(&import.id),
        "ImportToken": B64.encode(parameters.token),
        "PublicKey": B64.encode(parameters.public_key_der),
        "ParametersValidTo": parameters.valid_to.as_second(),
    }))
}

pub(super) async fn import_key_material(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::ImportKeyMaterial = decode(body)?;
    let Key::Pending(import) = api.resolve(&request.key_id).await? else {
        return Err(KmsError::new(
            "KMSInvalidStateException",
            "the key is not waiting for key material",
        ));
    };
    if request
        .expiration_model
        .as_deref()
        .is_some_and(|m| m != "KEY_MATERIAL_DOES_NOT_EXPIRE")
    {
        return Err(KmsError::validation(
            "Custos keeps imported key material: ExpirationModel must be KEY_MATERIAL_DOES_NOT_EXPIRE",
        ));
    }
    api.keys
        .import_material(
            ctx,
            &import.id,
            &request.import_token.0,
            &request.encrypted_key_material.0,
        )
        .await?;
    Ok(json!({}))
}

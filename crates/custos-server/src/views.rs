//! Conversions between core values and API bodies, including base64 decoding of request fields.

use custos_api::{
    b64, KeyView, LocationView, PublicKeyView, SignRequestBody, SignResponse, VerifyRequestBody,
    VersionView,
};
use custos_core::{KeyManager, SignInput, SignOutcome, SignRequest, VerifyRequest};
use custos_http::ApiError;
use custos_types::{
    ErrorCode, HashAlgorithm, KeyName, KeyRecord, KeyVersion, PublicKey, SignatureFormat,
};

pub fn public_key(key: &PublicKey) -> PublicKeyView {
    PublicKeyView {
        raw: b64::encode(key.as_bytes()),
        pem: key.to_pem(),
        address: key.address(),
    }
}

pub fn key(manager: &KeyManager, key: &KeyRecord) -> KeyView {
    KeyView {
        name: key.name.to_string(),
        algorithm: key.algorithm.to_string(),
        current_version: key.current().map(|v| v.version.0).unwrap_or_default(),
        kind: key.kind.as_str().to_owned(),
        state: key.state.as_str().to_owned(),
        deletion_date: key.state.deletion_date(),
        description: key.description.clone(),
        providers: key.providers.iter().map(ToString::to_string).collect(),
        created_at: key.created_at,
        versions: key
            .versions
            .iter()
            .map(|v| VersionView {
                version: v.version.0,
                state: v.state.to_string(),
                created_at: v.created_at,
                public_key: public_key(&v.public_key),
                locations: v
                    .locations
                    .iter()
                    .map(|l| {
                        let provider = manager.provider(&l.provider);
                        LocationView {
                            provider: l.provider.to_string(),
                            kind: provider
                                .map(|p| p.kind())
                                .unwrap_or("unconfigured")
                                .to_owned(),
                            handle: l.handle.to_string(),
                            exportable: provider.is_none_or(|p| p.capabilities().exportable),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn bytes(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    b64::decode(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidBase64,
            format!("{field} is not standard base64"),
        )
    })
}

fn input(message: &Option<String>, digest: &Option<String>) -> Result<SignInput, ApiError> {
    match (message, digest) {
        (Some(m), None) => Ok(SignInput::Message(bytes("message", m)?)),
        (None, Some(d)) => Ok(SignInput::Digest(bytes("digest", d)?)),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give exactly one of message and digest (base64)",
        )),
    }
}

fn hash(hash: &Option<String>) -> Result<Option<HashAlgorithm>, ApiError> {
    hash.as_deref()
        .map(|h| h.parse().map_err(custos_core::CoreError::from))
        .transpose()
        .map_err(ApiError::from)
}

pub fn format(format: &Option<String>) -> Result<SignatureFormat, ApiError> {
    match format.as_deref() {
        None => Ok(SignatureFormat::Raw),
        Some(f) => f
            .parse()
            .map_err(|_| ApiError::new(ErrorCode::UnknownFormat, "format must be raw or der")),
    }
}

pub fn sign_request(body: &SignRequestBody) -> Result<(SignRequest, SignatureFormat), ApiError> {
    if let Some(sequence) = body.sequence {
        if sequence > custos_core::MAX_SEQUENCE {
            return Err(ApiError::new(
                ErrorCode::InvalidSequence,
                format!(
                    "sequence must be at most {}, not {sequence}",
                    custos_core::MAX_SEQUENCE
                ),
            ));
        }
    }
    let request = SignRequest {
        input: input(&body.message, &body.digest)?,
        hash: hash(&body.hash)?,
        version: body.version.map(KeyVersion),
        sequence: body.sequence,
    };
    Ok((request, format(&body.format)?))
}

pub fn verify_request(body: &VerifyRequestBody) -> Result<VerifyRequest, ApiError> {
    Ok(VerifyRequest {
        input: input(&body.message, &body.digest)?,
        hash: hash(&body.hash)?,
        signature: bytes("signature", &body.signature)?,
        format: format(&body.format)?,
        version: body.version.map(KeyVersion),
    })
}

pub fn sign_response(
    name: &KeyName,
    outcome: &SignOutcome,
    format: SignatureFormat,
) -> Result<SignResponse, ApiError> {
    let signature = outcome
        .signature
        .encode(format)
        .map_err(custos_core::CoreError::from)?;
    Ok(SignResponse {
        key: name.to_string(),
        version: outcome.version.0,
        provider: outcome.provider.to_string(),
        algorithm: outcome.signature.algorithm().to_string(),
        signature: b64::encode(signature),
        format: match format {
            SignatureFormat::Raw => "raw",
            SignatureFormat::Der => "der",
        }
        .to_owned(),
        recovery_id: outcome.signature.recovery_id(),
        emergency: outcome.emergency.is_some(),
        emergency_public_key: outcome.emergency.as_ref().map(public_key),
    })
}

//! The AWS KMS-compatible API: `POST /` with `X-Amz-Target: TrentService.<Op>` and
//! `application/x-amz-json-1.1`, authenticated with Signature Version 4, so that tools that sign through
//! AWS KMS (the `aws` CLI, boto3, the AWS SDKs) sign through Custos by changing only the endpoint.
//!
//! Key ids: a key made by `CreateKey` gets a UUID id, which is also its Custos key name; any existing
//! Custos key can be named by its Custos name; ARNs (`arn:aws:kms:<region>:<account>:key/<id>`) and
//! aliases (`alias/<name>`, or their ARNs) resolve to those. Asymmetric keys are Custos keys (every
//! signature goes through the key manager: provider chain, verification, audit). Symmetric keys
//! (`SYMMETRIC_DEFAULT`) are names for sealing under the configured provider's own key (on an HSM, an AES
//! key that never leaves it), bound to the key id and the encryption context. KMS-only state (aliases,
//! symmetric keys, key states) lives in the store's settings.
//!
//! Access keys come from `custos token create --aws`; an access key carries its token's scopes:
//! `Sign`/`Encrypt`/`Decrypt`/`GenerateDataKey` need `sign:<key>`, `Verify` needs `verify:<key>`,
//! `CreateKey`/`CreateAlias` need `keys:create`, reads need `keys:read`, key state changes need
//! `keys:rotate`.

mod ops;
pub mod sigv4;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use custos_core::{Access, KeyManager, RequestContext};
use custos_provider::KeyProvider;
use custos_store::Store;

/// What the API needs.
#[derive(Clone)]
pub struct KmsApi {
    pub(crate) keys: Arc<KeyManager>,
    pub(crate) access: Arc<Access>,
    pub(crate) store: Arc<dyn Store>,
    /// Seals symmetric-key ciphertexts.
    pub(crate) sealer: Arc<dyn KeyProvider>,
    /// The region and account shown in ARNs.
    pub(crate) region: String,
    pub(crate) account: String,
}

impl std::fmt::Debug for KmsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsApi")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl KmsApi {
    /// The API over `keys`, with access keys from `access`, symmetric sealing by `sealer`, and ARNs in
    /// `region` and the 12-digit `account`.
    pub fn new(
        keys: Arc<KeyManager>,
        access: Arc<Access>,
        store: Arc<dyn Store>,
        sealer: Arc<dyn KeyProvider>,
        region: String,
        account: String,
    ) -> KmsApi {
        KmsApi {
            keys,
            access,
            store,
            sealer,
            region,
            account,
        }
    }
}

/// An error as AWS shapes it: `{"__type": "...", "message": "..."}` with AWS's status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    /// The AWS exception name (`NotFoundException`, `ValidationException`, ...).
    pub kind: &'static str,
    /// What was wrong.
    pub message: String,
    /// The HTTP status AWS uses for it.
    pub status: StatusCode,
}

impl KmsError {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> KmsError {
        let status = match kind {
            "KMSInternalException" | "DependencyTimeoutException" => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            "KMSInvalidStateException" | "DisabledException" | "KeyUnavailableException" => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_REQUEST,
        };
        KmsError {
            kind,
            message: message.into(),
            status,
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> KmsError {
        KmsError::new("ValidationException", message)
    }
}

impl From<custos_core::CoreError> for KmsError {
    fn from(err: custos_core::CoreError) -> Self {
        use custos_core::ErrorKind;
        match err.kind() {
            ErrorKind::BadInput | ErrorKind::TooLarge => KmsError::validation(err.to_string()),
            ErrorKind::NotFound => KmsError::new("NotFoundException", err.to_string()),
            ErrorKind::Unauthenticated => KmsError::new(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            ErrorKind::Forbidden => KmsError::new("AccessDeniedException", err.to_string()),
            ErrorKind::Conflict => KmsError::new("KMSInvalidStateException", err.to_string()),
            ErrorKind::Unavailable => KmsError::new("KeyUnavailableException", err.to_string()),
            _ => {
                tracing::error!(error = %err, "KMS API internal error");
                KmsError::new("KMSInternalException", "internal error")
            }
        }
    }
}

impl From<custos_store::StoreError> for KmsError {
    fn from(err: custos_store::StoreError) -> Self {
        custos_core::CoreError::from(err).into()
    }
}

impl From<custos_provider::ProviderError> for KmsError {
    fn from(err: custos_provider::ProviderError) -> Self {
        custos_core::CoreError::from(err).into()
    }
}

impl From<custos_types::TypesError> for KmsError {
    fn from(err: custos_types::TypesError) -> Self {
        KmsError::validation(err.to_string())
    }
}

impl IntoResponse for KmsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.kind, "message": self.message });
        (
            self.status,
            [("content-type", "application/x-amz-json-1.1")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The routes of the API: `POST /`.
pub fn router(api: KmsApi) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::post(handle))
        .with_state(api)
}

/// The handler for `POST /`: checks the signature, then runs the operation named by `X-Amz-Target`.
pub async fn handle(
    State(api): State<KmsApi>,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let peer = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    match serve(&api, peer, &parts.method, &parts.uri, &parts.headers, &body).await {
        Ok(json) => (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            json.to_string(),
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

async fn serve(
    api: &KmsApi,
    peer: Option<std::net::SocketAddr>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, KmsError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| KmsError::new("UnknownOperationException", "no X-Amz-Target header"))?;
    let operation = target.strip_prefix("TrentService.").ok_or_else(|| {
        KmsError::new(
            "UnknownOperationException",
            format!("unknown target {target}"),
        )
    })?;
    let principal = authenticate(api, method, uri, headers, body)?;
    let ctx = RequestContext {
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default(),
        principal: Some(principal),
        cert_fingerprint: None,
        source: peer.map(|p| p.ip().to_string()),
    };
    let input: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            KmsError::new(
                "SerializationException",
                format!("the body is not JSON: {e}"),
            )
        })?
    };
    if !input.is_object() {
        return Err(KmsError::new(
            "SerializationException",
            "the body is not a JSON object",
        ));
    }
    ops::run(api, &ctx, operation, &input).await
}

fn authenticate(
    api: &KmsApi,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<custos_core::Principal, KmsError> {
    use sigv4::SigV4Error;
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            KmsError::new(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let auth = sigv4::parse(header).map_err(|_| {
        KmsError::new(
            "IncompleteSignatureException",
            "the Authorization header is malformed",
        )
    })?;
    let (principal, secret) = api.access.aws_secret(&auth.access_key_id).map_err(|_| {
        KmsError::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    })?;
    match sigv4::verify(
        &auth,
        &secret,
        method,
        uri,
        headers,
        body,
        jiff::Timestamp::now(),
    ) {
        Ok(()) => Ok(principal),
        Err(SigV4Error::Expired) => Err(KmsError::new(
            "InvalidSignatureException",
            "Signature expired: the request time is more than 15 minutes from now",
        )),
        Err(SigV4Error::Malformed(why)) => Err(KmsError::new("IncompleteSignatureException", why)),
        Err(SigV4Error::Missing | SigV4Error::Mismatch) => Err(KmsError::new(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )),
    }
}

//! The AWS KMS-compatible API: `POST /` with `X-Amz-Target: TrentService.<Op>` and
//! `application/x-amz-json-1.1`, authenticated with Signature Version 4, so that tools that sign through
//! AWS KMS (the `aws` CLI, boto3, the AWS SDKs, Terraform) sign through Custos by changing only the
//! endpoint.
//!
//! This crate only translates: every request becomes a typed request struct (`requests`), then a call
//! to the key manager, which authorises it, decides on key state and policy, and audits it; the answer
//! and any error take AWS's shapes. Nothing here touches the store.
//!
//! Key ids: a key made by `CreateKey` gets a UUID id, which is also its Custos key name; any existing
//! Custos key can be named by its Custos name; ARNs (`arn:aws:kms:<region>:<account>:key/<id>`) and
//! aliases (`alias/<name>`, or their ARNs) resolve to those. Asymmetric keys are Custos keys; symmetric
//! keys (`SYMMETRIC_DEFAULT`) are Custos sealing keys (encryption under the provider's own key, bound to
//! the key id and the encryption context); keys made with origin `EXTERNAL` are Custos pending imports.
//!
//! Access keys come from `custos token create --aws`; an access key carries its token's scopes:
//! `Sign`/`Encrypt`/`Decrypt`/`GenerateDataKey*` need `sign:<key>`, `Verify` needs `verify:<key>`,
//! `CreateKey`/`CreateAlias`/imports need `keys:create`, reads need `keys:read`, enabling, disabling,
//! tags and alias changes need `keys:rotate`, and scheduling a deletion needs `admin`.

mod ops;
mod requests;
pub mod sigv4;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use custos_core::{Access, CoreError, KeyManager, RequestContext};
use custos_types::ErrorCode;

/// What the API needs.
#[derive(Clone)]
pub struct KmsApi {
    pub(crate) keys: Arc<KeyManager>,
    pub(crate) access: Arc<Access>,
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
    /// The API over `keys`, with access keys from `access`, and ARNs in `region` and the 12-digit
    /// `account`.
    pub fn new(
        keys: Arc<KeyManager>,
        access: Arc<Access>,
        region: String,
        account: String,
    ) -> KmsApi {
        KmsApi {
            keys,
            access,
            region,
            account,
        }
    }

    pub(crate) fn arn(&self, id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{id}", self.region, self.account)
    }

    pub(crate) fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account)
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

impl From<CoreError> for KmsError {
    fn from(err: CoreError) -> Self {
        let kind = match err.code() {
            ErrorCode::KeyNotFound | ErrorCode::AliasNotFound | ErrorCode::VersionNotFound => {
                "NotFoundException"
            }
            ErrorCode::KeyDisabled => "DisabledException",
            ErrorCode::KeyPendingDeletion
            | ErrorCode::InvalidKeyState
            | ErrorCode::VersionNotUsable => "KMSInvalidStateException",
            ErrorCode::AliasExists | ErrorCode::KeyExists => "AlreadyExistsException",
            ErrorCode::InvalidImportToken => "InvalidImportTokenException",
            ErrorCode::ImportTokenExpired => "ExpiredImportTokenException",
            ErrorCode::IncorrectKeyMaterial => "IncorrectKeyMaterialException",
            ErrorCode::InvalidPayload => "InvalidCiphertextException",
            ErrorCode::Unauthenticated => {
                return KmsError::new(
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                )
            }
            ErrorCode::Forbidden | ErrorCode::PolicyDenied | ErrorCode::ApprovalRequired => {
                "AccessDeniedException"
            }
            ErrorCode::NotSupported => "UnsupportedOperationException",
            ErrorCode::RateLimited => "ThrottlingException",
            code if code.status() == 503 => "KeyUnavailableException",
            code if code.status() >= 500 => {
                tracing::error!(error = %err, "KMS API internal error");
                return KmsError::new("KMSInternalException", "internal error");
            }
            _ => "ValidationException",
        };
        KmsError::new(kind, err.to_string())
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
        system: false,
    };
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    ops::run(api, &ctx, operation, body).await
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

//! Request extractors that answer in the API's own error shape: the bearer token, the key name, the body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use custos_core::Principal;
use custos_types::KeyName;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// The authenticated caller, from `Authorization: Bearer <token>`.
#[derive(Debug)]
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "send an API token as `Authorization: Bearer <token>`",
                )
            })?;
        Ok(Auth(state.access.authenticate(token.trim())?))
    }
}

/// The `{name}` path segment as a checked key name.
#[derive(Debug)]
pub struct KeyPath(pub KeyName);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<KeyPath, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad("invalid_name", e.body_text()))?;
        Ok(KeyPath(
            KeyName::new(name).map_err(custos_core::CoreError::from)?,
        ))
    }
}

/// The raw body, within the size limit. Parsed by [`parse`] after authorisation, so a caller without
/// the scope learns nothing from how its body is judged.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is over the configured limit",
                    )
                } else {
                    ApiError::bad("invalid_request", e.body_text())
                }
            })
    }
}

/// Parses a JSON body: syntax errors are `invalid_json`, wrong fields are `invalid_request`.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_request"
        } else {
            "invalid_json"
        };
        ApiError::bad(code, format!("invalid request body: {e}"))
    })
}

//! Request extractors that answer in the API's own error shape: the request context with the bearer
//! token (failed authentication is audited and rate-limited per address), the key name, the body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef as _, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use custos_audit::Outcome;
use custos_core::{CoreError, RequestContext};
use custos_types::{ErrorCode, KeyName};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState, Guards};

/// The request id assigned by the observing middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The SHA-256 fingerprint (hex) of the client certificate, under mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// The request's context without a token: request id, peer address, client certificate.
pub fn context(parts: &Parts) -> RequestContext {
    RequestContext {
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default(),
        principal: None,
        cert_fingerprint: parts
            .extensions
            .get::<ClientCertificate>()
            .map(|c| c.0.clone()),
        source: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string()),
        system: false,
    }
}

/// The authenticated request: its context with the caller, from `Authorization: Bearer <token>`.
/// A missing or bad token is answered 401 and audited.
#[derive(Debug)]
pub struct Auth(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for Auth
where
    AppState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Auth, ApiError> {
        let state = &AppState::from_ref(state);
        let mut ctx = context(parts);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let principal = match token {
            Some(token) => state.access.authenticate(token.trim()),
            None => Err(CoreError::Unauthenticated),
        };
        match principal {
            Ok(principal) => {
                if let Some(limiter) = parts
                    .extensions
                    .get::<Arc<Guards>>()
                    .and_then(|g| g.per_token.as_ref())
                {
                    if let Err(not_until) = limiter.check_key(&principal.token_id) {
                        state.keys.metrics().rate_limited.inc();
                        let wait = not_until.wait_time_from(governor::clock::Clock::now(
                            &governor::clock::DefaultClock::default(),
                        ));
                        return Err(ApiError::new(
                            ErrorCode::RateLimited,
                            "this token's request rate is over its limit; slow down",
                        )
                        .retry_after(wait.as_secs_f64().ceil() as u64));
                    }
                }
                ctx.principal = Some(principal);
                Ok(Auth(ctx))
            }
            Err(_) => {
                state.keys.metrics().auth_failures.inc();
                let source = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip());
                let guards = parts.extensions.get::<Arc<Guards>>();
                if let (Some(ip), Some(guards)) = (source, guards) {
                    if guards.auth_failures.check_key(&ip).is_err() {
                        // Over the limit: refuse without another durable write.
                        state.keys.metrics().rate_limited.inc();
                        return Err(ApiError::new(
                            ErrorCode::RateLimited,
                            "too many failed authentications from this address; slow down",
                        )
                        .retry_after(1));
                    }
                }
                let mut entry = ctx.entry("auth_failure");
                entry.outcome = Outcome::Denied;
                entry.error_code = Some("unauthenticated".into());
                entry.subject = Some(
                    format!("{} {}", parts.method, parts.uri.path())
                        .chars()
                        .take(200)
                        .collect(),
                );
                state.keys.audit().append(entry).await?;
                Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    if token.is_some() {
                        "the API token is unknown, expired or revoked"
                    } else {
                        "send an API token as `Authorization: Bearer <token>`"
                    },
                ))
            }
        }
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
            .map_err(|e| ApiError::new(ErrorCode::InvalidName, e.body_text()))?;
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
                        ErrorCode::BodyTooLarge,
                        "the request body is over the configured limit",
                    )
                } else {
                    ApiError::new(ErrorCode::InvalidRequest, e.body_text())
                }
            })
    }
}

/// Parses a JSON body: syntax errors are `invalid_json`, wrong fields are `invalid_request`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::InvalidRequest
        } else {
            ErrorCode::InvalidJson
        };
        ApiError::new(code, format!("invalid request body: {e}"))
    })
}

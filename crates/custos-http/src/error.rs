//! The API error: a stable code (whose status it carries) and a message; 5xx answers never carry
//! internal detail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_api::{ErrorBody, ErrorDetail};
use custos_core::CoreError;
use custos_types::ErrorCode;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a stable code (its status follows from it) and a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: code.is_retryable().then_some(1),
        }
    }

    /// Sets the `Retry-After` (seconds) of the answer.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The body, as a batch item or a response carries it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> ApiError {
        let code = err.code();
        let message = if code.status() >= 500 {
            // The detail goes to the log only.
            tracing::error!(code = code.as_str(), error = %err, "request failed");
            match code {
                ErrorCode::AuditUnavailable => {
                    "the audit log cannot be written, so nothing was done; try again later"
                }
                ErrorCode::StoreUnavailable => "the database is unavailable; try again later",
                ErrorCode::ProviderUnavailable => {
                    "no provider could serve the request; try again later"
                }
                ErrorCode::EmergencyRestricted => {
                    "every provider failed and emergency mode may not sign this; try again later"
                }
                _ => "internal error; the server log has the details",
            }
            .to_owned()
        } else {
            err.to_string()
        };
        ApiError::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

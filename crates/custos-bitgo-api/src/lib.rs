//! The BitGo Advanced Wallets Key Provider API (`../shared/specs/bitgo-key-provider-api.yaml`), served
//! under a path prefix: store and retrieve encrypted private keys, generate keys, sign, and envelope
//! data keys, with the spec's bodies, status codes and `{message}` errors.
//!
//! Where things live: keys stored with `POST /key` are sealed by the default provider's own key (on an
//! HSM, an AES key that never leaves it), bound to their `source` and `pub`, in the store's settings.
//! Keys made with `POST /key/generate` are Custos keys (held by the default provider, signing through the
//! key manager with its verification and audit). Data keys are random AES-256 keys sealed the same way.
//!
//! Access: a bearer token with scope `bitgo` for everything except `GET /key/{pub}`, which hands out a
//! private key and needs `bitgo:retrieve` (not implied by `admin`) and, when configured, a client
//! certificate. Every operation is audited; a retrieval's record names the key, never its contents.

mod ops;
mod utxo;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custos_core::KeyManager;
use custos_server::AppState;
use custos_store::Store;

/// The spec, as JSON, served at `openapi.json` (converted from the YAML BitGo publishes).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// What the API needs.
#[derive(Clone)]
pub struct BitgoApi {
    /// The server's services: the key manager and access control (tokens, audited refusals).
    pub(crate) app: AppState,
    pub(crate) store: Arc<dyn Store>,
    /// Whether retrieving a private key also needs a client certificate (mutual TLS).
    pub(crate) retrieve_needs_client_cert: bool,
}

impl axum::extract::FromRef<BitgoApi> for AppState {
    fn from_ref(api: &BitgoApi) -> AppState {
        api.app.clone()
    }
}

impl std::fmt::Debug for BitgoApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitgoApi").finish_non_exhaustive()
    }
}

impl BitgoApi {
    /// The API over the server's services, keeping its records in `store`.
    pub fn new(app: AppState, store: Arc<dyn Store>, retrieve_needs_client_cert: bool) -> BitgoApi {
        BitgoApi {
            app,
            store,
            retrieve_needs_client_cert,
        }
    }

    pub(crate) fn keys(&self) -> &Arc<KeyManager> {
        &self.app.keys
    }
}

/// An error in the spec's shape: `{"message": "..."}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitgoError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl BitgoError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> BitgoError {
        BitgoError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> BitgoError {
        BitgoError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid data provided from client: {}", message.into()),
        )
    }
}

impl From<custos_core::CoreError> for BitgoError {
    fn from(err: custos_core::CoreError) -> Self {
        use custos_core::ErrorKind;
        match err.kind() {
            ErrorKind::BadInput | ErrorKind::TooLarge => BitgoError::bad(err.to_string()),
            ErrorKind::Unauthenticated => {
                BitgoError::new(StatusCode::UNAUTHORIZED, "missing or invalid API token")
            }
            ErrorKind::Forbidden => BitgoError::new(StatusCode::FORBIDDEN, err.to_string()),
            ErrorKind::NotFound => BitgoError::new(StatusCode::NOT_FOUND, err.to_string()),
            _ => {
                tracing::error!(error = %err, "BitGo API internal error");
                BitgoError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error. The key provider operation failed",
                )
            }
        }
    }
}

impl From<custos_store::StoreError> for BitgoError {
    fn from(err: custos_store::StoreError) -> Self {
        custos_core::CoreError::from(err).into()
    }
}

impl From<custos_provider::ProviderError> for BitgoError {
    fn from(err: custos_provider::ProviderError) -> Self {
        custos_core::CoreError::from(err).into()
    }
}

impl From<custos_server::ApiError> for BitgoError {
    fn from(err: custos_server::ApiError) -> Self {
        BitgoError::new(err.status(), err.message())
    }
}

impl IntoResponse for BitgoError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

/// The routes, relative to the prefix the binary nests them under.
pub fn router(api: BitgoApi) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/key", post(ops::store_key))
        .route("/key/generate", post(ops::generate_key))
        .route("/key/{pub}", get(ops::get_key))
        .route("/sign", post(ops::sign))
        .route("/generateDataKey", post(ops::generate_data_key))
        .route("/decryptDataKey", post(ops::decrypt_data_key))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI_JSON,
                )
            }),
        )
        .with_state(api)
}

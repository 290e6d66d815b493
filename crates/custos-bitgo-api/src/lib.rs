//! The BitGo Advanced Wallets Key Provider API (`openapi.json`, converted from the YAML BitGo publishes),
//! served under a path prefix: store and retrieve encrypted private keys, generate keys, sign, and
//! envelope data keys, with the spec's bodies, status codes and `{message}` errors.
//!
//! This crate only translates BitGo's wire format; the key manager decides and records everything.
//! Keys stored with `POST /key` are client-named keys: the client's material sealed by the default
//! provider for retrieval, and (when it is a private key or an `xprv`) imported inside the provider as a
//! Custos key that signs for it. Keys made with `POST /key/generate` are Custos keys (BIP32 masters for
//! UTXO coins). Private keys never reach this crate: PSBT inputs are signed by core with the provider's
//! derived signing. Data keys are random keys sealed by the default provider.
//!
//! Access: a bearer token with scope `bitgo` for everything except `GET /key/{pub}`, which hands out a
//! private key and needs `bitgo:retrieve` (which `admin` does not imply) and, when configured, a client
//! certificate. Every operation is audited; a retrieval's record names the key, never its contents.

mod ops;
mod requests;
mod utxo;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custos_core::{KeyManager, ScopeSpec};
use custos_http::AppState;
use custos_types::ErrorCode;

/// The spec, as JSON, served at `openapi.json` (converted from the YAML BitGo publishes).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The scope that uses the API: store and generate keys, sign, data keys.
pub static BITGO: ScopeSpec = ScopeSpec {
    name: "bitgo",
    description: "use the BitGo Key Provider API: store and generate keys, sign, data keys",
    implied_by_admin: true,
};

/// The scope that retrieves stored private keys; `admin` does not imply it.
pub static BITGO_RETRIEVE: ScopeSpec = ScopeSpec {
    name: "bitgo:retrieve",
    description: "retrieve stored private keys through the BitGo API (admin does not imply it)",
    implied_by_admin: false,
};

/// The scopes this surface adds to tokens.
pub const SCOPES: [&ScopeSpec; 2] = [&BITGO, &BITGO_RETRIEVE];

/// What the API needs.
#[derive(Clone)]
pub struct BitgoApi {
    /// The server's services: the key manager and tokens.
    pub(crate) app: AppState,
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
    /// The API over the server's services.
    pub fn new(app: AppState, retrieve_needs_client_cert: bool) -> BitgoApi {
        BitgoApi {
            app,
            retrieve_needs_client_cert,
        }
    }

    pub(crate) fn keys(&self) -> &KeyManager {
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
        let code = err.code();
        match code.status() {
            400 | 413 => BitgoError::bad(err.to_string()),
            401 => BitgoError::new(StatusCode::UNAUTHORIZED, "missing or invalid API token"),
            403 => BitgoError::new(StatusCode::FORBIDDEN, err.to_string()),
            404 => BitgoError::new(StatusCode::NOT_FOUND, err.to_string()),
            409 if code == ErrorCode::KeyExists => {
                BitgoError::new(StatusCode::CONFLICT, err.to_string())
            }
            409 => BitgoError::bad(err.to_string()),
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

impl From<custos_http::ApiError> for BitgoError {
    fn from(err: custos_http::ApiError) -> Self {
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

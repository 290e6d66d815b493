//! The Custos native API v1: its routes, the translation between its JSON and core calls, and its
//! OpenAPI document. Every rule lives in `custos-core`; the shared HTTP machinery (errors, extractors,
//! layers, TLS) lives in `custos-http`.

mod handlers;
mod views;

use axum::routing::{get, post};
use axum::Router;
use custos_http::{AppState, HttpOptions};

/// The OpenAPI document of API v1, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The routes of API v1 over `state` (without layers: [`custos_http::app`] applies them).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(handlers::health))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route("/metrics", get(handlers::metrics))
        .route(
            "/v1/keys",
            post(handlers::create_key).get(handlers::list_keys),
        )
        .route("/v1/keys/{name}", get(handlers::show_key))
        .route("/v1/providers", get(handlers::providers))
        .route(
            "/v1/keys/{name}/rotation",
            get(handlers::show_rotation)
                .put(handlers::set_rotation)
                .delete(handlers::delete_rotation),
        )
        .route("/v1/keys/{name}/sign", post(handlers::sign))
        .route("/v1/keys/{name}/sign-batch", post(handlers::sign_batch))
        .route("/v1/keys/{name}/verify", post(handlers::verify))
        .route("/v1/keys/{name}/rotate", post(handlers::rotate))
        .route("/v1/keys/{name}/enable", post(handlers::enable_key))
        .route("/v1/keys/{name}/disable", post(handlers::disable_key))
        .route(
            "/v1/keys/{name}/schedule-deletion",
            post(handlers::schedule_deletion),
        )
        .route(
            "/v1/keys/{name}/cancel-deletion",
            post(handlers::cancel_deletion),
        )
        .route(
            "/v1/tokens",
            post(handlers::create_token).get(handlers::list_tokens),
        )
        .route("/v1/tokens/{id}/revoke", post(handlers::revoke_token))
        .route("/v1/audit", get(handlers::query_audit))
        .route("/v1/audit/export", get(handlers::export_audit))
        .route("/v1/audit/verify", get(handlers::verify_audit))
        .route("/v1/audit/key", get(handlers::audit_key))
        .with_state(state)
}

/// API v1 alone with every layer: what a server without the compatibility APIs serves.
pub fn router(state: AppState, options: HttpOptions) -> Router {
    custos_http::app(state.clone(), options, [routes(state)])
}

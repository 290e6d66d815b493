//! The Custos HTTP server: the axum router for API v1, authentication, error mapping, TLS and serving.
//!
//! Handlers translate JSON to core calls and back; every rule lives in `custos-core`. All middleware is
//! applied in [`router`].

mod error;
mod extract;
mod handlers;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use custos_core::{Access, KeyManager};

pub use error::ApiError;

/// The services every handler uses.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Services {
    /// Keys and signing.
    pub keys: Arc<KeyManager>,
    /// Tokens.
    pub access: Arc<Access>,
}

impl AppState {
    /// Wraps the services.
    pub fn new(keys: Arc<KeyManager>, access: Arc<Access>) -> AppState {
        AppState(Arc::new(Services { keys, access }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// HTTP-level settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// The largest request body accepted; larger ones get 413 `body_too_large`.
    pub max_body_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The OpenAPI document of API v1, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Builds the router with every route and layer.
pub fn router(state: AppState, options: HttpOptions) -> Router {
    Router::new()
        .route("/v1/health", get(handlers::health))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route(
            "/v1/keys",
            post(handlers::create_key).get(handlers::list_keys),
        )
        .route("/v1/keys/{name}", get(handlers::show_key))
        .route("/v1/keys/{name}/sign", post(handlers::sign))
        .route("/v1/keys/{name}/sign-batch", post(handlers::sign_batch))
        .route("/v1/keys/{name}/verify", post(handlers::verify))
        .route("/v1/keys/{name}/rotate", post(handlers::rotate))
        .route("/v1/tokens", post(handlers::create_token))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(state)
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Serves `app` on `listener` (plain HTTP, or TLS when `tls` is given) until `shutdown` completes.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            use axum::serve::ListenerExt as _;
            let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
                // Small request/response pairs on keep-alive connections: never wait for Nagle.
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(files) => {
            // One process-wide crypto provider for rustls; a second install attempt is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let mut server = axum_server::from_tcp_rustls(listener, config);
            server.http_builder().http1().keep_alive(true);
            server.handle(handle).serve(app).await
        }
    }
}

//! The Custos HTTP server: the axum router for API v1, authentication, error mapping, TLS and serving.
//!
//! Handlers translate JSON to core calls and back; every rule lives in `custos-core`. All middleware is
//! applied in [`router`]: request ids and the in-flight gauge for every request, per-route counters, the
//! body limit.

mod error;
mod extract;
mod handlers;
mod tls;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use custos_core::{Access, KeyManager};
use rand_core::{OsRng, RngCore as _};
use std::num::NonZeroU32;
use tracing::Instrument as _;

pub use error::ApiError;
pub use extract::{allow, Auth};
pub use tls::{fingerprint, read_allowlist, TlsFiles};

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
    /// Requests served at once; more get 503 `overloaded` at once instead of queueing.
    pub max_concurrent_requests: usize,
    /// The longest a request may take; longer ones get 503 `timeout`.
    pub request_timeout: std::time::Duration,
    /// Requests per second and burst allowed to each token; more get 429 `rate_limited`.
    pub per_token_rate: Option<(u32, u32)>,
    /// Failed authentications per second and burst allowed from one address; more get 429 without an
    /// audit record each (they are counted in `custos_rate_limited_total`).
    pub auth_failure_rate: (u32, u32),
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 1024,
            request_timeout: std::time::Duration::from_secs(30),
            per_token_rate: None,
            auth_failure_rate: (10, 20),
        }
    }
}

/// The per-request guards [`router`] installs: the concurrency budget, the timeout, the per-token limiter.
pub(crate) struct Guards {
    in_flight: Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
    pub(crate) per_token: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// Failed authentications per source address: each is audited (a durable write), so a client
    /// without a token must not be able to make unbounded writes.
    pub(crate) auth_failures: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

/// The OpenAPI document of API v1, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Builds the router with every route and layer.
pub fn router(state: AppState, options: HttpOptions) -> Router {
    router_with(state, options, Router::new())
}

/// [`router`] with more routes (for example the KMS-compatible API at `POST /`) under the same guards:
/// request ids, the concurrency budget, the timeout, the body limit and the per-route counters.
pub fn router_with(state: AppState, options: HttpOptions, extra: Router) -> Router {
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
        .route(
            "/v1/tokens",
            post(handlers::create_token).get(handlers::list_tokens),
        )
        .route("/v1/tokens/{id}/revoke", post(handlers::revoke_token))
        .route("/v1/audit", get(handlers::query_audit))
        .route("/v1/audit/export", get(handlers::export_audit))
        .route("/v1/audit/verify", get(handlers::verify_audit))
        .route("/v1/audit/key", get(handlers::audit_key))
        .with_state(state.clone())
        .merge(extra)
        .route_layer(middleware::from_fn_with_state(state.clone(), count))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(Extension(Arc::new(Guards {
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                options.max_concurrent_requests.max(1),
            )),
            timeout: options.request_timeout,
            auth_failures: {
                let (rate, burst) = options.auth_failure_rate;
                let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(burst).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
            },
            per_token: options.per_token_rate.map(|(rate, burst)| {
                let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(burst).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
            }),
        })))
}

/// Every request: a request id (in the logs' span, the audit records and the `x-request-id` header)
/// and the in-flight gauge.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let guards = request.extensions().get::<Arc<Guards>>().cloned();
    let Some(guards) = guards else {
        return ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "router guards missing",
        )
        .into_response();
    };
    let Ok(_permit) = Arc::clone(&guards.in_flight).try_acquire_owned() else {
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; try again shortly",
        )
        .retry_after(1)
        .into_response();
    };
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    let id = hex::encode(id);
    request
        .extensions_mut()
        .insert(extract::RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let metrics = state.keys.metrics();
    metrics.in_flight.inc();
    let served = tokio::time::timeout(guards.timeout, next.run(request).instrument(span)).await;
    metrics.in_flight.dec();
    let mut response = served.unwrap_or_else(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took longer than the server allows",
        )
        .into_response()
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Counts requests by route template (not the path, so key names do not multiply the series) and status.
async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .keys
        .metrics()
        .requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
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
            let acceptor = tls::acceptor(files).await?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
            server.http_builder().http1().keep_alive(true);
            server.handle(handle).serve(app).await
        }
    }
}

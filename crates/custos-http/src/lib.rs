//! The HTTP toolkit every Custos API surface shares (the native API, the KMS-compatible API, the BitGo
//! API): the error shape, extractors that answer in it, the layers every request passes (request ids,
//! the in-flight gauge, the concurrency budget, the timeout, the body limit, per-route counters, and a
//! caught panic answered as a bare 500), TLS with pinned client certificates, and serving.
//!
//! Surfaces build their routes over [`AppState`]; [`app`] merges them and applies every layer in one
//! place. Every decision about keys, callers and policy is core's; this crate only carries requests.

mod error;
mod extract;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::Extension;
use axum::Router;
use custos_core::{Access, KeyManager};
use custos_types::ErrorCode;
use rand_core::{OsRng, RngCore as _};
use tracing::Instrument as _;

pub use error::ApiError;
pub use extract::{context, parse, Auth, Body, ClientCertificate, KeyPath, RequestId};
pub use tls::{fingerprint, install_crypto_provider, read_allowlist, TlsFiles};

/// The services every handler uses.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Services {
    /// Keys, signing, and every decision about them.
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

/// The per-request guards [`app`] installs: the concurrency budget, the timeout, the per-token limiter.
pub(crate) struct Guards {
    in_flight: Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
    pub(crate) per_token: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// Failed authentications per source address: each is audited (a durable write), so a client
    /// without a token must not be able to make unbounded writes.
    pub(crate) auth_failures: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    (rate, burst): (u32, u32),
) -> governor::DefaultKeyedRateLimiter<K> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

/// Merges the surfaces' routes and applies every layer: request ids, the concurrency budget, the
/// timeout, the body limit, per-route counters, the answer to unknown routes and methods, and a caught
/// panic answered as 500 `internal` with no detail.
pub fn app(
    state: AppState,
    options: HttpOptions,
    surfaces: impl IntoIterator<Item = Router>,
) -> Router {
    let mut routes = Router::new();
    for surface in surfaces {
        routes = routes.merge(surface);
    }
    routes
        .route_layer(middleware::from_fn_with_state(state.clone(), count))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(Extension(Arc::new(Guards {
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                options.max_concurrent_requests.max(1),
            )),
            timeout: options.request_timeout,
            auth_failures: limiter(options.auth_failure_rate),
            per_token: options.per_token_rate.map(limiter),
        })))
}

/// A handler that panicked: logged, answered 500 `internal` with nothing of the panic in the body.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %detail, "a request handler panicked");
    ApiError::new(
        ErrorCode::Internal,
        "internal error; the server log has the details",
    )
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; see /v1/openapi.json",
    )
}

/// Every request: a request id (in the logs' span, the audit records and the `x-request-id` header)
/// and the in-flight gauge.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let guards = request.extensions().get::<Arc<Guards>>().cloned();
    let Some(guards) = guards else {
        return ApiError::new(ErrorCode::Internal, "router guards missing").into_response();
    };
    let Ok(_permit) = Arc::clone(&guards.in_flight).try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Overloaded,
            "too many requests in flight; try again shortly",
        )
        .into_response();
    };
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    let id = hex::encode(id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let metrics = state.keys.metrics();
    metrics.in_flight.inc();
    let served = tokio::time::timeout(guards.timeout, next.run(request).instrument(span)).await;
    metrics.in_flight.dec();
    let mut response = served.unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::Timeout,
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

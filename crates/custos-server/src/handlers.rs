//! One function per route: authenticate, authorise, parse, call core, answer.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use custos_api::{
    BatchItemResult, CreateKeyRequest, CreateTokenRequest, CreateTokenResponse, HealthResponse,
    KeyList, KeyView, ProviderHealthView, SignBatchRequest, SignBatchResponse, SignRequestBody,
    VerifyRequestBody, VerifyResponse,
};
use custos_core::{CoreError, Operation, Scope};
use custos_types::{Algorithm, KeyName, ProviderName, Timestamp};
use secrecy::ExposeSecret as _;

use crate::extract::{parse, Auth, Body, KeyPath};
use crate::{views, ApiError, AppState, OPENAPI_JSON};

type Result<T> = std::result::Result<T, ApiError>;

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let store_ok = state.keys.store_ready().await.is_ok();
    let providers: Vec<_> = state
        .keys
        .provider_health()
        .await
        .into_iter()
        .map(|(p, h)| ProviderHealthView {
            name: p.name().to_string(),
            kind: p.kind().to_owned(),
            available: h.available,
            detail: h.detail,
        })
        .collect();
    let ready = store_ok && providers.iter().all(|p| p.available);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok| if ok { "ok" } else { "unavailable" }.to_owned();
    (
        status,
        Json(HealthResponse {
            status: word(ready),
            store: word(store_ok),
            providers,
        }),
    )
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/openapi.json",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /v1/openapi.json",
    )
}

pub async fn create_key(
    State(state): State<AppState>,
    Auth(who): Auth,
    Body(body): Body,
) -> Result<(StatusCode, Json<KeyView>)> {
    who.authorize(Operation::CreateKey)?;
    let request: CreateKeyRequest = parse(&body)?;
    let name = KeyName::new(request.name).map_err(CoreError::from)?;
    let algorithm: Algorithm = request.algorithm.parse().map_err(CoreError::from)?;
    let provider = request
        .provider
        .map(|p| {
            ProviderName::new(p).map_err(|e| {
                ApiError::bad("unknown_provider", format!("invalid provider name: {e}"))
            })
        })
        .transpose()?;
    let key = match request.adopt {
        None => {
            state
                .keys
                .create_key(name, algorithm, provider.into_iter().collect())
                .await?
        }
        Some(reference) => {
            state
                .keys
                .adopt_key(name, algorithm, provider, &reference)
                .await?
        }
    };
    Ok((StatusCode::CREATED, Json(views::key(&state.keys, &key))))
}

pub async fn list_keys(State(state): State<AppState>, Auth(who): Auth) -> Result<Json<KeyList>> {
    who.authorize(Operation::ReadKeys)?;
    let keys = state.keys.list_keys()?;
    Ok(Json(KeyList {
        keys: keys.iter().map(|k| views::key(&state.keys, k)).collect(),
    }))
}

pub async fn show_key(
    State(state): State<AppState>,
    Auth(who): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    who.authorize(Operation::ReadKeys)?;
    let key = state.keys.key(&name)?;
    Ok(Json(views::key(&state.keys, &key)))
}

pub async fn sign(
    State(state): State<AppState>,
    Auth(who): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<custos_api::SignResponse>> {
    who.authorize(Operation::Sign(&name))?;
    let body: SignRequestBody = parse(&body)?;
    let (request, format) = views::sign_request(&body)?;
    let outcome = state.keys.sign(&name, &request).await?;
    Ok(Json(views::sign_response(&name, &outcome, format)?))
}

pub async fn sign_batch(
    State(state): State<AppState>,
    Auth(who): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<SignBatchResponse>> {
    who.authorize(Operation::Sign(&name))?;
    let body: SignBatchRequest = parse(&body)?;
    let limit = state.keys.limits().max_batch_items;
    if body.items.len() > limit {
        return Err(CoreError::TooLarge {
            code: "batch_too_large",
            message: format!(
                "the batch has {} items; the limit is {limit}",
                body.items.len()
            ),
        }
        .into());
    }
    // Items that do not decode fail alone; the rest are signed together, and results keep input order.
    let decoded: Vec<_> = body.items.iter().map(views::sign_request).collect();
    let requests: Vec<_> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .map(|(r, _)| r.clone())
        .collect();
    let mut signed = if requests.is_empty() && !decoded.is_empty() {
        Vec::new()
    } else {
        state.keys.sign_batch(&name, &requests).await?
    }
    .into_iter();
    let mut results = Vec::with_capacity(decoded.len());
    for item in decoded {
        let result = match item {
            Err(err) => Err(err),
            Ok((_, format)) => match signed.next() {
                Some(Ok(outcome)) => views::sign_response(&name, &outcome, format),
                Some(Err(err)) => Err(err.into()),
                None => Err(CoreError::Internal("batch results do not line up".into()).into()),
            },
        };
        results.push(match result {
            Ok(response) => BatchItemResult::Ok(response),
            Err(err) => BatchItemResult::Err(err.body()),
        });
    }
    Ok(Json(SignBatchResponse { results }))
}

pub async fn verify(
    State(state): State<AppState>,
    Auth(who): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<VerifyResponse>> {
    who.authorize(Operation::Verify(&name))?;
    let body: VerifyRequestBody = parse(&body)?;
    let outcome = state
        .keys
        .verify(&name, &views::verify_request(&body)?)
        .await?;
    Ok(Json(VerifyResponse {
        valid: outcome.valid,
        version: outcome.version.map(|v| v.0),
    }))
}

pub async fn rotate(
    State(state): State<AppState>,
    Auth(who): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    who.authorize(Operation::RotateKey(&name))?;
    let key = state.keys.rotate(&name).await?;
    Ok(Json(views::key(&state.keys, &key)))
}

pub async fn create_token(
    State(state): State<AppState>,
    Auth(who): Auth,
    Body(body): Body,
) -> Result<(StatusCode, Json<CreateTokenResponse>)> {
    who.authorize(Operation::ManageTokens)?;
    let request: CreateTokenRequest = parse(&body)?;
    let scopes = request
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let expires_at = match request.expires_in_seconds {
        None => None,
        Some(secs) => {
            let secs = i64::try_from(secs)
                .ok()
                .filter(|s| *s <= 100 * 365 * 86_400)
                .ok_or_else(|| {
                    ApiError::bad("invalid_request", "expires_in_seconds is too large")
                })?;
            Some(Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        }
    };
    let issued = state
        .access
        .issue(&request.name, &scopes, expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            id: issued.record.id.clone(),
            name: issued.record.name.clone(),
            // The one place a token secret is written out: the response that issues it.
            token: issued.token.expose_secret().to_owned(),
            scopes: issued.record.scopes.clone(),
            expires_at: issued.record.expires_at,
        }),
    ))
}

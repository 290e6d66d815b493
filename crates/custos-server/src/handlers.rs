//! One function per route: authenticate, authorise (refusals audited), parse, call core, answer.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use custos_api::{
    b64, AuditKeyResponse, AuditPage, AuditQueryParams, AuditVerifyResponse, BatchItemResult,
    CreateKeyRequest, CreateTokenRequest, CreateTokenResponse, HealthResponse, KeyList, KeyView,
    ProviderHealthView, SignBatchRequest, SignBatchResponse, SignRequestBody, TokenList, TokenView,
    VerifyRequestBody, VerifyResponse,
};
use custos_core::{CoreError, Operation, Scope};
use custos_store::{AuditQuery, TokenRecord};
use custos_types::{Algorithm, ProviderName, Timestamp};
use secrecy::ExposeSecret as _;

use crate::extract::{allow, parse, Auth, Body, KeyPath};
use crate::{views, ApiError, AppState, OPENAPI_JSON};

type Result<T> = std::result::Result<T, ApiError>;

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let store_ok = state.keys.store_ready().await.is_ok();
    let audit_ok = state.keys.audit().is_healthy();
    let metrics = state.keys.metrics();
    let providers: Vec<_> = state
        .keys
        .provider_health()
        .await
        .into_iter()
        .map(|(p, h)| {
            metrics
                .provider_up
                .with_label_values(&[p.name().as_str(), p.kind()])
                .set(i64::from(h.available));
            ProviderHealthView {
                name: p.name().to_string(),
                kind: p.kind().to_owned(),
                available: h.available,
                detail: h.detail,
            }
        })
        .collect();
    let ready = store_ok && audit_ok && providers.iter().all(|p| p.available);
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
            audit: word(audit_ok),
            providers,
        }),
    )
}

pub async fn providers(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<custos_api::ProviderList>> {
    allow(&state, &ctx, Operation::ReadKeys).await?;
    let providers = state
        .keys
        .provider_health()
        .await
        .into_iter()
        .map(|(p, health)| {
            let caps = p.capabilities();
            let circuit = state.keys.circuit(p.name());
            custos_api::ProviderView {
                name: p.name().to_string(),
                kind: p.kind().to_owned(),
                algorithms: caps.algorithms.iter().map(|a| a.to_string()).collect(),
                exportable: caps.exportable,
                import: caps.import,
                available: health.available,
                detail: health.detail,
                circuit: circuit
                    .as_ref()
                    .map(|c| match c.state {
                        custos_core::CircuitState::Closed => "closed",
                        custos_core::CircuitState::Open => "open",
                        custos_core::CircuitState::HalfOpen => "half_open",
                    })
                    .unwrap_or("closed")
                    .to_owned(),
                consecutive_failures: circuit.as_ref().map_or(0, |c| c.consecutive_failures),
                switches_to: circuit.as_ref().map_or(0, |c| c.switches_to),
                last_error: circuit.and_then(|c| c.last_error),
            }
        })
        .collect();
    Ok(Json(custos_api::ProviderList { providers }))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.keys.metrics().render(),
    )
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
    Auth(ctx): Auth,
    Body(body): Body,
) -> Result<(StatusCode, Json<KeyView>)> {
    allow(&state, &ctx, Operation::CreateKey).await?;
    let request: CreateKeyRequest = parse(&body)?;
    let name = custos_types::KeyName::new(request.name).map_err(CoreError::from)?;
    let algorithm: Algorithm = request.algorithm.parse().map_err(CoreError::from)?;
    let provider = request
        .provider
        .map(|p| {
            ProviderName::new(p).map_err(|e| {
                ApiError::bad("unknown_provider", format!("invalid provider name: {e}"))
            })
        })
        .transpose()?;
    let chain = match (&provider, request.providers) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "invalid_request",
                "give either provider or providers (a chain), not both",
            ))
        }
        (_, Some(chain)) => chain
            .into_iter()
            .map(|p| {
                ProviderName::new(p).map_err(|e| {
                    ApiError::bad("unknown_provider", format!("invalid provider name: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?,
        (provider, None) => provider.iter().cloned().collect(),
    };
    let key = match request.adopt {
        None => state.keys.create_key(&ctx, name, algorithm, chain).await?,
        Some(reference) => {
            state
                .keys
                .adopt_key(&ctx, name, algorithm, provider, &reference)
                .await?
        }
    };
    Ok((StatusCode::CREATED, Json(views::key(&state.keys, &key))))
}

pub async fn list_keys(State(state): State<AppState>, Auth(ctx): Auth) -> Result<Json<KeyList>> {
    allow(&state, &ctx, Operation::ReadKeys).await?;
    let keys = state.keys.list_keys()?;
    Ok(Json(KeyList {
        keys: keys.iter().map(|k| views::key(&state.keys, k)).collect(),
    }))
}

pub async fn show_key(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    allow(&state, &ctx, Operation::ReadKeys).await?;
    let key = state.keys.key(&name)?;
    Ok(Json(views::key(&state.keys, &key)))
}

pub async fn sign(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<custos_api::SignResponse>> {
    allow(&state, &ctx, Operation::Sign(&name)).await?;
    let body: SignRequestBody = parse(&body)?;
    let (request, format) = views::sign_request(&body)?;
    let outcome = state.keys.sign(&ctx, &name, &request).await?;
    Ok(Json(views::sign_response(&name, &outcome, format)?))
}

pub async fn sign_batch(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<SignBatchResponse>> {
    allow(&state, &ctx, Operation::Sign(&name)).await?;
    let body: SignBatchRequest = parse(&body)?;
    // Checked before decoding, so an oversized batch is not decoded at all.
    state.keys.limits().check_batch(body.items.len())?;
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
        state.keys.sign_batch(&ctx, &name, &requests).await?
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
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<VerifyResponse>> {
    allow(&state, &ctx, Operation::Verify(&name)).await?;
    let body: VerifyRequestBody = parse(&body)?;
    let outcome = state
        .keys
        .verify(&ctx, &name, &views::verify_request(&body)?)
        .await?;
    Ok(Json(VerifyResponse {
        valid: outcome.valid,
        version: outcome.version.map(|v| v.0),
    }))
}

pub async fn rotate(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    allow(&state, &ctx, Operation::RotateKey(&name)).await?;
    let key = state.keys.rotate(&ctx, &name).await?;
    Ok(Json(views::key(&state.keys, &key)))
}

async fn rotation_view(
    state: &AppState,
    name: &custos_types::KeyName,
) -> Result<Json<custos_api::RotationView>> {
    let policy = state.keys.rotation_policy(name).await?;
    Ok(Json(custos_api::RotationView {
        key: name.to_string(),
        policy: policy
            .map(|p| serde_json::to_value(p).map_err(|e| CoreError::Internal(e.to_string())))
            .transpose()?,
        next_rotation: state.keys.next_rotation(name).await?,
    }))
}

pub async fn show_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<custos_api::RotationView>> {
    allow(&state, &ctx, Operation::ReadKeys).await?;
    state.keys.key(&name)?;
    rotation_view(&state, &name).await
}

pub async fn set_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<custos_api::RotationView>> {
    allow(&state, &ctx, Operation::RotateKey(&name)).await?;
    let policy: custos_core::RotationPolicy = parse(&body)?;
    state
        .keys
        .set_rotation_policy(&ctx, &name, Some(policy))
        .await?;
    rotation_view(&state, &name).await
}

pub async fn delete_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<custos_api::RotationView>> {
    allow(&state, &ctx, Operation::RotateKey(&name)).await?;
    state.keys.set_rotation_policy(&ctx, &name, None).await?;
    rotation_view(&state, &name).await
}

fn token_view(record: TokenRecord) -> TokenView {
    TokenView {
        id: record.id,
        name: record.name,
        scopes: record.scopes,
        created_at: record.created_at,
        expires_at: record.expires_at,
        revoked_at: record.revoked_at,
        last_used_at: record.last_used_at,
    }
}

pub async fn create_token(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Body(body): Body,
) -> Result<(StatusCode, Json<CreateTokenResponse>)> {
    allow(&state, &ctx, Operation::ManageTokens).await?;
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
    let (issued, aws) = if request.aws {
        let credential = state
            .access
            .issue_aws(
                &ctx,
                &request.name,
                &scopes,
                expires_at,
                state.keys.default_provider().as_ref(),
            )
            .await?;
        let aws = (
            credential.access_key_id,
            credential.secret_access_key.expose_secret().to_owned(),
        );
        (credential.token, Some(aws))
    } else {
        let issued = state
            .access
            .issue(&ctx, &request.name, &scopes, expires_at)
            .await?;
        (issued, None)
    };
    let (aws_access_key_id, aws_secret_access_key) = aws.unzip();
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            id: issued.record.id.clone(),
            name: issued.record.name.clone(),
            // The one place a token secret is written out: the response that issues it.
            token: issued.token.expose_secret().to_owned(),
            scopes: issued.record.scopes.clone(),
            expires_at: issued.record.expires_at,
            aws_access_key_id,
            aws_secret_access_key,
        }),
    ))
}

pub async fn list_tokens(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<TokenList>> {
    allow(&state, &ctx, Operation::ManageTokens).await?;
    Ok(Json(TokenList {
        tokens: state.access.list()?.into_iter().map(token_view).collect(),
    }))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Json<TokenView>> {
    allow(&state, &ctx, Operation::ManageTokens).await?;
    Ok(Json(token_view(state.access.revoke(&ctx, &id).await?)))
}

fn timestamp(field: &str, text: &Option<String>) -> Result<Option<Timestamp>> {
    text.as_deref()
        .map(|t| {
            t.parse::<Timestamp>().map_err(|_| {
                ApiError::bad(
                    "invalid_request",
                    format!("{field} must be an RFC 3339 time"),
                )
            })
        })
        .transpose()
}

pub async fn query_audit(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    query: std::result::Result<Query<AuditQueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>> {
    allow(&state, &ctx, Operation::ReadAudit).await?;
    let Query(params) = query.map_err(|e| ApiError::bad("invalid_request", e.body_text()))?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let records = state
        .keys
        .audit()
        .query(&AuditQuery {
            after_seq: params.after.unwrap_or(0),
            limit,
            from: timestamp("from", &params.from)?,
            to: timestamp("to", &params.to)?,
            key: params.key,
            operation: params.operation,
            actor: params.actor,
            outcome: params.outcome,
        })
        .await?;
    let next_after = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage {
        records,
        next_after,
    }))
}

pub async fn export_audit(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<impl IntoResponse> {
    allow(&state, &ctx, Operation::ReadAudit).await?;
    let export = state.keys.audit().export().await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], export))
}

pub async fn verify_audit(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<AuditVerifyResponse>> {
    allow(&state, &ctx, Operation::ReadAudit).await?;
    let audit = state.keys.audit();
    let export = audit.export().await?;
    Ok(Json(
        match custos_audit::verify_export(&export, audit.public_key()) {
            Ok(report) => AuditVerifyResponse {
                valid: true,
                records: report.records,
                checkpoints: report.checkpoints,
                error: None,
            },
            Err(failure) => AuditVerifyResponse {
                valid: false,
                records: 0,
                checkpoints: 0,
                error: Some(failure.to_string()),
            },
        },
    ))
}

pub async fn audit_key(State(state): State<AppState>) -> Json<AuditKeyResponse> {
    let key = state.keys.audit().public_key();
    Json(AuditKeyResponse {
        algorithm: "ed25519".into(),
        public_key: b64::encode(key.as_bytes()),
        pem: key.to_pem(),
    })
}

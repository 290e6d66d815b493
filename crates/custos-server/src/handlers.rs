//! One function per route: authenticate, parse, call core (which authorises, decides and audits),
//! answer.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use custos_api::{
    b64, AuditKeyResponse, AuditPage, AuditQueryParams, AuditVerifyResponse, BatchItemResult,
    CreateKeyRequest, CreateTokenRequest, CreateTokenResponse, HealthResponse, KeyList, KeyView,
    ProviderHealthView, ScheduleDeletionRequest, SignBatchRequest, SignBatchResponse,
    SignRequestBody, TokenList, TokenView, VerifyRequestBody, VerifyResponse,
};
use custos_audit::AuditQuery;
use custos_core::{CoreError, KeyStateChange, Operation};
use custos_http::{parse, ApiError, AppState, Auth, Body, KeyPath};
use custos_types::{Algorithm, ErrorCode, KeyName, ProviderName, Timestamp, TokenRecord};
use secrecy::ExposeSecret as _;

use crate::{views, OPENAPI_JSON};

type Result<T> = std::result::Result<T, ApiError>;

/// Asks core whether the caller may do `op` before its body is even parsed, so a caller without the
/// scope learns nothing from how its body is judged. Core decides again when it runs the operation;
/// a refusal here is recorded under `operation`.
async fn before_body(
    state: &AppState,
    ctx: &custos_core::RequestContext,
    op: Operation<'_>,
    operation: &str,
) -> Result<()> {
    Ok(state.keys.authorize(ctx, op, operation).await?)
}

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let store_ok = state.keys.store_ready().await.is_ok();
    let audit_ok = state.keys.audit().is_healthy();
    let scheduler_ok = state.keys.scheduler_health().is_healthy();
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
    let ready = store_ok && audit_ok && scheduler_ok && providers.iter().all(|p| p.available);
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
            scheduler: if scheduler_ok { "ok" } else { "failing" }.to_owned(),
            providers,
        }),
    )
}

pub async fn providers(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<custos_api::ProviderList>> {
    state
        .keys
        .authorize(&ctx, Operation::ReadKeys, "provider_list")
        .await?;
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

fn provider_name(name: String) -> Result<ProviderName> {
    ProviderName::new(name).map_err(|e| {
        ApiError::new(
            ErrorCode::UnknownProvider,
            format!("invalid provider name: {e}"),
        )
    })
}

pub async fn create_key(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Body(body): Body,
) -> Result<(StatusCode, Json<KeyView>)> {
    before_body(&state, &ctx, Operation::CreateKey, "key_create").await?;
    let request: CreateKeyRequest = parse(&body)?;
    let name = KeyName::new(request.name).map_err(CoreError::from)?;
    let algorithm: Algorithm = request.algorithm.parse().map_err(CoreError::from)?;
    let provider = request.provider.map(provider_name).transpose()?;
    let chain = match (&provider, request.providers) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give either provider or providers (a chain), not both",
            ))
        }
        (_, Some(chain)) if chain.is_empty() => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "providers, when given, names at least one provider",
            ))
        }
        (_, Some(chain)) => chain
            .into_iter()
            .map(provider_name)
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
    let keys = state.keys.list_keys(&ctx).await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(|k| views::key(&state.keys, k)).collect(),
    }))
}

pub async fn show_key(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    let key = state.keys.key(&ctx, &name).await?;
    Ok(Json(views::key(&state.keys, &key)))
}

pub async fn sign(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<custos_api::SignResponse>> {
    before_body(&state, &ctx, Operation::Sign(name.as_str()), "sign").await?;
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
    before_body(&state, &ctx, Operation::Sign(name.as_str()), "sign_batch").await?;
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
    before_body(&state, &ctx, Operation::Verify(name.as_str()), "verify").await?;
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
    let key = state.keys.rotate(&ctx, &name).await?;
    Ok(Json(views::key(&state.keys, &key)))
}

async fn change_state(
    state: &AppState,
    ctx: &custos_core::RequestContext,
    name: &KeyName,
    change: KeyStateChange,
) -> Result<Json<KeyView>> {
    let key = state.keys.set_key_state(ctx, name, change).await?;
    Ok(Json(views::key(&state.keys, &key)))
}

pub async fn enable_key(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    change_state(&state, &ctx, &name, KeyStateChange::Enable).await
}

pub async fn disable_key(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    change_state(&state, &ctx, &name, KeyStateChange::Disable).await
}

pub async fn schedule_deletion(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<KeyView>> {
    before_body(
        &state,
        &ctx,
        Operation::DeleteKey(name.as_str()),
        "key_schedule_deletion",
    )
    .await?;
    let request: ScheduleDeletionRequest = if body.is_empty() {
        parse(b"{}")?
    } else {
        parse(&body)?
    };
    let change = KeyStateChange::ScheduleDeletion {
        days: request.pending_window_days,
    };
    change_state(&state, &ctx, &name, change).await
}

pub async fn cancel_deletion(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<KeyView>> {
    change_state(&state, &ctx, &name, KeyStateChange::CancelDeletion).await
}

async fn rotation_view(
    state: &AppState,
    ctx: &custos_core::RequestContext,
    name: &KeyName,
) -> Result<Json<custos_api::RotationView>> {
    let policy = state.keys.rotation_policy(ctx, name).await?;
    Ok(Json(custos_api::RotationView {
        key: name.to_string(),
        policy: policy
            .map(|p| serde_json::to_value(p).map_err(|e| CoreError::Internal(e.to_string())))
            .transpose()?,
        next_rotation: state.keys.next_rotation(ctx, name).await?,
    }))
}

pub async fn show_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<custos_api::RotationView>> {
    rotation_view(&state, &ctx, &name).await
}

pub async fn set_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
    Body(body): Body,
) -> Result<Json<custos_api::RotationView>> {
    before_body(
        &state,
        &ctx,
        Operation::RotateKey(name.as_str()),
        "rotation_policy",
    )
    .await?;
    let policy: custos_core::RotationPolicy = parse(&body)?;
    let next_rotation = state
        .keys
        .set_rotation_policy(&ctx, &name, Some(policy.clone()))
        .await?;
    Ok(Json(custos_api::RotationView {
        key: name.to_string(),
        policy: Some(serde_json::to_value(policy).map_err(|e| CoreError::Internal(e.to_string()))?),
        next_rotation,
    }))
}

pub async fn delete_rotation(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    KeyPath(name): KeyPath,
) -> Result<Json<custos_api::RotationView>> {
    state.keys.set_rotation_policy(&ctx, &name, None).await?;
    Ok(Json(custos_api::RotationView {
        key: name.to_string(),
        policy: None,
        next_rotation: None,
    }))
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
    before_body(&state, &ctx, Operation::ManageTokens, "token_create").await?;
    let request: CreateTokenRequest = parse(&body)?;
    let scopes = request
        .scopes
        .iter()
        .map(|s| state.access.scopes().parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let expires_at = match request.expires_in_seconds {
        None => None,
        Some(secs) => {
            let secs = i64::try_from(secs)
                .ok()
                .filter(|s| (1..=100 * 365 * 86_400).contains(s))
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        "expires_in_seconds must be between 1 and 3153600000 (100 years)",
                    )
                })?;
            Some(state.keys.clock().now() + jiff::SignedDuration::from_secs(secs))
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
    Ok(Json(TokenList {
        tokens: state
            .access
            .list(&ctx)
            .await?
            .into_iter()
            .map(token_view)
            .collect(),
    }))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Json<TokenView>> {
    Ok(Json(token_view(state.access.revoke(&ctx, &id).await?)))
}

fn timestamp(field: &str, text: &Option<String>) -> Result<Option<Timestamp>> {
    text.as_deref()
        .map(|t| {
            t.parse::<Timestamp>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
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
    let Query(params) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let records = state
        .keys
        .query_audit(
            &ctx,
            &AuditQuery {
                after_seq: params.after.unwrap_or(0),
                limit,
                newest_first: false,
                from: timestamp("from", &params.from)?,
                to: timestamp("to", &params.to)?,
                key: params.key,
                operation: params.operation,
                actor: params.actor,
                outcome: params.outcome,
            },
        )
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
    let export = state.keys.export_audit(&ctx).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], export))
}

pub async fn verify_audit(
    State(state): State<AppState>,
    Auth(ctx): Auth,
) -> Result<Json<AuditVerifyResponse>> {
    Ok(Json(match state.keys.verify_audit(&ctx).await? {
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
    }))
}

pub async fn audit_key(State(state): State<AppState>) -> Json<AuditKeyResponse> {
    let key = state.keys.audit().public_key();
    Json(AuditKeyResponse {
        algorithm: "ed25519".into(),
        public_key: b64::encode(key.as_bytes()),
        pem: key.to_pem(),
    })
}

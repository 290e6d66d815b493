//! Aliases: `CreateAlias`, `UpdateAlias`, `DeleteAlias`, `ListAliases` (paged).

use custos_core::RequestContext;
use serde_json::{json, Value};

use super::page;
use crate::requests::{self, decode};
use crate::{KmsApi, KmsError};

fn check_name(alias: &str) -> Result<(), KmsError> {
    if !alias.starts_with("alias/")
        || alias.starts_with("alias/aws/")
        || alias.len() > 256
        || alias.len() < 7
    {
        return Err(KmsError::validation(
            "AliasName must begin with alias/ (and not alias/aws/) and be at most 256 characters",
        ));
    }
    Ok(())
}

pub(super) async fn create_alias(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Alias = decode(body)?;
    check_name(&request.alias_name)?;
    let key = api.resolve(&request.target_key_id).await?;
    api.keys
        .create_alias(ctx, &request.alias_name, key.id())
        .await
        .map_err(|e| match e.code() {
            custos_types::ErrorCode::AliasExists => KmsError::new(
                "AlreadyExistsException",
                format!(
                    "An alias with the name {} already exists",
                    api.alias_arn(&request.alias_name)
                ),
            ),
            _ => e.into(),
        })?;
    Ok(json!({}))
}

pub(super) async fn update_alias(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::Alias = decode(body)?;
    check_name(&request.alias_name)?;
    let key = api.resolve(&request.target_key_id).await?;
    api.keys
        .update_alias(ctx, &request.alias_name, key.id())
        .await?;
    Ok(json!({}))
}

pub(super) async fn delete_alias(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::DeleteAlias = decode(body)?;
    api.keys.delete_alias(ctx, &request.alias_name).await?;
    Ok(json!({}))
}

pub(super) async fn list_aliases(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::List = decode(body)?;
    let filter = match &request.key_id {
        Some(id) => Some(api.resolve(id).await?.id().to_owned()),
        None => None,
    };
    let aliases: Vec<(String, Value)> = api
        .keys
        .list_aliases(ctx)
        .await?
        .into_iter()
        .filter(|a| filter.as_ref().is_none_or(|f| *f == a.target))
        .map(|a| {
            let value = json!({
                "AliasName": a.name,
                "AliasArn": api.alias_arn(&a.name),
                "TargetKeyId": a.target,
                "CreationDate": a.created_at.as_second(),
                "LastUpdatedDate": a.updated_at.as_second(),
            });
            (a.name, value)
        })
        .collect();
    let (aliases, next) = page(aliases, request.limit, request.marker.as_deref())?;
    let mut answer = json!({ "Aliases": aliases, "Truncated": next.is_some() });
    if let Some(marker) = next {
        answer["NextMarker"] = json!(marker);
    }
    Ok(answer)
}

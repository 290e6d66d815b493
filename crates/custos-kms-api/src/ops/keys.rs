//! Keys: `CreateKey` (asymmetric, symmetric, origin EXTERNAL), `DescribeKey`, `ListKeys`,
//! `GetPublicKey`, the state changes, `GetKeyRotationStatus` and tags.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use custos_core::{KeyStateChange, RequestContext};
use custos_types::{KeyName, KeyState};
use rand_core::{OsRng, RngCore as _};
use serde_json::{json, Value};

use super::{algorithm_of_spec, page, signing_algorithm, spec_of, state_name, Key};
use crate::requests::{self, decode, Tag};
use crate::{KmsApi, KmsError};

/// A fresh key id: a random (version 4) UUID, as AWS makes them.
fn new_key_id() -> String {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let hex_id = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &hex_id[..8],
        &hex_id[8..12],
        &hex_id[12..16],
        &hex_id[16..20],
        &hex_id[20..]
    )
}

fn tag_map(tags: &[Tag]) -> Result<BTreeMap<String, String>, KmsError> {
    let mut map = BTreeMap::new();
    for tag in tags {
        if tag.tag_key.starts_with("aws:") {
            return Err(KmsError::validation(
                "tag keys beginning with aws: are reserved",
            ));
        }
        map.insert(tag.tag_key.clone(), tag.tag_value.clone());
    }
    Ok(map)
}

pub(super) async fn create_key(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::CreateKey = decode(body)?;
    let spec = request
        .key_spec
        .as_deref()
        .or(request.customer_master_key_spec.as_deref())
        .unwrap_or("SYMMETRIC_DEFAULT");
    let usage = request.key_usage.as_deref();
    let tags = tag_map(&request.tags)?;
    let id = new_key_id();
    let origin = request.origin.as_deref().unwrap_or("AWS_KMS");
    let key = match (origin, spec) {
        ("AWS_KMS", "SYMMETRIC_DEFAULT") => {
            if usage.is_some_and(|u| u != "ENCRYPT_DECRYPT") {
                return Err(KmsError::validation(
                    "a SYMMETRIC_DEFAULT key is for ENCRYPT_DECRYPT",
                ));
            }
            Key::Symmetric(
                api.keys
                    .create_sealing_key(ctx, &id, request.description)
                    .await?,
            )
        }
        ("AWS_KMS" | "EXTERNAL", _) => {
            let algorithm = algorithm_of_spec(spec).ok_or_else(|| {
                if origin == "EXTERNAL" {
                    KmsError::new(
                        "UnsupportedOperationException",
                        "Custos imports ECC_SECG_P256K1, ECC_NIST_P256 and ECC_NIST_EDWARDS25519 key material",
                    )
                } else {
                    KmsError::validation(format!(
                        "KeySpec {spec} is not supported: use ECC_SECG_P256K1, ECC_NIST_P256, \
                         ECC_NIST_EDWARDS25519 or SYMMETRIC_DEFAULT"
                    ))
                }
            })?;
            if usage.is_some_and(|u| u != "SIGN_VERIFY") {
                return Err(KmsError::validation(format!(
                    "a {spec} key is for SIGN_VERIFY"
                )));
            }
            if origin == "EXTERNAL" {
                Key::Pending(
                    api.keys
                        .create_import(ctx, &id, algorithm, request.description)
                        .await?,
                )
            } else {
                let name = KeyName::new(&id)?;
                api.keys
                    .create_key_described(ctx, name.clone(), algorithm, vec![], request.description)
                    .await?;
                Key::Asymmetric(name)
            }
        }
        (other, _) => {
            return Err(KmsError::new(
                "UnsupportedOperationException",
                format!("Origin {other} is not supported: use AWS_KMS or EXTERNAL"),
            ))
        }
    };
    if !tags.is_empty() {
        api.keys
            .update_tags(ctx, key.id(), tags, Vec::new())
            .await?;
    }
    Ok(json!({ "KeyMetadata": api.metadata(ctx, &key).await? }))
}

pub(super) async fn describe_key(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::KeyIdOnly = decode(body)?;
    let key = api.resolve(&request.key_id).await?;
    Ok(json!({ "KeyMetadata": api.metadata(ctx, &key).await? }))
}

pub(super) async fn list_keys(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::List = decode(body)?;
    let mut ids: Vec<(String, ())> = api
        .keys
        .list_keys(ctx)
        .await?
        .iter()
        .filter(|k| k.state != KeyState::Destroyed)
        .map(|k| (k.name.to_string(), ()))
        .collect();
    ids.extend(
        api.keys
            .list_sealing_keys(ctx)
            .await?
            .into_iter()
            .filter(|k| k.state != KeyState::Destroyed)
            .map(|k| (k.id, ())),
    );
    ids.extend(
        api.keys
            .list_imports(ctx)
            .await?
            .into_iter()
            .filter(|k| k.state != KeyState::Destroyed)
            .map(|k| (k.id, ())),
    );
    let listed: Vec<(String, String)> = ids.into_iter().map(|(id, ())| (id.clone(), id)).collect();
    let (keys, next) = page(listed, request.limit, request.marker.as_deref())?;
    let keys: Vec<Value> = keys
        .iter()
        .map(|id| json!({ "KeyId": id, "KeyArn": api.arn(id) }))
        .collect();
    let mut answer = json!({ "Keys": keys, "Truncated": next.is_some() });
    if let Some(marker) = next {
        answer["NextMarker"] = json!(marker);
    }
    Ok(answer)
}

pub(super) async fn get_public_key(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::KeyIdOnly = decode(body)?;
    let Key::Asymmetric(name) = api.resolve(&request.key_id).await? else {
        return Err(KmsError::new(
            "UnsupportedOperationException",
            "only an asymmetric key with its key material has a public key",
        ));
    };
    let record = api.keys.key(ctx, &name).await?;
    if !record.state.is_usable() {
        return Err(custos_core::CoreError::KeyUnusable {
            key: name.to_string(),
            state: record.state,
        }
        .into());
    }
    let current = record
        .current()
        .ok_or_else(|| KmsError::new("KMSInternalException", "no current version"))?;
    Ok(json!({
        "KeyId": api.arn(name.as_str()),
        "PublicKey": B64.encode(current.public_key.to_spki_der()),
        "KeySpec": spec_of(record.algorithm),
        "CustomerMasterKeySpec": spec_of(record.algorithm),
        "KeyUsage": "SIGN_VERIFY",
        "SigningAlgorithms": [signing_algorithm(record.algorithm)],
    }))
}

pub(super) async fn change_state(
    api: &KmsApi,
    ctx: &RequestContext,
    operation: &str,
    body: &[u8],
) -> Result<Value, KmsError> {
    let (key_id, change) = match operation {
        "ScheduleKeyDeletion" => {
            let request: requests::ScheduleKeyDeletion = decode(body)?;
            let days = request.pending_window_in_days.unwrap_or(30);
            let days = u32::try_from(days)
                .ok()
                .filter(|d| (7..=30).contains(d))
                .ok_or_else(|| {
                    KmsError::validation("PendingWindowInDays must be between 7 and 30")
                })?;
            (request.key_id, KeyStateChange::ScheduleDeletion { days })
        }
        other => {
            let request: requests::KeyIdOnly = decode(body)?;
            let change = match other {
                "EnableKey" => KeyStateChange::Enable,
                "DisableKey" => KeyStateChange::Disable,
                _ => KeyStateChange::CancelDeletion,
            };
            (request.key_id, change)
        }
    };
    let key = api.resolve(&key_id).await?;
    let id = key.id().to_owned();
    let state = api.keys.set_state_by_id(ctx, &id, change).await?;
    Ok(match change {
        KeyStateChange::ScheduleDeletion { days } => json!({
            "KeyId": api.arn(&id),
            "DeletionDate": state.deletion_date().map(|d| d.as_second()),
            "KeyState": state_name(state, false),
            "PendingWindowInDays": days,
        }),
        KeyStateChange::CancelDeletion => json!({ "KeyId": api.arn(&id) }),
        _ => json!({}),
    })
}

/// `GetKeyRotationStatus`: a Custos key with a rotation policy rotates (on its schedule); sealing keys
/// and keys awaiting material do not.
pub(super) async fn rotation_status(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::KeyIdOnly = decode(body)?;
    let key = api.resolve(&request.key_id).await?;
    let mut answer = json!({ "KeyId": api.arn(key.id()), "KeyRotationEnabled": false });
    if let Key::Asymmetric(name) = &key {
        if let Some(policy) = api.keys.rotation_policy(ctx, name).await? {
            answer["KeyRotationEnabled"] = json!(true);
            answer["RotationPeriodInDays"] = json!(policy.interval_days);
            if let Some(next) = api.keys.next_rotation(ctx, name).await? {
                answer["NextRotationDate"] = json!(next.as_second());
            }
        }
    } else {
        api.keys
            .authorize(
                ctx,
                custos_core::Operation::ReadKeys,
                "rotation_policy_read",
            )
            .await?;
    }
    Ok(answer)
}

pub(super) async fn tag_resource(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::TagResource = decode(body)?;
    let key = api.resolve(&request.key_id).await?;
    api.keys
        .update_tags(ctx, key.id(), tag_map(&request.tags)?, Vec::new())
        .await?;
    Ok(json!({}))
}

pub(super) async fn untag_resource(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::UntagResource = decode(body)?;
    let key = api.resolve(&request.key_id).await?;
    api.keys
        .update_tags(ctx, key.id(), BTreeMap::new(), request.tag_keys)
        .await?;
    Ok(json!({}))
}

pub(super) async fn list_resource_tags(
    api: &KmsApi,
    ctx: &RequestContext,
    body: &[u8],
) -> Result<Value, KmsError> {
    let request: requests::KeyIdOnly = decode(body)?;
    let key = api.resolve(&request.key_id).await?;
    let tags: Vec<Value> = api
        .keys
        .tags(ctx, key.id())
        .await?
        .into_iter()
        .map(|(k, v)| json!({ "TagKey": k, "TagValue": v }))
        .collect();
    Ok(json!({ "Tags": tags, "Truncated": false }))
}

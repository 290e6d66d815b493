//! The TrentService operations: which key an id names, the key metadata AWS clients read, and the
//! dispatch to one module per group of operations (keys, cryptography, aliases, imports).

mod aliases;
mod crypto;
mod import;
mod keys;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use custos_core::RequestContext;
use custos_types::{Algorithm, ImportRecord, KeyName, KeyRecord, KeyState, SealingKeyRecord};
use serde_json::{json, Value};

use crate::{KmsApi, KmsError};

/// The most bytes `Sign`, `Verify` and `Encrypt` take, as in AWS.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// What a key id names.
#[derive(Debug)]
pub(crate) enum Key {
    /// A Custos key (asymmetric).
    Asymmetric(KeyName),
    /// A sealing (symmetric) key.
    Symmetric(SealingKeyRecord),
    /// A key with origin EXTERNAL awaiting its key material.
    Pending(ImportRecord),
}

impl Key {
    pub(crate) fn id(&self) -> &str {
        match self {
            Key::Asymmetric(name) => name.as_str(),
            Key::Symmetric(record) => &record.id,
            Key::Pending(record) => &record.id,
        }
    }
}

pub(crate) fn spec_of(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ECC_NIST_EDWARDS25519",
        Algorithm::Secp256k1 => "ECC_SECG_P256K1",
        Algorithm::P256 => "ECC_NIST_P256",
    }
}

pub(crate) fn algorithm_of_spec(spec: &str) -> Option<Algorithm> {
    match spec {
        "ECC_SECG_P256K1" => Some(Algorithm::Secp256k1),
        "ECC_NIST_P256" => Some(Algorithm::P256),
        "ECC_NIST_EDWARDS25519" => Some(Algorithm::Ed25519),
        _ => None,
    }
}

pub(crate) fn signing_algorithm(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ED25519_SHA_512",
        Algorithm::Secp256k1 | Algorithm::P256 => "ECDSA_SHA_256",
    }
}

/// AWS's name of a key state.
pub(crate) fn state_name(state: KeyState, pending_import: bool) -> &'static str {
    match state {
        KeyState::Enabled if pending_import => "PendingImport",
        KeyState::Enabled => "Enabled",
        KeyState::Disabled => "Disabled",
        KeyState::PendingDeletion { .. } => "PendingDeletion",
        KeyState::Destroyed => "Destroyed",
    }
}

impl KmsApi {
    /// Resolves a key id, key ARN, alias name or alias ARN. A destroyed key is not found, as in AWS.
    pub(crate) async fn resolve(&self, key_id: &str) -> Result<Key, KmsError> {
        let not_found = || {
            KmsError::new(
                "NotFoundException",
                format!("Key '{key_id}' does not exist"),
            )
        };
        let mut id = key_id;
        if let Some(rest) = id.strip_prefix("arn:") {
            // arn:aws:kms:<region>:<account>:<resource>
            id = rest.splitn(5, ':').nth(4).ok_or_else(not_found)?;
            id = id.strip_prefix("key/").unwrap_or(id);
        }
        let id = if id.starts_with("alias/") {
            self.keys.alias_target(id).await?.ok_or_else(|| {
                KmsError::new("NotFoundException", format!("Alias '{id}' does not exist"))
            })?
        } else {
            id.to_owned()
        };
        if let Some(record) = self.keys.sealing_key(&id).await? {
            if record.state == KeyState::Destroyed {
                return Err(not_found());
            }
            return Ok(Key::Symmetric(record));
        }
        if let Some(record) = self.keys.import_record(&id).await? {
            if record.state == KeyState::Destroyed {
                return Err(not_found());
            }
            return Ok(Key::Pending(record));
        }
        let name = KeyName::new(&id).map_err(|_| not_found())?;
        if !self.keys.key_exists(&name) {
            return Err(not_found());
        }
        Ok(Key::Asymmetric(name))
    }

    /// A key's `KeyMetadata`, from its record.
    pub(crate) fn metadata_of(
        &self,
        id: &str,
        description: &str,
        state: &'static str,
        deletion: Option<custos_types::Timestamp>,
        created: custos_types::Timestamp,
    ) -> Value {
        let mut meta = json!({
            "AWSAccountId": self.account,
            "KeyId": id,
            "Arn": self.arn(id),
            "Enabled": state == "Enabled",
            "Description": description,
            "KeyState": state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "MultiRegion": false,
            "CreationDate": created.as_second(),
        });
        if let Some(date) = deletion {
            meta["DeletionDate"] = json!(date.as_second());
        }
        meta
    }

    /// The metadata of a resolved key; reading a Custos key's record needs `keys:read`.
    pub(crate) async fn metadata(
        &self,
        ctx: &RequestContext,
        key: &Key,
    ) -> Result<Value, KmsError> {
        Ok(match key {
            Key::Asymmetric(name) => {
                let record: Arc<KeyRecord> = self.keys.key(ctx, name).await?;
                let mut meta = self.metadata_of(
                    name.as_str(),
                    &record.description,
                    state_name(record.state, false),
                    record.state.deletion_date(),
                    record.created_at,
                );
                meta["KeyUsage"] = json!("SIGN_VERIFY");
                meta["KeySpec"] = json!(spec_of(record.algorithm));
                meta["CustomerMasterKeySpec"] = json!(spec_of(record.algorithm));
                meta["SigningAlgorithms"] = json!([signing_algorithm(record.algorithm)]);
                meta
            }
            Key::Pending(record) => {
                self.keys
                    .authorize(ctx, custos_core::Operation::ReadKeys, "key_read")
                    .await?;
                let mut meta = self.metadata_of(
                    &record.id,
                    &record.description,
                    state_name(record.state, true),
                    record.state.deletion_date(),
                    record.created_at,
                );
                meta["KeyUsage"] = json!("SIGN_VERIFY");
                meta["KeySpec"] = json!(spec_of(record.algorithm));
                meta["CustomerMasterKeySpec"] = json!(spec_of(record.algorithm));
                meta["Origin"] = json!("EXTERNAL");
                meta
            }
            Key::Symmetric(record) => {
                self.keys
                    .authorize(ctx, custos_core::Operation::ReadKeys, "key_read")
                    .await?;
                let mut meta = self.metadata_of(
                    &record.id,
                    &record.description,
                    state_name(record.state, false),
                    record.state.deletion_date(),
                    record.created_at,
                );
                meta["KeyUsage"] = json!("ENCRYPT_DECRYPT");
                meta["KeySpec"] = json!("SYMMETRIC_DEFAULT");
                meta["CustomerMasterKeySpec"] = json!("SYMMETRIC_DEFAULT");
                meta["EncryptionAlgorithms"] = json!(["SYMMETRIC_DEFAULT"]);
                meta
            }
        })
    }
}

/// A page of a sorted list: at most `limit` (1-1000, default 100) items after `marker`, and the marker
/// of the next page when there is one.
pub(crate) fn page<T>(
    mut items: Vec<(String, T)>,
    limit: Option<i64>,
    marker: Option<&str>,
) -> Result<(Vec<T>, Option<String>), KmsError> {
    let limit = match limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => usize::try_from(n).unwrap_or(100),
        Some(_) => return Err(KmsError::validation("Limit must be between 1 and 1000")),
    };
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = match marker {
        None => 0,
        Some(m) => items
            .iter()
            .position(|(id, _)| id.as_str() > m)
            .unwrap_or(items.len()),
    };
    let mut rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
    let next = (rest.len() > limit).then(|| rest[limit - 1].0.clone());
    rest.truncate(limit);
    Ok((rest.into_iter().map(|(_, t)| t).collect(), next))
}

/// Runs one operation on its request body.
pub(crate) async fn run(
    api: &KmsApi,
    ctx: &RequestContext,
    operation: &str,
    body: &[u8],
) -> Result<Value, KmsError> {
    match operation {
        "CreateKey" => keys::create_key(api, ctx, body).await,
        "DescribeKey" => keys::describe_key(api, ctx, body).await,
        "ListKeys" => keys::list_keys(api, ctx, body).await,
        "GetPublicKey" => keys::get_public_key(api, ctx, body).await,
        "EnableKey" | "DisableKey" | "ScheduleKeyDeletion" | "CancelKeyDeletion" => {
            keys::change_state(api, ctx, operation, body).await
        }
        "GetKeyRotationStatus" => keys::rotation_status(api, ctx, body).await,
        "TagResource" => keys::tag_resource(api, ctx, body).await,
        "UntagResource" => keys::untag_resource(api, ctx, body).await,
        "ListResourceTags" => keys::list_resource_tags(api, ctx, body).await,
        "Sign" => crypto::sign(api, ctx, body).await,
        "Verify" => crypto::verify(api, ctx, body).await,
        "Encrypt" => crypto::encrypt(api, ctx, body).await,
        "Decrypt" => crypto::decrypt(api, ctx, body).await,
        "GenerateDataKey" => crypto::generate_data_key(api, ctx, body, true).await,
        "GenerateDataKeyWithoutPlaintext" => crypto::generate_data_key(api, ctx, body, false).await,
        "CreateAlias" => aliases::create_alias(api, ctx, body).await,
        "UpdateAlias" => aliases::update_alias(api, ctx, body).await,
        "DeleteAlias" => aliases::delete_alias(api, ctx, body).await,
        "ListAliases" => aliases::list_aliases(api, ctx, body).await,
        "GetParametersForImport" => import::parameters_for_import(api, ctx, body).await,
        "ImportKeyMaterial" => import::import_key_material(api, ctx, body).await,
        other => Err(KmsError::new(
            "UnknownOperationException",
            format!("Custos does not implement {other}"),
        )),
    }
}

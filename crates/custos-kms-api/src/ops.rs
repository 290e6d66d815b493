//! The TrentService operations, each mapped onto the key manager or the KMS-only settings.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use custos_audit::Outcome;
use custos_core::{Operation, RequestContext, SignInput, SignRequest, VerifyRequest};
use custos_types::{Algorithm, HashAlgorithm, KeyName, SignatureFormat, Timestamp};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::{KmsApi, KmsError};

/// The most bytes `Sign`, `Verify` and `Encrypt` take, as in AWS.
const MAX_MESSAGE: usize = 4096;
/// The first bytes of every ciphertext blob Custos makes.
const BLOB_MAGIC: &[u8; 4] = b"CKM1";

const STATE_PREFIX: &str = "kms_state:";
const SYMMETRIC_PREFIX: &str = "kms_symmetric:";
const ALIAS_PREFIX: &str = "kms_alias:";
/// A key made with origin EXTERNAL that awaits its key material: its KeySpec.
const PENDING_PREFIX: &str = "kms_pending:";
/// The wrapping key and token handed out by GetParametersForImport.
const IMPORT_PREFIX: &str = "kms_import:";

/// What GetParametersForImport leaves for ImportKeyMaterial.
#[derive(Debug, Serialize, Deserialize)]
struct ImportParameters {
    /// Hex of the sealed PKCS#8 DER of the RSA wrapping key.
    sealed_wrapping_key: String,
    /// Hex SHA-256 of the import token.
    token_hash: String,
    /// `RSAES_OAEP_SHA_256` or `RSAES_OAEP_SHA_1`.
    algorithm: String,
    valid_to: Timestamp,
}

/// What KMS knows of a key beyond Custos: its state and description.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyState {
    /// `Enabled`, `Disabled` or `PendingDeletion`.
    state: String,
    description: String,
    deletion_date: Option<Timestamp>,
    /// When a symmetric key was made (asymmetric keys have their Custos creation time).
    created: Option<Timestamp>,
}

/// A resolved key id.
enum Key {
    /// A Custos key (asymmetric).
    Asymmetric(KeyName),
    /// A symmetric key id.
    Symmetric(String),
    /// A key with origin EXTERNAL awaiting its key material, and its KeySpec.
    Pending(String, String),
}

impl Key {
    fn id(&self) -> &str {
        match self {
            Key::Asymmetric(name) => name.as_str(),
            Key::Symmetric(id) | Key::Pending(id, _) => id,
        }
    }
}

fn field<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, name: &str) -> Result<&'a str, KmsError> {
    field(input, name).ok_or_else(|| {
        KmsError::validation(format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"))
    })
}

fn blob(input: &Value, name: &str) -> Result<Vec<u8>, KmsError> {
    B64.decode(required(input, name)?)
        .map_err(|_| KmsError::new("SerializationException", format!("{name} is not base64")))
}

fn spec_of(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ECC_NIST_EDWARDS25519",
        Algorithm::Secp256k1 => "ECC_SECG_P256K1",
        Algorithm::P256 => "ECC_NIST_P256",
    }
}

fn signing_algorithm(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ED25519_SHA_512",
        Algorithm::Secp256k1 | Algorithm::P256 => "ECDSA_SHA_256",
    }
}

impl KmsApi {
    fn arn(&self, id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{id}", self.region, self.account)
    }

    fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account)
    }

    async fn state(&self, id: &str) -> Result<KeyState, KmsError> {
        Ok(
            match self
                .store
                .get_setting(&format!("{STATE_PREFIX}{id}"))
                .await?
            {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?,
                None => KeyState {
                    state: "Enabled".into(),
                    ..KeyState::default()
                },
            },
        )
    }

    async fn put_state(&self, id: &str, state: &KeyState) -> Result<(), KmsError> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
        self.store
            .put_setting(&format!("{STATE_PREFIX}{id}"), &bytes)
            .await?;
        Ok(())
    }

    /// Resolves a key id, key ARN, alias name or alias ARN.
    async fn resolve(&self, key_id: &str) -> Result<Key, KmsError> {
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
            let target = self
                .store
                .get_setting(&format!("{ALIAS_PREFIX}{id}"))
                .await?
                .ok_or_else(|| {
                    KmsError::new("NotFoundException", format!("Alias '{id}' does not exist"))
                })?;
            String::from_utf8(target).map_err(|_| not_found())?
        } else {
            id.to_owned()
        };
        if self
            .store
            .get_setting(&format!("{SYMMETRIC_PREFIX}{id}"))
            .await?
            .is_some()
        {
            return Ok(Key::Symmetric(id));
        }
        if let Some(spec) = self
            .store
            .get_setting(&format!("{PENDING_PREFIX}{id}"))
            .await?
        {
            return Ok(Key::Pending(
                id,
                String::from_utf8_lossy(&spec).into_owned(),
            ));
        }
        let name = KeyName::new(&id).map_err(|_| not_found())?;
        self.keys.key(&name).map_err(|_| not_found())?;
        Ok(Key::Asymmetric(name))
    }

    /// Refuses a key that is not enabled, as AWS does.
    async fn usable(&self, key: &Key) -> Result<(), KmsError> {
        let state = self.state(key.id()).await?;
        let arn = self.arn(key.id());
        match state.state.as_str() {
            "Enabled" => Ok(()),
            "Disabled" => Err(KmsError::new(
                "DisabledException",
                format!("{arn} is disabled."),
            )),
            _ => Err(KmsError::new(
                "KMSInvalidStateException",
                format!("{arn} is pending deletion."),
            )),
        }
    }

    /// Checks a scope; a refusal is audited, as on the native API.
    async fn allow(&self, ctx: &RequestContext, op: Operation<'_>) -> Result<(), KmsError> {
        let Some(principal) = &ctx.principal else {
            return Err(custos_core::CoreError::Unauthenticated.into());
        };
        if let Err(err) = principal.authorize(op) {
            let mut entry = ctx.entry("authorize");
            entry.outcome = Outcome::Denied;
            entry.error_code = Some(err.code().to_owned());
            entry.subject = Some(format!("KMS API: {op}"));
            self.keys.audit().append(entry).await?;
            return Err(err.into());
        }
        Ok(())
    }

    /// Writes one audit record for a KMS-only operation (aliases, key states, symmetric keys).
    async fn record(
        &self,
        ctx: &RequestContext,
        operation: &str,
        key: &str,
        subject: String,
    ) -> Result<(), KmsError> {
        let mut entry = ctx.entry(operation);
        entry.key = Some(key.to_owned());
        entry.subject = Some(subject);
        self.keys.audit().append(entry).await?;
        Ok(())
    }

    async fn metadata(&self, key: &Key) -> Result<Value, KmsError> {
        let state = self.state(key.id()).await?;
        let mut meta = json!({
            "AWSAccountId": self.account,
            "KeyId": key.id(),
            "Arn": self.arn(key.id()),
            "Enabled": state.state == "Enabled",
            "Description": state.description,
            "KeyState": state.state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "MultiRegion": false,
        });
        match key {
            Key::Asymmetric(name) => {
                let record = self.keys.key(name)?;
                meta["CreationDate"] = json!(record.created_at.as_second());
                meta["KeyUsage"] = json!("SIGN_VERIFY");
                meta["KeySpec"] = json!(spec_of(record.algorithm));
                meta["CustomerMasterKeySpec"] = json!(spec_of(record.algorithm));
                meta["SigningAlgorithms"] = json!([signing_algorithm(record.algorithm)]);
            }
            Key::Pending(_, spec) => {
                meta["CreationDate"] = json!(state.created.map_or(0, |t| t.as_second()));
                meta["KeyUsage"] = json!("SIGN_VERIFY");
                meta["KeySpec"] = json!(spec);
                meta["CustomerMasterKeySpec"] = json!(spec);
                meta["Origin"] = json!("EXTERNAL");
            }
            Key::Symmetric(_) => {
                meta["CreationDate"] = json!(state.created.map_or(0, |t| t.as_second()));
                meta["KeyUsage"] = json!("ENCRYPT_DECRYPT");
                meta["KeySpec"] = json!("SYMMETRIC_DEFAULT");
                meta["CustomerMasterKeySpec"] = json!("SYMMETRIC_DEFAULT");
                meta["EncryptionAlgorithms"] = json!(["SYMMETRIC_DEFAULT"]);
            }
        }
        if let Some(date) = state.deletion_date {
            meta["DeletionDate"] = json!(date.as_second());
        }
        Ok(meta)
    }

    /// The associated data that binds a symmetric ciphertext to its key and encryption context.
    fn context(id: &str, input: &Value) -> Result<Vec<u8>, KmsError> {
        let mut context = format!("custos-kms-v1\0{id}\0").into_bytes();
        if let Some(map) = input.get("EncryptionContext") {
            let map = map.as_object().ok_or_else(|| {
                KmsError::validation("EncryptionContext must be a map of strings")
            })?;
            let mut pairs: Vec<(&String, &str)> = Vec::new();
            for (k, v) in map {
                pairs.push((
                    k,
                    v.as_str().ok_or_else(|| {
                        KmsError::validation("EncryptionContext values must be strings")
                    })?,
                ));
            }
            pairs.sort();
            for (k, v) in pairs {
                for part in [k.as_bytes(), v.as_bytes()] {
                    context.extend_from_slice(
                        &u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes(),
                    );
                    context.extend_from_slice(part);
                }
            }
        }
        Ok(context)
    }

    async fn encrypt_blob(
        &self,
        id: &str,
        plaintext: &[u8],
        input: &Value,
    ) -> Result<Vec<u8>, KmsError> {
        let sealed = self
            .sealer
            .seal(plaintext, &Self::context(id, input)?)
            .await?;
        let mut blob = BLOB_MAGIC.to_vec();
        blob.push(u8::try_from(id.len()).map_err(|_| KmsError::validation("key id too long"))?);
        blob.extend_from_slice(id.as_bytes());
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }
}

fn invalid_ciphertext() -> KmsError {
    KmsError::new(
        "InvalidCiphertextException",
        "The ciphertext is invalid or was not made for this key and context.",
    )
}

fn blob_key_id(blob: &[u8]) -> Result<(&str, &[u8]), KmsError> {
    let rest = blob
        .strip_prefix(BLOB_MAGIC.as_slice())
        .ok_or_else(invalid_ciphertext)?;
    let (&len, rest) = rest.split_first().ok_or_else(invalid_ciphertext)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(invalid_ciphertext());
    }
    let (id, sealed) = rest.split_at(len);
    Ok((
        std::str::from_utf8(id).map_err(|_| invalid_ciphertext())?,
        sealed,
    ))
}

/// Runs one operation.
pub(crate) async fn run(
    api: &KmsApi,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, KmsError> {
    match operation {
        "CreateKey" => create_key(api, ctx, input).await,
        "DescribeKey" => {
            api.allow(ctx, Operation::ReadKeys).await?;
            let key = api.resolve(required(input, "KeyId")?).await?;
            Ok(json!({ "KeyMetadata": api.metadata(&key).await? }))
        }
        "ListKeys" => {
            api.allow(ctx, Operation::ReadKeys).await?;
            let mut keys: Vec<String> = api
                .keys
                .list_keys()?
                .iter()
                .map(|k| k.name.to_string())
                .collect();
            for prefix in [SYMMETRIC_PREFIX, PENDING_PREFIX] {
                for (name, _) in api.store.list_settings(prefix).await? {
                    keys.push(name.trim_start_matches(prefix).to_owned());
                }
            }
            keys.sort();
            let keys: Vec<Value> = keys
                .iter()
                .map(|id| json!({ "KeyId": id, "KeyArn": api.arn(id) }))
                .collect();
            Ok(json!({ "Keys": keys, "Truncated": false }))
        }
        "GetPublicKey" => {
            api.allow(ctx, Operation::ReadKeys).await?;
            let Key::Asymmetric(name) = api.resolve(required(input, "KeyId")?).await? else {
                return Err(KmsError::new(
                    "UnsupportedOperationException",
                    "a symmetric key has no public key",
                ));
            };
            let record = api.keys.key(&name)?;
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
        "Sign" | "Verify" => sign_or_verify(api, ctx, operation, input).await,
        "GetParametersForImport" => parameters_for_import(api, ctx, input).await,
        "ImportKeyMaterial" => import_key_material(api, ctx, input).await,
        "ScheduleKeyDeletion" | "CancelKeyDeletion" | "EnableKey" | "DisableKey" => {
            change_state(api, ctx, operation, input).await
        }
        "CreateAlias" => {
            api.allow(ctx, Operation::CreateKey).await?;
            let alias = required(input, "AliasName")?;
            if !alias.starts_with("alias/") || alias.starts_with("alias/aws/") || alias.len() > 256
            {
                return Err(KmsError::validation(
                    "AliasName must begin with alias/ (and not alias/aws/)",
                ));
            }
            let key = api.resolve(required(input, "TargetKeyId")?).await?;
            let written = api
                .store
                .put_setting_if_absent(&format!("{ALIAS_PREFIX}{alias}"), key.id().as_bytes())
                .await?;
            if !written {
                return Err(KmsError::new(
                    "AlreadyExistsException",
                    format!(
                        "An alias with the name {} already exists",
                        api.alias_arn(alias)
                    ),
                ));
            }
            api.record(ctx, "kms_create_alias", key.id(), alias.to_owned())
                .await?;
            Ok(json!({}))
        }
        "ListAliases" => {
            api.allow(ctx, Operation::ReadKeys).await?;
            let filter = match field(input, "KeyId") {
                Some(id) => Some(api.resolve(id).await?.id().to_owned()),
                None => None,
            };
            let mut aliases = Vec::new();
            for (name, target) in api.store.list_settings(ALIAS_PREFIX).await? {
                let alias = name.trim_start_matches(ALIAS_PREFIX);
                let target = String::from_utf8_lossy(&target).into_owned();
                if filter.as_ref().is_some_and(|f| *f != target) {
                    continue;
                }
                aliases.push(json!({ "AliasName": alias, "AliasArn": api.alias_arn(alias), "TargetKeyId": target }));
            }
            Ok(json!({ "Aliases": aliases, "Truncated": false }))
        }
        "Encrypt" => {
            let key = api.resolve(required(input, "KeyId")?).await?;
            let Key::Symmetric(id) = &key else {
                return Err(KmsError::new(
                    "InvalidKeyUsageException",
                    "Encrypt needs a symmetric (ENCRYPT_DECRYPT) key",
                ));
            };
            api.allow(ctx, Operation::Sign(&KeyName::new(id)?)).await?;
            api.usable(&key).await?;
            let plaintext = blob(input, "Plaintext")?;
            if plaintext.is_empty() || plaintext.len() > MAX_MESSAGE {
                return Err(KmsError::validation("Plaintext must be 1 to 4096 bytes"));
            }
            let ciphertext = api.encrypt_blob(id, &plaintext, input).await?;
            api.record(ctx, "kms_encrypt", id, format!("{} bytes", plaintext.len()))
                .await?;
            Ok(
                json!({ "CiphertextBlob": B64.encode(ciphertext), "KeyId": api.arn(id), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT" }),
            )
        }
        "GenerateDataKey" => {
            let key = api.resolve(required(input, "KeyId")?).await?;
            let Key::Symmetric(id) = &key else {
                return Err(KmsError::new(
                    "InvalidKeyUsageException",
                    "GenerateDataKey needs a symmetric (ENCRYPT_DECRYPT) key",
                ));
            };
            api.allow(ctx, Operation::Sign(&KeyName::new(id)?)).await?;
            api.usable(&key).await?;
            let bytes = match (
                field(input, "KeySpec"),
                input.get("NumberOfBytes").and_then(Value::as_u64),
            ) {
                (Some("AES_256"), None) => 32,
                (Some("AES_128"), None) => 16,
                (None, Some(n)) if (1..=1024).contains(&n) => usize::try_from(n).unwrap_or(32),
                _ => {
                    return Err(KmsError::validation(
                        "give KeySpec (AES_256 or AES_128) or NumberOfBytes (1-1024), not both",
                    ))
                }
            };
            let mut plaintext = zeroize::Zeroizing::new(vec![0u8; bytes]);
            OsRng.fill_bytes(&mut plaintext);
            let ciphertext = api.encrypt_blob(id, &plaintext, input).await?;
            api.record(ctx, "kms_generate_data_key", id, format!("{bytes} bytes"))
                .await?;
            Ok(
                json!({ "CiphertextBlob": B64.encode(ciphertext), "Plaintext": B64.encode(plaintext.as_slice()), "KeyId": api.arn(id) }),
            )
        }
        "Decrypt" => {
            let blob_bytes = blob(input, "CiphertextBlob")?;
            let (id, sealed) = blob_key_id(&blob_bytes)?;
            if let Some(asked) = field(input, "KeyId") {
                if api.resolve(asked).await?.id() != id {
                    return Err(KmsError::new("IncorrectKeyException", "The key ID in the request does not identify the key that made the ciphertext."));
                }
            }
            let key = api.resolve(id).await.map_err(|_| invalid_ciphertext())?;
            api.allow(ctx, Operation::Sign(&KeyName::new(id)?)).await?;
            api.usable(&key).await?;
            let plaintext = api
                .sealer
                .unseal(sealed, &KmsApi::context(id, input)?)
                .await
                .map_err(|_| invalid_ciphertext())?;
            api.record(ctx, "kms_decrypt", id, format!("{} bytes", plaintext.len()))
                .await?;
            Ok(
                json!({ "KeyId": api.arn(id), "Plaintext": B64.encode(plaintext.as_slice()), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT" }),
            )
        }
        other => Err(KmsError::new(
            "UnknownOperationException",
            format!("Custos does not implement {other}"),
        )),
    }
}

async fn create_key(api: &KmsApi, ctx: &RequestContext, input: &Value) -> Result<Value, KmsError> {
    api.allow(ctx, Operation::CreateKey).await?;
    let spec = field(input, "KeySpec")
        .or_else(|| field(input, "CustomerMasterKeySpec"))
        .unwrap_or("SYMMETRIC_DEFAULT");
    let usage = field(input, "KeyUsage");
    let description = field(input, "Description").unwrap_or_default().to_owned();
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let hex_id = hex::encode(id);
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex_id[..8],
        &hex_id[8..12],
        &hex_id[12..16],
        &hex_id[16..20],
        &hex_id[20..]
    );
    let origin = field(input, "Origin").unwrap_or("AWS_KMS");
    if !matches!(origin, "AWS_KMS" | "EXTERNAL") {
        return Err(KmsError::new(
            "UnsupportedOperationException",
            format!("Origin {origin} is not supported: use AWS_KMS or EXTERNAL"),
        ));
    }
    let key = if origin == "EXTERNAL" {
        if !matches!(
            spec,
            "ECC_SECG_P256K1" | "ECC_NIST_P256" | "ECC_NIST_EDWARDS25519"
        ) {
            return Err(KmsError::new(
                "UnsupportedOperationException",
                "Custos imports ECC_SECG_P256K1, ECC_NIST_P256 and ECC_NIST_EDWARDS25519 key material",
            ));
        }
        api.store
            .put_setting(&format!("{PENDING_PREFIX}{id}"), spec.as_bytes())
            .await?;
        api.record(
            ctx,
            "kms_create_key",
            &id,
            format!("{spec}, origin EXTERNAL"),
        )
        .await?;
        Key::Pending(id.clone(), spec.to_owned())
    } else if spec == "SYMMETRIC_DEFAULT" {
        if usage.is_some_and(|u| u != "ENCRYPT_DECRYPT") {
            return Err(KmsError::validation(
                "a SYMMETRIC_DEFAULT key is for ENCRYPT_DECRYPT",
            ));
        }
        api.store
            .put_setting(
                &format!("{SYMMETRIC_PREFIX}{id}"),
                api.sealer.name().as_str().as_bytes(),
            )
            .await?;
        api.record(ctx, "kms_create_key", &id, "SYMMETRIC_DEFAULT".into())
            .await?;
        Key::Symmetric(id.clone())
    } else {
        let algorithm = match spec {
            "ECC_SECG_P256K1" => Algorithm::Secp256k1,
            "ECC_NIST_P256" => Algorithm::P256,
            "ECC_NIST_EDWARDS25519" => Algorithm::Ed25519,
            other => {
                return Err(KmsError::validation(format!(
                    "KeySpec {other} is not supported: use ECC_SECG_P256K1, ECC_NIST_P256, ECC_NIST_EDWARDS25519 or SYMMETRIC_DEFAULT"
                )))
            }
        };
        if usage.is_some_and(|u| u != "SIGN_VERIFY") {
            return Err(KmsError::validation(format!(
                "a {spec} key is for SIGN_VERIFY"
            )));
        }
        let name = KeyName::new(&id)?;
        api.keys
            .create_key(ctx, name.clone(), algorithm, vec![])
            .await?;
        Key::Asymmetric(name)
    };
    api.put_state(
        key.id(),
        &KeyState {
            state: if matches!(key, Key::Pending(..)) {
                "PendingImport"
            } else {
                "Enabled"
            }
            .into(),
            description,
            deletion_date: None,
            created: Some(Timestamp::now()),
        },
    )
    .await?;
    Ok(json!({ "KeyMetadata": api.metadata(&key).await? }))
}

fn algorithm_of_spec(spec: &str) -> Option<Algorithm> {
    match spec {
        "ECC_SECG_P256K1" => Some(Algorithm::Secp256k1),
        "ECC_NIST_P256" => Some(Algorithm::P256),
        "ECC_NIST_EDWARDS25519" => Some(Algorithm::Ed25519),
        _ => None,
    }
}

/// GetParametersForImport: a fresh RSA wrapping key (sealed by the provider until the import) and a
/// one-time import token, valid for 24 hours.
async fn parameters_for_import(
    api: &KmsApi,
    ctx: &RequestContext,
    input: &Value,
) -> Result<Value, KmsError> {
    api.allow(ctx, Operation::CreateKey).await?;
    let key = api.resolve(required(input, "KeyId")?).await?;
    let Key::Pending(id, _) = &key else {
        return Err(KmsError::new(
            "UnsupportedOperationException",
            "only a key created with Origin EXTERNAL and no key material yet takes an import",
        ));
    };
    let algorithm = required(input, "WrappingAlgorithm")?;
    if !matches!(algorithm, "RSAES_OAEP_SHA_256" | "RSAES_OAEP_SHA_1") {
        return Err(KmsError::validation(
            "WrappingAlgorithm must be RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1",
        ));
    }
    let bits = match required(input, "WrappingKeySpec")? {
        "RSA_2048" => 2048,
        "RSA_3072" => 3072,
        "RSA_4096" => 4096,
        _ => {
            return Err(KmsError::validation(
                "WrappingKeySpec must be RSA_2048, RSA_3072 or RSA_4096",
            ))
        }
    };
    let (private_der, public_der) = tokio::task::spawn_blocking(move || {
        use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let private = rsa::RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| e.to_string())?;
        let public = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| e.to_string())?;
        let private = private.to_pkcs8_der().map_err(|e| e.to_string())?;
        Ok::<_, String>((
            zeroize::Zeroizing::new(private.as_bytes().to_vec()),
            public.as_bytes().to_vec(),
        ))
    })
    .await
    .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?
    .map_err(|e| KmsError::new("KMSInternalException", e))?;
    let sealed = api
        .sealer
        .seal(
            &private_der,
            format!("custos-kms-import-v1\0{id}").as_bytes(),
        )
        .await?;
    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let valid_to = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    let parameters = ImportParameters {
        sealed_wrapping_key: hex::encode(sealed),
        token_hash: hex::encode(sha2::Sha256::digest(token)),
        algorithm: algorithm.to_owned(),
        valid_to,
    };
    let bytes = serde_json::to_vec(&parameters)
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    api.store
        .put_setting(&format!("{IMPORT_PREFIX}{id}"), &bytes)
        .await?;
    api.record(
        ctx,
        "kms_get_parameters_for_import",
        id,
        format!("{algorithm} RSA-{bits}"),
    )
    .await?;
    Ok(json!({
        "KeyId": api.arn(id),
        "ImportToken": B64.encode(token),
        "PublicKey": B64.encode(public_der),
        "ParametersValidTo": valid_to.as_second(),
    }))
}

/// ImportKeyMaterial: unwraps the PKCS#8 key with the wrapping key of the token and imports it into the
/// default provider as the key's version 1.
async fn import_key_material(
    api: &KmsApi,
    ctx: &RequestContext,
    input: &Value,
) -> Result<Value, KmsError> {
    api.allow(ctx, Operation::CreateKey).await?;
    let key = api.resolve(required(input, "KeyId")?).await?;
    let Key::Pending(id, spec) = &key else {
        return Err(KmsError::new(
            "KMSInvalidStateException",
            "the key is not waiting for key material",
        ));
    };
    if field(input, "ExpirationModel").is_some_and(|m| m != "KEY_MATERIAL_DOES_NOT_EXPIRE") {
        return Err(KmsError::validation("Custos keeps imported key material: ExpirationModel must be KEY_MATERIAL_DOES_NOT_EXPIRE"));
    }
    let invalid_token = || {
        KmsError::new(
            "InvalidImportTokenException",
            "the import token is invalid for this key",
        )
    };
    let parameters: ImportParameters = match api
        .store
        .get_setting(&format!("{IMPORT_PREFIX}{id}"))
        .await?
    {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?,
        None => return Err(invalid_token()),
    };
    let token = blob(input, "ImportToken")?;
    if hex::encode(sha2::Sha256::digest(&token)) != parameters.token_hash {
        return Err(invalid_token());
    }
    if parameters.valid_to < Timestamp::now() {
        return Err(KmsError::new(
            "ExpiredImportTokenException",
            "the import token has expired; call GetParametersForImport again",
        ));
    }
    let sealed = hex::decode(&parameters.sealed_wrapping_key)
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    let wrapping_der = api
        .sealer
        .unseal(&sealed, format!("custos-kms-import-v1\0{id}").as_bytes())
        .await?;
    let wrapped = blob(input, "EncryptedKeyMaterial")?;
    let incorrect = || {
        KmsError::new(
            "IncorrectKeyMaterialException",
            "the key material does not decrypt to a key of this KeySpec",
        )
    };
    let material = {
        use rsa::pkcs8::DecodePrivateKey as _;
        let wrapping = rsa::RsaPrivateKey::from_pkcs8_der(&wrapping_der)
            .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
        let decrypted = if parameters.algorithm == "RSAES_OAEP_SHA_1" {
            wrapping.decrypt(rsa::Oaep::new::<sha1::Sha1>(), &wrapped)
        } else {
            wrapping.decrypt(rsa::Oaep::new::<sha2::Sha256>(), &wrapped)
        };
        zeroize::Zeroizing::new(decrypted.map_err(|_| incorrect())?)
    };
    let algorithm = algorithm_of_spec(spec).ok_or_else(incorrect)?;
    let private =
        custos_types::PrivateKey::from_pkcs8_der(algorithm, &material).map_err(|_| incorrect())?;
    api.keys
        .import_key(ctx, KeyName::new(id)?, &private, None)
        .await?;
    for prefix in [PENDING_PREFIX, IMPORT_PREFIX] {
        api.store.delete_setting(&format!("{prefix}{id}")).await?;
    }
    let mut state = api.state(id).await?;
    state.state = "Enabled".into();
    api.put_state(id, &state).await?;
    Ok(json!({}))
}

async fn sign_or_verify(
    api: &KmsApi,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, KmsError> {
    let Key::Asymmetric(name) = api.resolve(required(input, "KeyId")?).await? else {
        return Err(KmsError::new(
            "InvalidKeyUsageException",
            format!("{operation} needs a SIGN_VERIFY key"),
        ));
    };
    let verify = operation == "Verify";
    if verify {
        api.allow(ctx, Operation::Verify(&name)).await?;
    } else {
        api.allow(ctx, Operation::Sign(&name)).await?;
    }
    api.usable(&Key::Asymmetric(name.clone())).await?;
    let record = api.keys.key(&name)?;
    let algorithm = required(input, "SigningAlgorithm")?;
    if algorithm != signing_algorithm(record.algorithm) {
        return Err(KmsError::new(
            "InvalidKeyUsageException",
            format!(
                "key {} ({}) signs with {}, not {algorithm}",
                api.arn(name.as_str()),
                spec_of(record.algorithm),
                signing_algorithm(record.algorithm)
            ),
        ));
    }
    let message = blob(input, "Message")?;
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(KmsError::validation("Message must be 1 to 4096 bytes"));
    }
    let (sign_input, hash) = match (field(input, "MessageType").unwrap_or("RAW"), record.algorithm) {
        ("RAW", Algorithm::Ed25519) => (SignInput::Message(message.clone()), None),
        ("RAW", _) => (SignInput::Message(message.clone()), Some(HashAlgorithm::Sha256)),
        ("DIGEST", Algorithm::Ed25519) => {
            return Err(KmsError::validation("ED25519_SHA_512 signs RAW messages; DIGEST needs ED25519_PH_SHA_512, which Custos does not offer"))
        }
        ("DIGEST", _) if message.len() == 32 => (SignInput::Digest(message.clone()), None),
        ("DIGEST", _) => return Err(KmsError::validation("a DIGEST for ECDSA_SHA_256 is 32 bytes")),
        (other, _) => return Err(KmsError::validation(format!("MessageType {other} is not RAW or DIGEST"))),
    };
    let format = if record.algorithm.is_ecdsa() {
        SignatureFormat::Der
    } else {
        SignatureFormat::Raw
    };
    if verify {
        let outcome = api
            .keys
            .verify(
                ctx,
                &name,
                &VerifyRequest {
                    input: sign_input,
                    hash,
                    signature: blob(input, "Signature")?,
                    format,
                    version: None,
                },
            )
            .await
            .map_err(|e| match e.code() {
                "invalid_signature" | "malformed_signature" => {
                    KmsError::new("KMSInvalidSignatureException", "signature is invalid")
                }
                _ => e.into(),
            })?;
        if !outcome.valid {
            return Err(KmsError::new(
                "KMSInvalidSignatureException",
                "signature is invalid",
            ));
        }
        return Ok(
            json!({ "KeyId": api.arn(name.as_str()), "SignatureValid": true, "SigningAlgorithm": algorithm }),
        );
    }
    let outcome = api
        .keys
        .sign(
            ctx,
            &name,
            &SignRequest {
                input: sign_input,
                hash,
                version: None,
                sequence: None,
            },
        )
        .await?;
    if outcome.emergency.is_some() {
        // A KMS client cannot be told that another key signed: refuse rather than mislead it.
        return Err(KmsError::new(
            "KeyUnavailableException",
            "every provider of the key failed; emergency signatures are not given to KMS clients",
        ));
    }
    let signature = outcome.signature.encode(format)?;
    Ok(
        json!({ "KeyId": api.arn(name.as_str()), "Signature": B64.encode(signature), "SigningAlgorithm": algorithm }),
    )
}

async fn change_state(
    api: &KmsApi,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, KmsError> {
    let key = api.resolve(required(input, "KeyId")?).await?;
    let name = KeyName::new(key.id())?;
    api.allow(ctx, Operation::RotateKey(&name)).await?;
    let mut state = api.state(key.id()).await?;
    let arn = api.arn(key.id());
    let answer = match operation {
        "ScheduleKeyDeletion" => {
            if state.state == "PendingDeletion" {
                return Err(KmsError::new(
                    "KMSInvalidStateException",
                    format!("{arn} is pending deletion."),
                ));
            }
            let days = input
                .get("PendingWindowInDays")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            if !(7..=30).contains(&days) {
                return Err(KmsError::validation(
                    "PendingWindowInDays must be between 7 and 30",
                ));
            }
            let date = Timestamp::now()
                .checked_add(jiff::SignedDuration::from_hours(24 * days))
                .map_err(|e| KmsError::validation(e.to_string()))?;
            state.state = "PendingDeletion".into();
            state.deletion_date = Some(date);
            json!({ "KeyId": arn, "DeletionDate": date.as_second(), "KeyState": "PendingDeletion", "PendingWindowInDays": days })
        }
        "CancelKeyDeletion" => {
            if state.state != "PendingDeletion" {
                return Err(KmsError::new(
                    "KMSInvalidStateException",
                    format!("{arn} is not pending deletion."),
                ));
            }
            // As in AWS, a key whose deletion is cancelled is disabled until enabled again.
            state.state = "Disabled".into();
            state.deletion_date = None;
            json!({ "KeyId": arn })
        }
        "EnableKey" | "DisableKey" => {
            if state.state == "PendingDeletion" {
                return Err(KmsError::new(
                    "KMSInvalidStateException",
                    format!("{arn} is pending deletion."),
                ));
            }
            state.state = if operation == "EnableKey" {
                "Enabled"
            } else {
                "Disabled"
            }
            .into();
            json!({})
        }
        _ => unreachable!("matched by the caller"),
    };
    api.put_state(key.id(), &state).await?;
    api.record(
        ctx,
        &format!("kms_{}", operation.to_lowercase()),
        key.id(),
        state.state.clone(),
    )
    .await?;
    Ok(answer)
}

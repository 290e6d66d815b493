//! The records the compatibility APIs need, decided here like every other operation: aliases, sealing
//! (symmetric) keys and encryption under them, keys awaiting imported material (with one-time RSA
//! wrapping keys), keys that client APIs name by their own ids, and secrets sealed by the default
//! provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_store::StoreError;
use custos_types::{
    Algorithm, AliasRecord, ClientKeyRecord, ErrorCode, ImportRecord, ImportWrapping, KeyKind,
    KeyName, KeyRecord, KeyState, PrivateKey, PublicKey, SealingKeyRecord,
};
use rand_core::{OsRng, RngCore as _};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::{KeyManager, KeyStateChange};
use crate::wrapping::{self, WrappingAlgorithm};
use crate::{audited, CoreError, Operation, RequestContext};

/// The domain of the associated data of encryption under a sealing key. (The tag predates sealing keys
/// as a general record; it stays, so ciphertexts made before still open.)
const SEALING_DOMAIN: &str = "custos-kms-v1";

/// How long an import token works.
const IMPORT_TOKEN_HOURS: i64 = 24;

/// How a client's key material is written, when it is to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKeyFormat {
    /// 32 bytes of hex (optionally `0x`), a private key of the algorithm.
    Hex(Algorithm),
    /// A BIP32 `xprv` (base58check).
    Xprv,
}

/// What a surface asks core to generate for a client-named key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewClientKey {
    /// A key of the algorithm.
    Key(Algorithm),
    /// A BIP32 master.
    Bip32,
}

/// What a caller gets for importing key material: the one-time token, the wrapping public key
/// (SubjectPublicKeyInfo DER), and when the token stops working.
#[derive(Debug)]
pub struct ImportParameters {
    /// The token to send back with the material.
    pub token: [u8; 32],
    /// The RSA public key to wrap the material to.
    pub public_key_der: Vec<u8>,
    /// When the token stops working.
    pub valid_to: custos_types::Timestamp,
}

fn conflict(what: String) -> CoreError {
    CoreError::bad(ErrorCode::AliasExists, what)
}

fn import_context(id: &str) -> Vec<u8> {
    format!("custos-kms-import-v1\0{id}").into_bytes()
}

/// A Custos key name for a client-named key: the namespace (with `:` as `-`) and 16 random hex digits.
fn client_key_name(namespace: &str) -> Result<KeyName, CoreError> {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    Ok(KeyName::new(format!(
        "{}-{}",
        namespace.replace(':', "-"),
        hex::encode(id)
    ))?)
}

impl KeyManager {
    // ---- aliases ---------------------------------------------------------------------------------

    /// The target of an alias, if there is one. Any authenticated surface may resolve names; what the
    /// caller may then do with the key is decided by the operation it asks for.
    pub async fn alias_target(&self, name: &str) -> Result<Option<String>, CoreError> {
        Ok(self.store.get_alias(name).await?.map(|a| a.target))
    }

    /// Every alias; needs `keys:read`.
    pub async fn list_aliases(&self, ctx: &RequestContext) -> Result<Vec<AliasRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("alias_list")
        })
        .await?;
        Ok(self.store.list_aliases().await?)
    }

    /// Whether `id` names a Custos key, a sealing key or a pending import.
    async fn id_exists(&self, id: &str) -> Result<bool, CoreError> {
        if KeyName::new(id).is_ok_and(|name| self.key_exists(&name)) {
            return Ok(true);
        }
        Ok(self.store.get_sealing_key(id).await?.is_some()
            || self.store.get_import(id).await?.is_some())
    }

    /// Makes an alias for an existing key id; needs `keys:create`.
    pub async fn create_alias(
        &self,
        ctx: &RequestContext,
        name: &str,
        target: &str,
    ) -> Result<(), CoreError> {
        let mut entry = ctx.entry("alias_create");
        entry.key = Some(target.chars().take(128).collect());
        entry.subject = Some(name.chars().take(256).collect());
        let work = async {
            if !self.id_exists(target).await? {
                return Err(CoreError::bad(
                    ErrorCode::KeyNotFound,
                    format!("no key with id {target}"),
                ));
            }
            let now = self.clock.now();
            match self
                .store
                .create_alias(&AliasRecord {
                    name: name.to_owned(),
                    target: target.to_owned(),
                    created_at: now,
                    updated_at: now,
                })
                .await
            {
                Err(StoreError::Conflict(_)) => Err(conflict(format!("alias {name} exists"))),
                other => Ok(other?),
            }
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// Points an alias at another key id; needs `keys:rotate` on the new target.
    pub async fn update_alias(
        &self,
        ctx: &RequestContext,
        name: &str,
        target: &str,
    ) -> Result<(), CoreError> {
        let mut entry = ctx.entry("alias_update");
        entry.key = Some(target.chars().take(128).collect());
        entry.subject = Some(name.chars().take(256).collect());
        let work = async {
            if !self.id_exists(target).await? {
                return Err(CoreError::bad(
                    ErrorCode::KeyNotFound,
                    format!("no key with id {target}"),
                ));
            }
            match self
                .store
                .retarget_alias(name, target, self.clock.now())
                .await
            {
                Err(StoreError::NotFound(_)) => Err(CoreError::bad(
                    ErrorCode::AliasNotFound,
                    format!("no alias {name}"),
                )),
                other => Ok(other?),
            }
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageKey(target),
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// Removes an alias; needs `keys:rotate` on its target.
    pub async fn delete_alias(&self, ctx: &RequestContext, name: &str) -> Result<(), CoreError> {
        let target = self
            .alias_target(name)
            .await?
            .ok_or_else(|| CoreError::bad(ErrorCode::AliasNotFound, format!("no alias {name}")))?;
        let mut entry = ctx.entry("alias_delete");
        entry.subject = Some(name.chars().take(256).collect());
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageKey(&target),
            entry,
            async { Ok(self.store.delete_alias(name).await?) },
            |_, _| {},
        )
        .await
    }

    // ---- sealing keys ------------------------------------------------------------------------------

    /// One sealing key's record, if the id names one (resolution, like [`KeyManager::alias_target`]).
    pub async fn sealing_key(&self, id: &str) -> Result<Option<SealingKeyRecord>, CoreError> {
        Ok(self.store.get_sealing_key(id).await?)
    }

    /// Every sealing key; needs `keys:read`.
    pub async fn list_sealing_keys(
        &self,
        ctx: &RequestContext,
    ) -> Result<Vec<SealingKeyRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("key_list")
        })
        .await?;
        Ok(self.store.list_sealing_keys().await?)
    }

    /// Makes a sealing key in the default provider; needs `keys:create`.
    pub async fn create_sealing_key(
        &self,
        ctx: &RequestContext,
        id: &str,
        description: String,
    ) -> Result<SealingKeyRecord, CoreError> {
        let mut entry = ctx.entry("sealing_key_create");
        entry.key = Some(id.to_owned());
        let work = async {
            let record = SealingKeyRecord {
                id: id.to_owned(),
                provider: self.chain.default_name().clone(),
                state: KeyState::Enabled,
                description,
                created_at: self.clock.now(),
            };
            self.store.create_sealing_key(&record).await?;
            Ok(record)
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            work,
            |r, e| e.provider = Some(r.provider.to_string()),
        )
        .await
    }

    async fn usable_sealing_key(&self, id: &str) -> Result<SealingKeyRecord, CoreError> {
        let key = self.store.get_sealing_key(id).await?.ok_or_else(|| {
            CoreError::bad(
                ErrorCode::KeyNotFound,
                format!("no sealing key with id {id}"),
            )
        })?;
        if !key.state.is_usable() {
            return Err(CoreError::KeyUnusable {
                key: id.to_owned(),
                state: key.state,
            });
        }
        Ok(key)
    }

    fn sealing_context(id: &str, context: &[u8]) -> Vec<u8> {
        let mut aad = format!("{SEALING_DOMAIN}\0{id}\0").into_bytes();
        aad.extend_from_slice(context);
        aad
    }

    /// Encrypts under a sealing key, binding `context` (the caller's encoding of its encryption
    /// context); needs `sign:<id>`. Audited as `encrypt`.
    pub async fn seal_with(
        &self,
        ctx: &RequestContext,
        id: &str,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, CoreError> {
        let mut entry = ctx.entry("encrypt");
        entry.key = Some(id.to_owned());
        entry.payload_mac = Some(self.audit.mac(plaintext));
        let work = async {
            let key = self.usable_sealing_key(id).await?;
            let provider = self.chain.require(&key.provider)?;
            Ok(provider
                .seal(plaintext, &Self::sealing_context(id, context))
                .await?)
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::Sign(id),
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// Opens what [`KeyManager::seal_with`] made with the same key and context; needs `sign:<id>`.
    /// Audited as `decrypt`. Ciphertext that does not open is `invalid_payload`.
    pub async fn unseal_with(
        &self,
        ctx: &RequestContext,
        id: &str,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let mut entry = ctx.entry("decrypt");
        entry.key = Some(id.to_owned());
        let work = async {
            let key = self.usable_sealing_key(id).await?;
            let provider = self.chain.require(&key.provider)?;
            provider
                .unseal(sealed, &Self::sealing_context(id, context))
                .await
                .map_err(|e| match e {
                    custos_provider::ProviderError::Corrupt(_) => CoreError::bad(
                        ErrorCode::InvalidPayload,
                        "the ciphertext was not made by this key for this context",
                    ),
                    other => other.into(),
                })
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::Sign(id),
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// Changes the state of whatever `id` names: a Custos key, a sealing key or a pending import.
    /// Returns the new state. The operations are those of [`KeyManager::set_key_state`].
    pub async fn set_state_by_id(
        &self,
        ctx: &RequestContext,
        id: &str,
        change: KeyStateChange,
    ) -> Result<KeyState, CoreError> {
        if let Ok(name) = KeyName::new(id) {
            if self.key_exists(&name) {
                return Ok(self.set_key_state(ctx, &name, change).await?.state);
            }
        }
        let mut entry = ctx.entry(match change {
            KeyStateChange::Enable => "key_enable",
            KeyStateChange::Disable => "key_disable",
            KeyStateChange::ScheduleDeletion { .. } => "key_schedule_deletion",
            KeyStateChange::CancelDeletion => "key_cancel_deletion",
        });
        entry.key = Some(id.to_owned());
        let op = match change {
            KeyStateChange::ScheduleDeletion { .. } | KeyStateChange::CancelDeletion => {
                Operation::DeleteKey(id)
            }
            _ => Operation::ManageKey(id),
        };
        let work = async {
            let now = self.clock.now();
            if let Some(key) = self.store.get_sealing_key(id).await? {
                let state = change.apply(id, key.state, now)?;
                self.store.set_sealing_key_state(id, state).await?;
                return Ok(state);
            }
            if let Some(import) = self.store.get_import(id).await? {
                let state = change.apply(id, import.state, now)?;
                self.store.set_import_state(id, state).await?;
                return Ok(state);
            }
            Err(CoreError::bad(
                ErrorCode::KeyNotFound,
                format!("no key with id {id}"),
            ))
        };
        audited::run(&self.audit, ctx, op, entry, work, |state, e| {
            e.subject = Some(state.to_string())
        })
        .await
    }

    /// Destroys sealing keys and pending imports whose scheduled deletion came due (run by the
    /// scheduler). Failures are logged and retried at the next pass.
    pub(super) async fn destroy_due_records(
        &self,
        ctx: &RequestContext,
        now: custos_types::Timestamp,
    ) {
        let due = |state: KeyState| state.deletion_date().is_some_and(|at| at <= now);
        let sealing = self.store.list_sealing_keys().await.unwrap_or_default();
        for key in sealing.into_iter().filter(|k| due(k.state)) {
            let mut entry = ctx.entry("key_destroy");
            entry.key = Some(key.id.clone());
            let result = audited::run(
                &self.audit,
                ctx,
                Operation::DeleteKey(&key.id),
                entry,
                async {
                    Ok(self
                        .store
                        .set_sealing_key_state(&key.id, KeyState::Destroyed)
                        .await?)
                },
                |_, _| {},
            )
            .await;
            if let Err(e) = result {
                tracing::error!(key = %key.id, error = %e, "cannot destroy a sealing key");
            }
        }
        let imports = self.store.list_imports().await.unwrap_or_default();
        for import in imports.into_iter().filter(|i| due(i.state)) {
            let mut entry = ctx.entry("key_destroy");
            entry.key = Some(import.id.clone());
            let work = async {
                self.store.set_import_wrapping(&import.id, None).await?;
                Ok(self
                    .store
                    .set_import_state(&import.id, KeyState::Destroyed)
                    .await?)
            };
            if let Err(e) = audited::run(
                &self.audit,
                ctx,
                Operation::DeleteKey(&import.id),
                entry,
                work,
                |_, _| {},
            )
            .await
            {
                tracing::error!(key = %import.id, error = %e, "cannot destroy a pending import");
            }
        }
    }

    // ---- imports ------------------------------------------------------------------------------------

    /// A pending import's record, if the id names one (resolution).
    pub async fn import_record(&self, id: &str) -> Result<Option<ImportRecord>, CoreError> {
        Ok(self.store.get_import(id).await?)
    }

    /// Every pending import; needs `keys:read`.
    pub async fn list_imports(&self, ctx: &RequestContext) -> Result<Vec<ImportRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ReadKeys, || {
            ctx.entry("key_list")
        })
        .await?;
        Ok(self.store.list_imports().await?)
    }

    /// Makes a key that awaits its material from outside; needs `keys:create`.
    pub async fn create_import(
        &self,
        ctx: &RequestContext,
        id: &str,
        algorithm: Algorithm,
        description: String,
    ) -> Result<ImportRecord, CoreError> {
        let mut entry = ctx.entry("import_create");
        entry.key = Some(id.to_owned());
        entry.subject = Some(algorithm.to_string());
        let work = async {
            KeyName::new(id)?;
            let record = ImportRecord {
                id: id.to_owned(),
                algorithm,
                description,
                state: KeyState::Enabled,
                created_at: self.clock.now(),
                wrapping: None,
            };
            self.store.create_import(&record).await?;
            Ok(record)
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    /// A fresh one-time RSA wrapping key and token for a pending import (valid 24 hours, replacing any
    /// earlier one); needs `keys:create`.
    pub async fn import_parameters(
        &self,
        ctx: &RequestContext,
        id: &str,
        algorithm: WrappingAlgorithm,
        bits: u32,
    ) -> Result<ImportParameters, CoreError> {
        let mut entry = ctx.entry("import_parameters");
        entry.key = Some(id.to_owned());
        entry.subject = Some(format!("{} RSA-{bits}", algorithm.as_str()));
        let work = async {
            let import = self.pending_import(id).await?;
            let key = tokio::task::spawn_blocking(move || wrapping::generate(bits))
                .await
                .map_err(|e| CoreError::Internal(format!("wrapping key task: {e}")))??;
            let sealed = self
                .chain
                .default_provider()
                .seal(&key.private_pkcs8, &import_context(&import.id))
                .await?;
            let mut token = [0u8; 32];
            OsRng.fill_bytes(&mut token);
            let valid_to = self
                .clock
                .now()
                .checked_add(jiff::SignedDuration::from_hours(IMPORT_TOKEN_HOURS))
                .map_err(|e| CoreError::Internal(e.to_string()))?;
            self.store
                .set_import_wrapping(
                    id,
                    Some(&ImportWrapping {
                        sealed_private_key: sealed,
                        token_hash: sha2::Sha256::digest(token).into(),
                        algorithm: algorithm.as_str().to_owned(),
                        valid_to,
                    }),
                )
                .await?;
            Ok(ImportParameters {
                token,
                public_key_der: key.public_der,
                valid_to,
            })
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            work,
            |_, _| {},
        )
        .await
    }

    async fn pending_import(&self, id: &str) -> Result<ImportRecord, CoreError> {
        let import = self.store.get_import(id).await?.ok_or_else(|| {
            CoreError::bad(
                ErrorCode::InvalidKeyState,
                format!("key {id} is not waiting for key material"),
            )
        })?;
        if import.state == KeyState::Destroyed {
            return Err(CoreError::KeyUnusable {
                key: id.to_owned(),
                state: import.state,
            });
        }
        Ok(import)
    }

    /// Takes in key material wrapped to the import's wrapping key: with the right token, within its
    /// time, the material is unwrapped (constant-time RSA), checked to be a key of the import's algorithm,
    /// and imported into the default provider as version 1 of the key, which replaces the pending import.
    /// A failed attempt with the right token ends the token, so one wrapping key cannot be probed.
    /// Needs `keys:create`.
    pub async fn import_material(
        &self,
        ctx: &RequestContext,
        id: &str,
        token: &[u8],
        wrapped: &[u8],
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let mut entry = ctx.entry("key_import");
        entry.key = Some(id.to_owned());
        let work = async {
            let import = self.pending_import(id).await?;
            let invalid = || {
                CoreError::bad(
                    ErrorCode::InvalidImportToken,
                    "the import token is invalid for this key",
                )
            };
            let wrapping = import.wrapping.clone().ok_or_else(invalid)?;
            let presented: [u8; 32] = sha2::Sha256::digest(token).into();
            if !bool::from(presented.ct_eq(&wrapping.token_hash)) {
                return Err(invalid());
            }
            if wrapping.valid_to < self.clock.now() {
                return Err(CoreError::bad(
                    ErrorCode::ImportTokenExpired,
                    "the import token has expired; ask for new import parameters",
                ));
            }
            // From here the token is spent whatever happens next.
            let attempt = self.unwrap_and_import(&import, &wrapping, wrapped).await;
            if attempt.is_err() {
                self.store.set_import_wrapping(id, None).await?;
            }
            attempt
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::CreateKey,
            entry,
            work,
            |key, e| {
                e.version = Some(1);
                e.provider = key
                    .current()
                    .and_then(|v| v.locations.first())
                    .map(|l| l.provider.to_string());
            },
        )
        .await
    }

    async fn unwrap_and_import(
        &self,
        import: &ImportRecord,
        wrapping: &ImportWrapping,
        wrapped: &[u8],
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let incorrect = || {
            CoreError::bad(
                ErrorCode::IncorrectKeyMaterial,
                "the key material does not unwrap to a key of this key's algorithm",
            )
        };
        let algorithm = WrappingAlgorithm::parse(&wrapping.algorithm)
            .ok_or_else(|| CoreError::Internal("stored wrapping algorithm".into()))?;
        let private_der = self
            .chain
            .default_provider()
            .unseal(&wrapping.sealed_private_key, &import_context(&import.id))
            .await?;
        let wrapped = wrapped.to_vec();
        let material = tokio::task::spawn_blocking(move || {
            wrapping::unwrap(&private_der, algorithm, &wrapped)
        })
        .await
        .map_err(|e| CoreError::Internal(format!("unwrap task: {e}")))?
        .ok_or_else(incorrect)?;
        let private =
            PrivateKey::from_pkcs8_der(import.algorithm, &material).map_err(|_| incorrect())?;
        let name = KeyName::new(&import.id)?;
        let mut record = self.lifecycle.imported_record(name, &private).await?;
        record.description = import.description.clone();
        record.state = import.state;
        self.lifecycle.register_import(&import.id, record).await
    }

    // ---- client-named keys ------------------------------------------------------------------------

    /// Stores a client's key material, sealed by the default provider under `context`, by the client's
    /// own id; with `signing`, the material is also imported (inside the provider) as a Custos key that
    /// signs for it. Material that is not a key of that format is kept for retrieval only. `op` is the
    /// surface's scope. Audited as `client_key_store`; the record names the id, never the material.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_client_key(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        namespace: &str,
        id: &str,
        material: &[u8],
        context: &[u8],
        signing: Option<ClientKeyFormat>,
        attributes: BTreeMap<String, String>,
    ) -> Result<ClientKeyRecord, CoreError> {
        let mut entry = ctx.entry("client_key_store");
        entry.subject = Some(format!(
            "{namespace} {}",
            id.chars().take(24).collect::<String>()
        ));
        let work = async {
            if self.store.get_client_key(namespace, id).await?.is_some() {
                return Err(CoreError::bad(
                    ErrorCode::KeyExists,
                    format!("{namespace} already has a key {id}"),
                ));
            }
            let sealed = self
                .chain
                .default_provider()
                .seal(material, context)
                .await?;
            let key = match signing {
                None => None,
                Some(format) => match self
                    .import_client_material(namespace, &sealed, context, format)
                    .await
                {
                    Ok(key) => Some(key.name.clone()),
                    Err(CoreError::Refused {
                        code: ErrorCode::InvalidPayload,
                        ..
                    }) => None,
                    Err(e) => return Err(e),
                },
            };
            let record = ClientKeyRecord {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
                key,
                sealed: Some(sealed),
                attributes,
                created_at: self.clock.now(),
            };
            match self.store.create_client_key(&record).await {
                Err(StoreError::Conflict(_)) => Err(CoreError::bad(
                    ErrorCode::KeyExists,
                    format!("{namespace} already has a key {id}"),
                )),
                other => other.map(|()| record).map_err(CoreError::from),
            }
        };
        audited::run(&self.audit, ctx, op, entry, work, |r, e| {
            e.key = r.key.as_ref().map(|k| k.to_string())
        })
        .await
    }

    async fn import_client_material(
        &self,
        namespace: &str,
        sealed: &[u8],
        context: &[u8],
        format: ClientKeyFormat,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        let name = client_key_name(namespace)?;
        match format {
            ClientKeyFormat::Hex(algorithm) => {
                self.lifecycle
                    .create_from_sealed(name, algorithm, sealed, context)
                    .await
            }
            ClientKeyFormat::Xprv => self
                .lifecycle
                .create_bip32(name, Some((sealed, context)))
                .await
                .map(|(key, _)| key),
        }
    }

    /// Generates a Custos key for a client that names it by its own id: `id_of` turns the new public
    /// key (and, for a BIP32 master, its chain code) into the client's id. `op` is the surface's scope.
    /// Audited as `key_create`.
    pub async fn generate_client_key(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        namespace: &str,
        kind: NewClientKey,
        attributes: BTreeMap<String, String>,
        id_of: impl FnOnce(&PublicKey, Option<[u8; 32]>) -> Result<String, CoreError>,
    ) -> Result<(ClientKeyRecord, Arc<KeyRecord>), CoreError> {
        let mut entry = ctx.entry("key_create");
        entry.subject = Some(format!("for {namespace}"));
        let work = async {
            let name = client_key_name(namespace)?;
            let (key, chain_code) = match kind {
                NewClientKey::Key(algorithm) => (
                    self.lifecycle
                        .create(
                            name,
                            algorithm,
                            Vec::new(),
                            crate::lifecycle::Origin::Generate,
                            String::new(),
                        )
                        .await?,
                    None,
                ),
                NewClientKey::Bip32 => {
                    let (key, code) = self.lifecycle.create_bip32(name, None).await?;
                    (key, Some(code))
                }
            };
            let public = key
                .current()
                .map(|v| v.public_key.clone())
                .ok_or_else(|| CoreError::Internal("a new key has no current version".into()))?;
            let record = ClientKeyRecord {
                namespace: namespace.to_owned(),
                id: id_of(&public, chain_code)?,
                key: Some(key.name.clone()),
                sealed: None,
                attributes,
                created_at: self.clock.now(),
            };
            match self.store.create_client_key(&record).await {
                Err(StoreError::Conflict(_)) => Err(CoreError::bad(
                    ErrorCode::KeyExists,
                    format!("{namespace} already has a key {}", record.id),
                )),
                other => other.map(|()| (record, key)).map_err(CoreError::from),
            }
        };
        audited::run(&self.audit, ctx, op, entry, work, |(record, key), e| {
            e.key = Some(key.name.to_string());
            e.subject = Some(format!(
                "for {namespace} {}",
                record.id.chars().take(24).collect::<String>()
            ));
        })
        .await
    }

    /// A client-named key's record (the material stays sealed); `op` is the surface's scope.
    pub async fn client_key(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ClientKeyRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, op, || ctx.entry("client_key_read")).await?;
        Ok(self.store.get_client_key(namespace, id).await?)
    }

    /// The Custos key that signs for a client-named key: the linked one, or (for material stored before
    /// keys were imported for signing) the material imported now, inside the provider. `op` is the
    /// surface's scope.
    pub async fn client_signing_key(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        record: &ClientKeyRecord,
        context: &[u8],
        format: ClientKeyFormat,
    ) -> Result<Arc<KeyRecord>, CoreError> {
        if let Some(name) = &record.key {
            let key = self.registry().get(name)?;
            if format == ClientKeyFormat::Xprv && key.kind != KeyKind::Bip32 {
                return Err(CoreError::bad(
                    ErrorCode::NotSupported,
                    "this key is not a BIP32 key",
                ));
            }
            return Ok(key);
        }
        let sealed = record.sealed.clone().ok_or_else(|| {
            CoreError::Internal("a client key has neither a key nor material".into())
        })?;
        let mut entry = ctx.entry("client_key_import");
        entry.subject = Some(format!(
            "{} {}",
            record.namespace,
            record.id.chars().take(24).collect::<String>()
        ));
        let work = async {
            let key = self
                .import_client_material(&record.namespace, &sealed, context, format)
                .await?;
            self.store
                .link_client_key(&record.namespace, &record.id, &key.name)
                .await?;
            Ok(key)
        };
        audited::run(&self.audit, ctx, op, entry, work, |key, e| {
            e.key = Some(key.name.to_string())
        })
        .await
    }

    /// A client's stored key material, opened: needs `op` (a scope that hands out private keys) and,
    /// when `require_client_certificate`, a client certificate. Audited as `client_key_retrieve`; the
    /// record names the id, never the material.
    pub async fn retrieve_client_key(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        record: &ClientKeyRecord,
        context: &[u8],
        require_client_certificate: bool,
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let mut entry = ctx.entry("client_key_retrieve");
        entry.key = record.key.as_ref().map(|k| k.to_string());
        entry.subject = Some(format!(
            "{} {}",
            record.namespace,
            record.id.chars().take(24).collect::<String>()
        ));
        if require_client_certificate && ctx.cert_fingerprint.is_none() && !ctx.system {
            entry.outcome = custos_audit::Outcome::Denied;
            entry.error_code = Some(ErrorCode::ClientCertificateRequired.as_str().to_owned());
            self.audit.append(entry).await?;
            return Err(CoreError::bad(
                ErrorCode::ClientCertificateRequired,
                "retrieving a private key needs a client certificate on the allowlist",
            ));
        }
        let work = async {
            let sealed = record.sealed.as_deref().ok_or_else(|| {
                CoreError::bad(
                    ErrorCode::NotSupported,
                    "this key was generated by Custos and never leaves its provider",
                )
            })?;
            Ok(self
                .chain
                .default_provider()
                .unseal(sealed, context)
                .await?)
        };
        audited::run(&self.audit, ctx, op, entry, work, |_, _| {}).await
    }

    // ---- secrets sealed by the default provider -------------------------------------------------

    /// Seals a secret (a data key) under the default provider's own key, bound to `context`; `op` is
    /// the surface's scope and `operation` the audit record's name.
    pub async fn seal_secret(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        operation: &str,
        context: &[u8],
        plaintext: &[u8],
        subject: String,
    ) -> Result<Vec<u8>, CoreError> {
        let mut entry = ctx.entry(operation);
        entry.subject = Some(subject);
        audited::run(
            &self.audit,
            ctx,
            op,
            entry,
            async {
                Ok(self
                    .chain
                    .default_provider()
                    .seal(plaintext, context)
                    .await?)
            },
            |_, _| {},
        )
        .await
    }

    /// Opens what [`KeyManager::seal_secret`] made with the same context; anything else is
    /// `invalid_payload`.
    pub async fn unseal_secret(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        operation: &str,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let work = async {
            self.chain
                .default_provider()
                .unseal(sealed, context)
                .await
                .map_err(|e| match e {
                    custos_provider::ProviderError::Corrupt(_) => CoreError::bad(
                        ErrorCode::InvalidPayload,
                        "the sealed bytes were not made by this provider for this purpose, or were altered",
                    ),
                    other => other.into(),
                })
        };
        audited::run(
            &self.audit,
            ctx,
            op,
            ctx.entry(operation),
            work,
            |secret, e| e.subject = Some(format!("{} bytes", secret.len())),
        )
        .await
    }
}

//! Signing and verifying: the sign path in order — authorise, the key's state, the exact bytes, the
//! policies, the equivocation guard or the signature cache, the provider chain (or emergency mode), the
//! verified signature — and its audit record.

use std::sync::Arc;

use custos_provider::DerivationPath;
use custos_types::{
    KeyName, KeyRecord, PublicKey, SignPayload, Signature, TypesError, VersionRecord, VersionState,
};
use sha2::Digest as _;

use super::KeyManager;
use crate::chain::ChainFailure;
use crate::payload::frame_batch;
use crate::policy::{PolicyInput, PolicyStage};
use crate::{
    audited, CoreError, Event, Operation, RequestContext, SignInput, SignOutcome, SignRequest,
    VerifyOutcome, VerifyRequest,
};

/// Refuses a key whose own state forbids using it.
pub(super) fn usable(key: &KeyRecord) -> Result<(), CoreError> {
    if key.state.is_usable() {
        Ok(())
    } else {
        Err(CoreError::KeyUnusable {
            key: key.name.to_string(),
            state: key.state,
        })
    }
}

/// The version that signs: the one asked for, or the current one; it must be able to sign.
fn signing_version(
    key: &KeyRecord,
    version: Option<custos_types::KeyVersion>,
) -> Result<&VersionRecord, CoreError> {
    let record = match version {
        None => key.current().ok_or_else(|| {
            CoreError::Internal(format!("key {} has no current version", key.name))
        })?,
        Some(v) => key.version(v).ok_or_else(|| CoreError::VersionNotFound {
            key: key.name.clone(),
            version: v,
        })?,
    };
    if !record.state.can_sign() {
        return Err(CoreError::VersionNotUsable {
            key: key.name.clone(),
            version: record.version,
            state: record.state,
        });
    }
    Ok(record)
}

impl KeyManager {
    /// Signs with a key. The signature is returned only after its audit record is durable.
    pub async fn sign(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        request: &SignRequest,
    ) -> Result<SignOutcome, CoreError> {
        self.sign_as(ctx, Operation::Sign(name.as_str()), name, request)
            .await
    }

    /// [`KeyManager::sign`] for a surface whose own scope grants signing (the BitGo API signs with the
    /// keys it made under its `bitgo` scope): `op` is what the caller must be allowed.
    pub async fn sign_as(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        name: &KeyName,
        request: &SignRequest,
    ) -> Result<SignOutcome, CoreError> {
        let mut entry = ctx.entry("sign");
        entry.key = Some(name.to_string());
        entry.subject = request.sequence.map(|s| format!("sequence {s}"));
        entry.payload_mac = Some(self.audit.mac(request.input.bytes()));
        let work = async {
            let key = self.registry().get(name)?;
            self.sign_one(ctx, &key, request, "sign").await
        };
        audited::run(&self.audit, ctx, op, entry, work, |outcome, e| {
            e.version = Some(outcome.version.0);
            e.provider = Some(outcome.provider.to_string());
        })
        .await
    }

    /// Signs many items with one key; each item has its own result, in input order. One audit record
    /// covers the batch: the item count, a MAC over every item, and the first error if any.
    pub async fn sign_batch(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &KeyName,
        items: &[SignRequest],
    ) -> Result<Vec<Result<SignOutcome, CoreError>>, CoreError> {
        let mut entry = ctx.entry("sign_batch");
        entry.key = Some(name.to_string());
        entry.items = u32::try_from(items.len()).ok();
        entry.payload_mac = Some(self.audit.mac(&frame_batch(items)));
        audited::run(
            &self.audit,
            ctx,
            Operation::Sign(name.as_str()),
            entry,
            self.sign_batch_unaudited(ctx, name, items),
            |results, e| {
                if let Some(Ok(first)) = results.iter().find(|r| r.is_ok()) {
                    e.version = Some(first.version.0);
                    e.provider = Some(first.provider.to_string());
                }
                if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
                    e.outcome = custos_audit::Outcome::Error;
                    e.error_code = Some(err.code().as_str().to_owned());
                }
            },
        )
        .await
    }

    async fn sign_batch_unaudited(
        self: &Arc<Self>,
        ctx: &RequestContext,
        name: &KeyName,
        items: &[SignRequest],
    ) -> Result<Vec<Result<SignOutcome, CoreError>>, CoreError> {
        self.limits.check_batch(items.len())?;
        if items.iter().any(|i| i.sequence.is_some()) {
            return Err(CoreError::bad(
                custos_types::ErrorCode::NotSupported,
                "a sequence (the equivocation guard) applies to single sign requests, not batches",
            ));
        }
        let key = self.registry().get(name)?;
        usable(&key)?;
        // Items run concurrently: one task per chunk, so CPU-bound signing and verification use every
        // core, and each task keeps a provider session busy.
        let workers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(1, 16);
        let chunk = items.len().div_ceil(workers).max(8);
        if items.len() <= chunk {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(self.sign_one(ctx, &key, item, "sign_batch").await);
            }
            return Ok(results);
        }
        let mut tasks = Vec::new();
        for part in items.chunks(chunk) {
            let (manager, key, part, ctx) = (
                Arc::clone(self),
                Arc::clone(&key),
                part.to_vec(),
                ctx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut results = Vec::with_capacity(part.len());
                for item in &part {
                    results.push(manager.sign_one(&ctx, &key, item, "sign_batch").await);
                }
                results
            }));
        }
        let mut results = Vec::with_capacity(items.len());
        for task in tasks {
            results.extend(
                task.await
                    .map_err(|e| CoreError::Internal(format!("batch task failed: {e}")))?,
            );
        }
        Ok(results)
    }

    /// One signature, after authorisation: state, payload, policies, then the guard or the cache.
    async fn sign_one(
        &self,
        ctx: &RequestContext,
        key: &KeyRecord,
        request: &SignRequest,
        operation: &'static str,
    ) -> Result<SignOutcome, CoreError> {
        usable(key)?;
        let payload = self
            .limits
            .payload(key.algorithm, &request.input, request.hash)?;
        let version = signing_version(key, request.version)?;
        let message = match &request.input {
            SignInput::Message(m) => Some(m.as_slice()),
            SignInput::Digest(_) => None,
        };
        let input = PolicyInput {
            ctx,
            key,
            version: version.version,
            operation,
            payload: &payload,
            message,
            sequence: request.sequence,
            stage: PolicyStage::Normal,
        };
        self.policies.check(&input).await?;
        match request.sequence {
            Some(sequence) => {
                self.guard
                    .sign(
                        key,
                        &payload,
                        sequence,
                        self.limits.max_sequence_jump,
                        || self.sign_payload(input, version),
                    )
                    .await
            }
            None => self.sign_cached(input, version).await,
        }
    }

    /// Signs through the single-flight cache: a repeated request for the same version and bytes gets
    /// the signature made the first time. Emergency signatures are never cached.
    async fn sign_cached(
        &self,
        input: PolicyInput<'_>,
        version: &VersionRecord,
    ) -> Result<SignOutcome, CoreError> {
        let Some(cache) = &self.cache else {
            return self.sign_payload(input, version).await;
        };
        let cache_key = (
            input.key.name.clone(),
            version.version,
            sha2::Sha256::digest(input.payload.as_bytes()).into(),
        );
        let slot = cache.slot(cache_key.clone());
        let mut signed_here = None;
        let mut ran = false;
        let result = slot
            .get_or_try_init(|| async {
                ran = true;
                self.metrics.cache_misses.inc();
                let outcome = self.sign_payload(input, version).await?;
                if outcome.emergency.is_some() {
                    // Not cached: an emergency key is not the key's identity.
                    signed_here = Some(outcome);
                    return Err(None);
                }
                Ok(outcome)
            })
            .await;
        match (result, signed_here) {
            (Ok(outcome), _) => {
                if !ran {
                    self.metrics.cache_hits.inc();
                }
                Ok(outcome.clone())
            }
            (Err(None::<CoreError>), Some(outcome)) => {
                cache.forget(&cache_key);
                Ok(outcome)
            }
            (Err(err), _) => {
                cache.forget(&cache_key);
                Err(err.unwrap_or_else(|| CoreError::Internal("cache slot".into())))
            }
        }
    }

    /// The provider chain, and emergency mode when every provider failed.
    async fn sign_payload(
        &self,
        input: PolicyInput<'_>,
        version: &VersionRecord,
    ) -> Result<SignOutcome, CoreError> {
        let last = match self.chain.sign(input.key, version, input.payload).await {
            Ok(outcome) => return Ok(outcome),
            Err(ChainFailure::Permanent(err)) => return Err(err),
            Err(ChainFailure::Exhausted(err)) => err,
        };
        let Some(emergency) = &self.emergency else {
            return Err(last);
        };
        let input = PolicyInput {
            stage: PolicyStage::Emergency,
            ..input
        };
        let (outcome, count) = emergency.sign(&self.policies, input).await?;
        self.metrics.emergency_signatures.inc();
        if let Some(public_key) = &outcome.emergency {
            tracing::warn!(key = %input.key.name, count, "EMERGENCY SIGNATURE");
            self.events.emit(Event::EmergencySignature {
                key: input.key.name.to_string(),
                emergency_public_key: hex::encode(public_key.as_bytes()),
                count,
            });
        }
        Ok(outcome)
    }

    /// Signs a 32-byte digest with the child of a BIP32 key derived along `path`; the signature must
    /// verify under `expected`, the child public key the caller's transaction names. `op` is what the
    /// caller must be allowed (a surface's scope, or signing with the key). Audited as `sign_derived`.
    pub async fn sign_derived(
        &self,
        ctx: &RequestContext,
        op: Operation<'_>,
        name: &KeyName,
        path: &DerivationPath,
        digest: &[u8; 32],
        expected: &PublicKey,
    ) -> Result<Signature, CoreError> {
        let mut entry = ctx.entry("sign_derived");
        entry.key = Some(name.to_string());
        entry.subject = Some(format!(
            "m/{}",
            path.iter()
                .map(|n| if *n >= custos_provider::HARDENED {
                    format!("{}'", n - custos_provider::HARDENED)
                } else {
                    n.to_string()
                })
                .collect::<Vec<_>>()
                .join("/")
        ));
        entry.payload_mac = Some(self.audit.mac(digest));
        let work = async {
            let key = self.registry().get(name)?;
            usable(&key)?;
            if key.kind != custos_types::KeyKind::Bip32 {
                return Err(CoreError::bad(
                    custos_types::ErrorCode::NotSupported,
                    format!("key {name} is not a BIP32 key"),
                ));
            }
            let version = signing_version(&key, None)?;
            let payload = SignPayload::Digest(*digest);
            self.policies
                .check(&PolicyInput {
                    ctx,
                    key: &key,
                    version: version.version,
                    operation: "sign_derived",
                    payload: &payload,
                    message: None,
                    sequence: None,
                    stage: PolicyStage::Normal,
                })
                .await?;
            let (provider, signature) = self
                .chain
                .sign_derived(version, path, digest, expected)
                .await?;
            Ok((version.version, provider, signature))
        };
        audited::run(
            &self.audit,
            ctx,
            op,
            entry,
            work,
            |(version, provider, _), e| {
                e.version = Some(version.0);
                e.provider = Some(provider.to_string());
            },
        )
        .await
        .map(|(_, _, signature)| signature)
    }

    /// Verifies a signature under one version, or under any version that can verify (current first).
    pub async fn verify(
        &self,
        ctx: &RequestContext,
        name: &KeyName,
        request: &VerifyRequest,
    ) -> Result<VerifyOutcome, CoreError> {
        let mut entry = ctx.entry("verify");
        entry.key = Some(name.to_string());
        entry.payload_mac = Some(self.audit.mac(request.input.bytes()));
        audited::run(
            &self.audit,
            ctx,
            Operation::Verify(name.as_str()),
            entry,
            self.verify_unaudited(name, request),
            |outcome, e| {
                e.version = outcome.version.map(|v| v.0);
                e.subject = Some(if outcome.valid { "valid" } else { "invalid" }.to_owned());
            },
        )
        .await
    }

    async fn verify_unaudited(
        &self,
        name: &KeyName,
        request: &VerifyRequest,
    ) -> Result<VerifyOutcome, CoreError> {
        let key = self.registry().get(name)?;
        usable(&key)?;
        let payload = self
            .limits
            .payload(key.algorithm, &request.input, request.hash)?;
        let mut candidates: Vec<&VersionRecord> = match request.version {
            Some(v) => vec![key.version(v).ok_or_else(|| CoreError::VersionNotFound {
                key: key.name.clone(),
                version: v,
            })?],
            None => key
                .versions
                .iter()
                .filter(|v| v.state.can_verify())
                .collect(),
        };
        candidates.sort_by_key(|v| {
            (
                v.state != VersionState::Current,
                std::cmp::Reverse(v.version),
            )
        });
        for version in candidates {
            if !version.state.can_verify() {
                return Err(CoreError::bad(
                    custos_types::ErrorCode::VersionNotUsable,
                    format!(
                        "version {} of key {} is destroyed",
                        version.version, key.name
                    ),
                ));
            }
            match version
                .public_key
                .verify(&payload, &request.signature, request.format)
            {
                Ok(_) => {
                    return Ok(VerifyOutcome {
                        valid: true,
                        version: Some(version.version),
                    })
                }
                Err(TypesError::BadSignature) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Ok(VerifyOutcome {
            valid: false,
            version: None,
        })
    }
}

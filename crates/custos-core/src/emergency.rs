//! Emergency mode: when every provider of a key's chain has failed, an ephemeral in-memory key signs, if
//! the policies allow it; the emergency restrictions themselves are one of those policies.
//!
//! The emergency key is a different key, so every answer marks the signature as an emergency one and
//! carries the emergency public key. Its private half lives only in process memory (the in-memory
//! provider). What is persisted is what the restrictions need, so a restart does not reset them: per key,
//! the count of emergency signatures, the time of the first, and the emergency public keys used.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use custos_provider::KeyProvider;
use custos_store::Store;
use custos_types::{
    Algorithm, KeyHandle, KeyName, KeyVersion, ProviderName, PublicKey, SignPayload,
    SignatureFormat,
};
use serde::{Deserialize, Serialize};

use crate::policy::{Decision, PolicyInput, PolicyStage, SignPolicy};
use crate::{Clock, CoreError, EmergencyConfig, Policies, SignOutcome};

/// The provider name emergency signatures report; no configured provider may use it.
pub const EMERGENCY_PROVIDER: &str = "emergency";

/// What the store keeps per key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EmergencyState {
    /// Emergency signatures made, ever.
    pub count: u64,
    /// When the first was made.
    pub first_at: Option<custos_types::Timestamp>,
    /// Hex of every emergency public key used (one per process lifetime that needed one).
    pub public_keys: Vec<String>,
}

fn setting(key: &KeyName) -> String {
    format!("emergency:{key}")
}

async fn state(store: &dyn Store, key: &KeyName) -> Result<EmergencyState, CoreError> {
    Ok(match store.get_setting(&setting(key)).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| CoreError::Internal(format!("emergency state of {key}: {e}")))?,
        None => EmergencyState::default(),
    })
}

fn emergency_provider() -> Result<ProviderName, CoreError> {
    ProviderName::new(EMERGENCY_PROVIDER).map_err(CoreError::from)
}

/// The emergency restrictions as a policy: only the allowed operations, at most `max_transactions`
/// emergency signatures per key, within `max_time_seconds` of the first. It decides only at the
/// emergency stage.
#[derive(Debug)]
pub struct EmergencyPolicy {
    config: EmergencyConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl EmergencyPolicy {
    /// The policy's name.
    pub const NAME: &'static str = "emergency";

    /// The restrictions of `config`, counted in `store`.
    pub fn new(
        config: EmergencyConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> EmergencyPolicy {
        EmergencyPolicy {
            config,
            store,
            clock,
        }
    }
}

#[async_trait]
impl SignPolicy for EmergencyPolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn decide(&self, input: &PolicyInput<'_>) -> Result<Decision, CoreError> {
        if input.stage != PolicyStage::Emergency {
            return Ok(Decision::Allow);
        }
        let key = &input.key.name;
        if !self.config.enabled {
            return Ok(Decision::Deny(
                "every provider failed, and emergency mode is off".into(),
            ));
        }
        if !self
            .config
            .allowed_operations
            .iter()
            .any(|o| o == input.operation)
        {
            return Ok(Decision::Deny(format!(
                "every provider failed, and {} is not allowed in emergency mode",
                input.operation
            )));
        }
        let state = state(self.store.as_ref(), key).await?;
        if state.count >= self.config.max_transactions {
            return Ok(Decision::Deny(format!(
                "every provider failed, and key {key} has used all {} emergency signatures",
                self.config.max_transactions
            )));
        }
        if let Some(first) = state.first_at {
            let elapsed = self.clock.now().duration_since(first).as_secs();
            if elapsed > i64::try_from(self.config.max_time_seconds).unwrap_or(i64::MAX) {
                return Ok(Decision::Deny(format!(
                    "every provider failed, and key {key}'s emergency window of {} s has passed",
                    self.config.max_time_seconds
                )));
            }
        }
        Ok(Decision::Allow)
    }
}

/// Emergency signing for every key.
#[derive(Debug)]
pub(crate) struct Emergency {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// This process's emergency key per key; also serialises emergency signing, so the policy's count
    /// and the signature it allows are one step.
    keys: tokio::sync::Mutex<HashMap<KeyName, (KeyHandle, PublicKey)>>,
}

impl Emergency {
    pub(crate) fn new(
        provider: Arc<dyn KeyProvider>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Emergency {
        Emergency {
            provider,
            store,
            clock,
            keys: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Signs with the key's emergency key if the policies allow it at the emergency stage. The count is
    /// durable before the signature is returned. Returns the outcome and the count so far.
    pub(crate) async fn sign(
        &self,
        policies: &Policies,
        input: PolicyInput<'_>,
    ) -> Result<(SignOutcome, u64), CoreError> {
        let key = input.key;
        let mut keys = self.keys.lock().await;
        match policies.check(&input).await {
            Err(CoreError::PolicyDenied { policy, reason }) if policy == EmergencyPolicy::NAME => {
                return Err(CoreError::EmergencyRefused(reason))
            }
            other => other?,
        }
        let mut state = state(self.store.as_ref(), &key.name).await?;
        let (handle, public_key) = match keys.get(&key.name) {
            Some(found) => found.clone(),
            None => {
                let made = self
                    .provider
                    .generate(key.algorithm, &format!("custos-emergency:{}", key.name))
                    .await?;
                tracing::warn!(key = %key.name, "EMERGENCY MODE: a new ephemeral key signs for this key");
                keys.insert(
                    key.name.clone(),
                    (made.handle.clone(), made.public_key.clone()),
                );
                (made.handle, made.public_key)
            }
        };
        let raw = self
            .provider
            .sign(&handle, key.algorithm, input.payload)
            .await?;
        let signature = public_key.verify(input.payload, &raw, SignatureFormat::Raw)?;
        let hex_key = hex::encode(public_key.as_bytes());
        if !state.public_keys.contains(&hex_key) {
            state.public_keys.push(hex_key);
        }
        state.count += 1;
        state.first_at.get_or_insert_with(|| self.clock.now());
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| CoreError::Internal(format!("emergency state: {e}")))?;
        self.store.put_setting(&setting(&key.name), &bytes).await?;
        Ok((
            SignOutcome {
                version: input.version,
                provider: emergency_provider()?,
                signature,
                emergency: Some(public_key),
            },
            state.count,
        ))
    }
}

/// Checks a stored emergency signature (a replay at the same sequence) against the emergency keys this
/// key has used, and returns the one it verifies under.
pub(crate) async fn verify_replay(
    store: &dyn Store,
    key: &KeyName,
    algorithm: Algorithm,
    version: KeyVersion,
    payload: &SignPayload,
    signature: &[u8],
) -> Result<SignOutcome, CoreError> {
    let state = state(store, key).await?;
    for hex_key in &state.public_keys {
        let Ok(bytes) = hex::decode(hex_key) else {
            continue;
        };
        let Ok(public_key) = PublicKey::from_bytes(algorithm, &bytes) else {
            continue;
        };
        if let Ok(signature) = public_key.verify(payload, signature, SignatureFormat::Raw) {
            return Ok(SignOutcome {
                version,
                provider: emergency_provider()?,
                signature,
                emergency: Some(public_key),
            });
        }
    }
    Err(CoreError::Internal(
        "a stored emergency signature matches no emergency key".into(),
    ))
}

//! Emergency mode: when every provider of a key's chain has failed, an ephemeral in-memory key signs.
//!
//! The emergency key is a different key, so every answer marks the signature as an emergency one and
//! carries the emergency public key. Its private half lives only in process memory (the in-memory
//! provider). What is persisted is what the restrictions need, so a restart does not reset them: per key,
//! the count of emergency signatures, the time of the first, and the emergency public keys used.

use std::collections::HashMap;
use std::sync::Arc;

use custos_provider::KeyProvider;
use custos_store::Store;
use custos_types::{KeyHandle, KeyName, PublicKey, SignPayload, SignatureFormat, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{CoreError, EmergencyConfig, SignOutcome};

/// The provider name emergency signatures report; no configured provider may use it.
pub const EMERGENCY_PROVIDER: &str = "emergency";

/// What the store keeps per key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EmergencyState {
    /// Emergency signatures made, ever.
    pub count: u64,
    /// When the first was made.
    pub first_at: Option<Timestamp>,
    /// Hex of every emergency public key used (one per process lifetime that needed one).
    pub public_keys: Vec<String>,
}

fn setting(key: &KeyName) -> String {
    format!("emergency:{key}")
}

/// Emergency signing for every key.
#[derive(Debug)]
pub(crate) struct Emergency {
    pub config: EmergencyConfig,
    provider: Arc<dyn KeyProvider>,
    /// This process's emergency key per key; also serialises emergency signing.
    keys: tokio::sync::Mutex<HashMap<KeyName, (KeyHandle, PublicKey)>>,
}

impl Emergency {
    pub(crate) fn new(config: EmergencyConfig, provider: Arc<dyn KeyProvider>) -> Emergency {
        Emergency {
            config,
            provider,
            keys: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The persisted state of one key.
    pub(crate) async fn state(
        store: &dyn Store,
        key: &KeyName,
    ) -> Result<EmergencyState, CoreError> {
        Ok(match store.get_setting(&setting(key)).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CoreError::Internal(format!("emergency state of {key}: {e}")))?,
            None => EmergencyState::default(),
        })
    }

    /// Signs with the key's emergency key, if the mode is on, the operation allowed and the limits not
    /// reached. The count is durable before the signature is returned.
    pub(crate) async fn sign(
        &self,
        store: &dyn Store,
        key: &crate::manager::KeyView<'_>,
        payload: &SignPayload,
        operation: &str,
    ) -> Result<(SignOutcome, EmergencyState), CoreError> {
        let refused = |why: String| CoreError::EmergencyRefused(why);
        if !self
            .config
            .allowed_operations
            .iter()
            .any(|o| o == operation)
        {
            return Err(refused(format!(
                "every provider failed, and {operation} is not allowed in emergency mode"
            )));
        }
        let mut keys = self.keys.lock().await;
        let mut state = Self::state(store, key.name).await?;
        if state.count >= self.config.max_transactions {
            return Err(refused(format!(
                "every provider failed, and key {} has used all {} emergency signatures",
                key.name, self.config.max_transactions
            )));
        }
        if let Some(first) = state.first_at {
            let elapsed = Timestamp::now().duration_since(first).as_secs();
            if elapsed > i64::try_from(self.config.max_time_seconds).unwrap_or(i64::MAX) {
                return Err(refused(format!(
                    "every provider failed, and key {}'s emergency window of {} s has passed",
                    key.name, self.config.max_time_seconds
                )));
            }
        }
        let (handle, public_key) = match keys.get(key.name) {
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
        let raw = self.provider.sign(&handle, key.algorithm, payload).await?;
        let signature = public_key.verify(payload, &raw, SignatureFormat::Raw)?;
        let hex_key = hex::encode(public_key.as_bytes());
        if !state.public_keys.contains(&hex_key) {
            state.public_keys.push(hex_key);
        }
        state.count += 1;
        state.first_at.get_or_insert_with(Timestamp::now);
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| CoreError::Internal(format!("emergency state: {e}")))?;
        store.put_setting(&setting(key.name), &bytes).await?;
        Ok((
            SignOutcome {
                version: key.version,
                provider: custos_types::ProviderName::new(EMERGENCY_PROVIDER)
                    .map_err(CoreError::from)?,
                signature,
                emergency: Some(public_key),
            },
            state,
        ))
    }

    /// Checks a stored emergency signature (a replay at the same sequence) against the emergency keys
    /// this key has used, and returns the one it verifies under.
    pub(crate) async fn verify_replay(
        store: &dyn Store,
        key: &crate::manager::KeyView<'_>,
        payload: &SignPayload,
        signature: &[u8],
    ) -> Result<SignOutcome, CoreError> {
        let state = Self::state(store, key.name).await?;
        for hex_key in &state.public_keys {
            let Ok(bytes) = hex::decode(hex_key) else {
                continue;
            };
            let Ok(public_key) = PublicKey::from_bytes(key.algorithm, &bytes) else {
                continue;
            };
            if let Ok(signature) = public_key.verify(payload, signature, SignatureFormat::Raw) {
                return Ok(SignOutcome {
                    version: key.version,
                    provider: custos_types::ProviderName::new(EMERGENCY_PROVIDER)
                        .map_err(CoreError::from)?,
                    signature,
                    emergency: Some(public_key),
                });
            }
        }
        Err(CoreError::Internal(
            "a stored emergency signature matches no emergency key".into(),
        ))
    }
}

//! The in-memory provider: keys that exist only in this process and are never written anywhere.
//!
//! Emergency mode signs with such a key when every provider of a chain is down: a restart forgets it,
//! which is the point: an emergency key is a short-lived, separate identity, never a copy of the real one.

use async_trait::async_trait;
use custos_provider::{Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth};
use custos_types::{Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload};

use crate::keymap::KeyMap;

/// A provider whose keys live in process memory only.
#[derive(Debug)]
pub struct MemoryProvider {
    name: ProviderName,
    keys: KeyMap,
}

impl MemoryProvider {
    /// An empty provider called `name`.
    pub fn new(name: ProviderName) -> MemoryProvider {
        MemoryProvider {
            name,
            keys: KeyMap::default(),
        }
    }
}

#[async_trait]
impl KeyProvider for MemoryProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            exportable: false,
            import: false,
            bip32: false,
        }
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        _label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        let key = PrivateKey::generate(algorithm);
        let handle = KeyMap::new_handle("memory");
        let public_key = key.public_key();
        self.keys.insert(handle.clone(), key)?;
        Ok(GeneratedKey { handle, public_key })
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        Ok(self.keys.get(handle)?.public_key())
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        self.keys.sign(handle, algorithm, payload)
    }

    async fn health(&self) -> ProviderHealth {
        ProviderHealth::ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance_suite() {
        let name = ProviderName::new("emergency").unwrap();
        // Memory cannot become unreachable; the unavailable twin is the fault-injecting wrapper.
        let down = custos_provider::fault::FaultyProvider::new(Arc::new(MemoryProvider::new(
            name.clone(),
        )));
        down.set(custos_provider::fault::Fault::Unavailable);
        custos_provider::conformance::run(custos_provider::conformance::Harness::new(
            Arc::new(MemoryProvider::new(name)),
            down,
        ))
        .await;
    }
}

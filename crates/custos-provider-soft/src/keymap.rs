//! The unsealed keys a software or in-memory provider holds, by handle, and signing with them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use custos_provider::{signing_input, ProviderError};
use custos_types::{Algorithm, KeyHandle, PrivateKey, SignPayload};
use rand_core::{OsRng, RngCore as _};

/// Keys by handle; every key zeroizes on drop.
#[derive(Debug, Default)]
pub(crate) struct KeyMap(RwLock<HashMap<KeyHandle, Arc<PrivateKey>>>);

fn poisoned() -> ProviderError {
    ProviderError::Unavailable("key map lock poisoned".into())
}

impl KeyMap {
    /// A fresh random handle: `prefix-` and 32 hex digits.
    pub(crate) fn new_handle(prefix: &str) -> KeyHandle {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        KeyHandle::new(format!("{prefix}-{}", hex::encode(id)))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.read().map_or(0, |keys| keys.len())
    }

    pub(crate) fn insert(&self, handle: KeyHandle, key: PrivateKey) -> Result<(), ProviderError> {
        self.0
            .write()
            .map_err(|_| poisoned())?
            .insert(handle, Arc::new(key));
        Ok(())
    }

    pub(crate) fn get(&self, handle: &KeyHandle) -> Result<Arc<PrivateKey>, ProviderError> {
        self.0
            .read()
            .map_err(|_| poisoned())?
            .get(handle)
            .cloned()
            .ok_or_else(|| ProviderError::UnknownKey(handle.clone()))
    }

    /// Signs with the key behind `handle`, which must be of `algorithm`.
    pub(crate) fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        let key = self.get(handle)?;
        if key.algorithm() != algorithm {
            return Err(ProviderError::UnsupportedAlgorithm(algorithm));
        }
        signing_input(algorithm, payload)?;
        key.sign(payload)
            .map_err(|_| ProviderError::InvalidPayload("ECDSA signing failed"))
    }
}

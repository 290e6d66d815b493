//! A fault-injecting provider wrapper for failover tests and benchmarks: it forwards to a real provider
//! until told to fail, hang or slow down, and recovers on command. It is named as what it is, a test
//! double around a real provider; it is compiled only with the `fault` feature.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use custos_types::{Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload};

use crate::{Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth};

/// What the wrapper does to each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward every call (the provider works).
    #[default]
    None,
    /// Fail with a retryable error, as a provider that cannot be reached.
    Unavailable,
    /// Fail with a permanent error, as a device that refuses the operation.
    Refuse,
    /// Never answer.
    Hang,
    /// Answer after this delay.
    Slow(Duration),
}

/// A provider that forwards to `inner` except while a fault is set.
#[derive(Debug)]
pub struct FaultyProvider {
    inner: Arc<dyn KeyProvider>,
    fault: Mutex<Fault>,
    signs: AtomicU64,
}

impl FaultyProvider {
    /// Wraps `inner`, working.
    pub fn new(inner: Arc<dyn KeyProvider>) -> Arc<FaultyProvider> {
        Arc::new(FaultyProvider {
            inner,
            fault: Mutex::new(Fault::None),
            signs: AtomicU64::new(0),
        })
    }

    /// Sets what every later call does.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// How many sign calls reached the wrapper (failed ones included).
    pub fn sign_calls(&self) -> u64 {
        self.signs.load(Ordering::Relaxed)
    }

    async fn gate(&self) -> Result<(), ProviderError> {
        let fault = *self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match fault {
            Fault::None => Ok(()),
            Fault::Unavailable => Err(ProviderError::Unavailable("injected fault".into())),
            Fault::Refuse => Err(ProviderError::Refused("injected fault".into())),
            Fault::Hang => std::future::pending().await,
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl KeyProvider for FaultyProvider {
    fn name(&self) -> &ProviderName {
        self.inner.name()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        self.gate().await?;
        self.inner.generate(algorithm, label).await
    }

    async fn export(&self, handle: &KeyHandle) -> Result<PrivateKey, ProviderError> {
        self.gate().await?;
        self.inner.export(handle).await
    }

    async fn import(&self, key: &PrivateKey, label: &str) -> Result<GeneratedKey, ProviderError> {
        self.gate().await?;
        self.inner.import(key, label).await
    }

    async fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.gate().await?;
        self.inner.seal(plaintext, context).await
    }

    async fn unseal(
        &self,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ProviderError> {
        self.gate().await?;
        self.inner.unseal(sealed, context).await
    }

    async fn generate_bip32(&self, label: &str) -> Result<crate::Bip32Key, ProviderError> {
        self.gate().await?;
        self.inner.generate_bip32(label).await
    }

    async fn import_sealed_bip32(
        &self,
        sealed: &[u8],
        context: &[u8],
        label: &str,
    ) -> Result<crate::Bip32Key, ProviderError> {
        self.gate().await?;
        self.inner.import_sealed_bip32(sealed, context, label).await
    }

    async fn sign_derived(
        &self,
        handle: &KeyHandle,
        path: &crate::DerivationPath,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, ProviderError> {
        self.gate().await?;
        self.inner.sign_derived(handle, path, digest).await
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        self.gate().await?;
        self.inner.public_key(handle).await
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        self.signs.fetch_add(1, Ordering::Relaxed);
        self.gate().await?;
        self.inner.sign(handle, algorithm, payload).await
    }

    async fn health(&self) -> ProviderHealth {
        match self.gate().await {
            Ok(()) => self.inner.health().await,
            Err(e) => Err::<(), _>(e).into(),
        }
    }
}

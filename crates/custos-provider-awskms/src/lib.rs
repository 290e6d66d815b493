//! The AWS KMS key provider: asymmetric signing keys created and used inside AWS KMS.
//!
//! Keys are `ECC_SECG_P256K1`, `ECC_NIST_P256` or `ECC_NIST_EDWARDS25519` with usage `SIGN_VERIFY`; a key's
//! handle is its KMS key id. ECDSA signs the 32-byte digest Custos computed (`MessageType=DIGEST`,
//! `ECDSA_SHA_256`) and comes back DER, which is converted to r‖s here; core normalises it to low s,
//! computes the recovery id and verifies it against the cached public key. Ed25519 signs the message
//! (`MessageType=RAW`, `ED25519_SHA_512`).
//!
//! Requests pass a token bucket set below the account's KMS request quota and a concurrency limit, so a
//! burst queues briefly and then fails as `Throttled` (retryable) instead of setting off a throttling storm
//! at AWS. Throttling answers from AWS are retried with backoff by the SDK's standard retry policy.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use aws_sdk_kms::Client;
use custos_provider::{
    signing_input, Capabilities, GeneratedKey, KeyProvider, ProviderError, ProviderHealth,
};
use custos_types::{
    ecdsa_der_to_raw, Algorithm, KeyHandle, PrivateKey, ProviderName, PublicKey, SignPayload,
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

pub use aws_config::SdkConfig;

/// Limits that keep Custos below the account's KMS quota.
#[derive(Debug, Clone, Copy)]
pub struct KmsLimits {
    /// Sustained requests per second (AWS's asymmetric-sign quota is shared per account and region; set
    /// this below it).
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// How long a request may wait for its turn before it fails as `Throttled`.
    pub max_wait: Duration,
    /// Attempts per request, retries of throttling and transient errors included (the SDK's standard
    /// retry policy with exponential backoff).
    pub max_attempts: u32,
}

impl Default for KmsLimits {
    fn default() -> Self {
        KmsLimits {
            requests_per_second: 100,
            burst: 100,
            max_concurrency: 32,
            max_wait: Duration::from_secs(2),
            max_attempts: 3,
        }
    }
}

/// The AWS KMS provider.
pub struct KmsProvider {
    name: ProviderName,
    client: Client,
    limiter: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    max_wait: Duration,
    keys: RwLock<HashMap<KeyHandle, PublicKey>>,
}

impl std::fmt::Debug for KmsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn key_spec(algorithm: Algorithm) -> KeySpec {
    match algorithm {
        Algorithm::Ed25519 => KeySpec::EccNistEdwards25519,
        Algorithm::Secp256k1 => KeySpec::EccSecgP256K1,
        Algorithm::P256 => KeySpec::EccNistP256,
    }
}

fn algorithm_of(spec: &KeySpec) -> Option<Algorithm> {
    match spec {
        KeySpec::EccNistEdwards25519 => Some(Algorithm::Ed25519),
        KeySpec::EccSecgP256K1 => Some(Algorithm::Secp256k1),
        KeySpec::EccNistP256 => Some(Algorithm::P256),
        _ => None,
    }
}

/// Maps an SDK failure: network trouble and KMS-side unavailability are retryable; throttling that
/// outlasted the SDK's retries is `Throttled`; a missing key is `UnknownKey`; the rest are refusals.
fn map_error<E, R>(handle: Option<&KeyHandle>, err: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::TimeoutError(_) => ProviderError::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ProviderError::Unavailable(format!(
                "AWS KMS unreachable: {}",
                aws_sdk_kms::error::DisplayErrorContext(&err)
            ))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("");
            match code {
                "NotFoundException" => ProviderError::UnknownKey(
                    handle.cloned().unwrap_or_else(|| KeyHandle::new("?")),
                ),
                "ThrottlingException" | "LimitExceededException" => ProviderError::Throttled,
                "DependencyTimeoutException"
                | "KMSInternalException"
                | "KeyUnavailableException" => {
                    ProviderError::Unavailable(format!("AWS KMS: {code}: {message}"))
                }
                _ => ProviderError::Refused(format!("AWS KMS: {code}: {message}")),
            }
        }
        _ => ProviderError::Refused(format!(
            "AWS KMS: {}",
            aws_sdk_kms::error::DisplayErrorContext(&err)
        )),
    }
}

impl KmsProvider {
    /// Creates the provider from an SDK configuration (region, endpoint override, credentials: the
    /// binary loads it from the standard AWS chain) and the request limits.
    pub fn new(name: ProviderName, sdk: &SdkConfig, limits: KmsLimits) -> KmsProvider {
        let config = aws_sdk_kms::config::Builder::from(sdk)
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(limits.max_attempts.max(1)),
            )
            .build();
        let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
        KmsProvider {
            name,
            client: Client::from_conf(config),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            in_flight: Semaphore::new(limits.max_concurrency.max(1)),
            max_wait: limits.max_wait,
            keys: RwLock::new(HashMap::new()),
        }
    }

    /// Waits for a request slot and a token from the bucket, at most `max_wait`.
    async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ProviderError> {
        let wait = async {
            let permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| ProviderError::Unavailable("provider is shutting down".into()))?;
            self.limiter.until_ready().await;
            Ok(permit)
        };
        tokio::time::timeout(self.max_wait, wait).await.map_err(|_| {
            tracing::warn!(provider = %self.name, "KMS request budget exhausted; refusing instead of queueing longer");
            ProviderError::Throttled
        })?
    }

    fn cached(&self, handle: &KeyHandle) -> Option<PublicKey> {
        self.keys.read().ok()?.get(handle).cloned()
    }

    async fn fetch_public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        if let Some(key) = self.cached(handle) {
            return Ok(key);
        }
        let _permit = self.admit().await?;
        let out = self
            .client
            .get_public_key()
            .key_id(handle.as_str())
            .send()
            .await
            .map_err(|e| map_error(Some(handle), e))?;
        // KMS answers with KeySpec; older answers (and moto) carry only CustomerMasterKeySpec.
        #[allow(deprecated)]
        let legacy = out
            .customer_master_key_spec()
            .map(|spec| KeySpec::from(spec.as_str()));
        let algorithm = out
            .key_spec()
            .or(legacy.as_ref())
            .and_then(algorithm_of)
            .ok_or_else(|| {
                ProviderError::Refused(format!(
                    "KMS key {handle} is not an Ed25519, secp256k1 or P-256 key"
                ))
            })?;
        let der = out.public_key().ok_or_else(|| {
            ProviderError::Corrupt(format!("KMS returned no public key for {handle}"))
        })?;
        let key = PublicKey::from_spki_der(algorithm, der.as_ref())
            .map_err(|e| ProviderError::Corrupt(format!("KMS public key of {handle}: {e}")))?;
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(handle.clone(), key.clone());
        }
        Ok(key)
    }
}

#[async_trait]
impl KeyProvider for KmsProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "awskms"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            algorithms: Algorithm::ALL.to_vec(),
            exportable: false,
            import: true,
            bip32: false,
        }
    }

    /// KMS import of key material: a key with origin `EXTERNAL`, the key's PKCS#8 DER wrapped with
    /// RSAES-OAEP-SHA-256 under the import public key KMS hands out, then `ImportKeyMaterial` (no
    /// expiry). The key's public key, as KMS reports it, must be the material's.
    async fn import(&self, key: &PrivateKey, label: &str) -> Result<GeneratedKey, ProviderError> {
        let kms_error = |e| map_error(None, e);
        let created = {
            let _permit = self.admit().await?;
            self.client
                .create_key()
                .key_spec(key_spec(key.algorithm()))
                .key_usage(KeyUsageType::SignVerify)
                .origin(aws_sdk_kms::types::OriginType::External)
                .description(label)
                .send()
                .await
                .map_err(kms_error)?
        };
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| ProviderError::Corrupt("KMS CreateKey returned no key id".into()))?;
        let handle = KeyHandle::new(key_id.clone());
        let parameters = {
            let _permit = self.admit().await?;
            self.client
                .get_parameters_for_import()
                .key_id(&key_id)
                .wrapping_algorithm(aws_sdk_kms::types::AlgorithmSpec::RsaesOaepSha256)
                .wrapping_key_spec(aws_sdk_kms::types::WrappingKeySpec::Rsa2048)
                .send()
                .await
                .map_err(|e| map_error(Some(&handle), e))?
        };
        let (Some(wrapping), Some(token)) = (parameters.public_key(), parameters.import_token())
        else {
            return Err(ProviderError::Corrupt(
                "KMS GetParametersForImport returned no public key or token".into(),
            ));
        };
        use rsa::pkcs8::DecodePublicKey as _;
        let wrapping = rsa::RsaPublicKey::from_public_key_der(wrapping.as_ref())
            .map_err(|e| ProviderError::Corrupt(format!("KMS import public key: {e}")))?;
        let material = key
            .to_pkcs8_der()
            .map_err(|e| ProviderError::Corrupt(e.to_string()))?;
        let wrapped = wrapping
            .encrypt(
                &mut rand_core::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                &material,
            )
            .map_err(|e| ProviderError::Corrupt(format!("wrapping the key material: {e}")))?;
        {
            let _permit = self.admit().await?;
            self.client
                .import_key_material()
                .key_id(&key_id)
                .import_token(token.clone())
                .encrypted_key_material(aws_sdk_kms::primitives::Blob::new(wrapped))
                .expiration_model(aws_sdk_kms::types::ExpirationModelType::KeyMaterialDoesNotExpire)
                .send()
                .await
                .map_err(|e| map_error(Some(&handle), e))?;
        }
        let public_key = self.fetch_public_key(&handle).await?;
        if public_key != key.public_key() {
            return Err(ProviderError::Corrupt(
                "KMS reports a different public key for the imported material".into(),
            ));
        }
        Ok(GeneratedKey { handle, public_key })
    }

    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<GeneratedKey, ProviderError> {
        let created = {
            let _permit = self.admit().await?;
            let tag = Tag::builder()
                .tag_key("custos:label")
                .tag_value(label)
                .build()
                .map_err(|_| {
                    ProviderError::InvalidPayload("a KMS tag value is at most 256 characters")
                })?;
            self.client
                .create_key()
                .key_spec(key_spec(algorithm))
                .key_usage(KeyUsageType::SignVerify)
                .description(label)
                .tags(tag)
                .send()
                .await
                .map_err(|e| map_error(None, e))?
        };
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| ProviderError::Corrupt("KMS CreateKey returned no key id".into()))?;
        let handle = KeyHandle::new(key_id);
        let public_key = self.fetch_public_key(&handle).await?;
        Ok(GeneratedKey { handle, public_key })
    }

    async fn adopt(
        &self,
        reference: &str,
        algorithm: Algorithm,
    ) -> Result<GeneratedKey, ProviderError> {
        // A key id, key ARN or alias (`alias/...`) of an existing SIGN_VERIFY key.
        let described = {
            let _permit = self.admit().await?;
            self.client
                .describe_key()
                .key_id(reference)
                .send()
                .await
                .map_err(|e| map_error(Some(&KeyHandle::new(reference)), e))?
        };
        let metadata = described
            .key_metadata()
            .ok_or_else(|| ProviderError::Corrupt("KMS DescribeKey returned no metadata".into()))?;
        if metadata.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(ProviderError::Refused(format!(
                "KMS key {reference} is not a SIGN_VERIFY key"
            )));
        }
        let handle = KeyHandle::new(metadata.key_id());
        let public_key = self.fetch_public_key(&handle).await?;
        if public_key.algorithm() != algorithm {
            return Err(ProviderError::UnsupportedAlgorithm(algorithm));
        }
        Ok(GeneratedKey { handle, public_key })
    }

    async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKey, ProviderError> {
        self.fetch_public_key(handle).await
    }

    async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        let public = self.fetch_public_key(handle).await?;
        if public.algorithm() != algorithm {
            return Err(ProviderError::UnsupportedAlgorithm(algorithm));
        }
        let message = signing_input(algorithm, payload)?;
        let (message_type, spec) = if algorithm.is_ecdsa() {
            (MessageType::Digest, SigningAlgorithmSpec::EcdsaSha256)
        } else {
            (MessageType::Raw, SigningAlgorithmSpec::Ed25519Sha512)
        };
        let out = {
            let _permit = self.admit().await?;
            self.client
                .sign()
                .key_id(handle.as_str())
                .message(Blob::new(message))
                .message_type(message_type)
                .signing_algorithm(spec)
                .send()
                .await
                .map_err(|e| map_error(Some(handle), e))?
        };
        let signature = out
            .signature()
            .ok_or_else(|| ProviderError::Corrupt("KMS Sign returned no signature".into()))?
            .as_ref();
        if algorithm.is_ecdsa() {
            let raw = ecdsa_der_to_raw(algorithm, signature)
                .map_err(|e| ProviderError::Corrupt(format!("KMS signature: {e}")))?;
            Ok(raw.to_vec())
        } else {
            Ok(signature.to_vec())
        }
    }

    async fn health(&self) -> ProviderHealth {
        let probe = async {
            let _permit = self.admit().await?;
            self.client
                .list_keys()
                .limit(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_error(None, e))
        };
        probe.await.into()
    }
}

//! The AWS KMS provider against moto's KMS emulator on loopback (started here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{Credentials, Region};
use custos_provider::conformance::{self, EmulatorQuirk};
use custos_provider::{KeyProvider, ProviderError};
use custos_provider_awskms::{KmsLimits, KmsProvider, SdkConfig};
use custos_types::{Algorithm, HashAlgorithm, ProviderName, SignPayload, SignatureFormat};

/// A moto server on a free loopback port; stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "moto_server must be installed: scripts/test installs it (pip install 'moto[server]')",
        );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

async fn sdk(endpoint: &str) -> SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "custos-test",
        ))
        .load()
        .await
}

/// moto rejects ECC_NIST_EDWARDS25519 and has no key import, so the emulator runs the ECDSA algorithms
/// and no import.
struct EcdsaOnly(KmsProvider);

impl std::fmt::Debug for EcdsaOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait::async_trait]
impl KeyProvider for EcdsaOnly {
    fn name(&self) -> &ProviderName {
        self.0.name()
    }
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn capabilities(&self) -> custos_provider::Capabilities {
        let mut caps = self.0.capabilities();
        caps.algorithms.retain(|a| a.is_ecdsa());
        // moto implements no key-material import; the import is tested against Custos's own
        // KMS-compatible API (custos/tests/kms_api.rs).
        caps.import = false;
        caps
    }
    async fn generate(
        &self,
        algorithm: Algorithm,
        label: &str,
    ) -> Result<custos_provider::GeneratedKey, ProviderError> {
        if !algorithm.is_ecdsa() {
            return Err(ProviderError::UnsupportedAlgorithm(algorithm));
        }
        self.0.generate(algorithm, label).await
    }
    async fn public_key(
        &self,
        handle: &custos_types::KeyHandle,
    ) -> Result<custos_types::PublicKey, ProviderError> {
        self.0.public_key(handle).await
    }
    async fn sign(
        &self,
        handle: &custos_types::KeyHandle,
        algorithm: Algorithm,
        payload: &SignPayload,
    ) -> Result<Vec<u8>, ProviderError> {
        self.0.sign(handle, algorithm, payload).await
    }
    async fn health(&self) -> custos_provider::ProviderHealth {
        self.0.health().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_moto() {
    let moto = moto();
    let kms = KmsProvider::new(
        ProviderName::new("kms").unwrap(),
        &sdk(&moto.endpoint).await,
        KmsLimits::default(),
    );
    let limits = KmsLimits {
        max_attempts: 1,
        ..KmsLimits::default()
    };
    let down = KmsProvider::new(
        ProviderName::new("kms-down").unwrap(),
        &sdk("http://127.0.0.1:1").await,
        limits,
    );
    conformance::run(
        conformance::Harness::new(Arc::new(EcdsaOnly(kms)), Arc::new(EcdsaOnly(down)))
            // moto signs SHA-256 of a DIGEST message; AWS KMS signs the digest as given.
            .with_quirk(EmulatorQuirk::DigestHashedAgain),
    )
    .await;
    // moto refuses Ed25519 keys: the refusal reaches the caller as a clear, non-retryable error.
    let kms = KmsProvider::new(
        ProviderName::new("kms").unwrap(),
        &sdk(&moto.endpoint).await,
        KmsLimits::default(),
    );
    let err = kms
        .generate(Algorithm::Ed25519, "custos:ed:v1")
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn der_signatures_become_low_s_raw_with_a_recovery_id() {
    let moto = moto();
    let kms = KmsProvider::new(
        ProviderName::new("kms").unwrap(),
        &sdk(&moto.endpoint).await,
        KmsLimits::default(),
    );
    let key = kms
        .generate(Algorithm::Secp256k1, "custos:eth:v1")
        .await
        .unwrap();
    assert!(key.public_key.address().unwrap().starts_with("0x"));
    for i in 0..20u32 {
        let digest = HashAlgorithm::Keccak256.digest(&i.to_be_bytes());
        let raw = kms
            .sign(
                &key.handle,
                Algorithm::Secp256k1,
                &SignPayload::Digest(digest),
            )
            .await
            .unwrap();
        assert_eq!(raw.len(), 64);
        // What moto signed (see EmulatorQuirk::DigestHashedAgain); core's check normalises and recovers.
        let signed = SignPayload::Digest(HashAlgorithm::Sha256.digest(&digest));
        let sig = key
            .public_key
            .verify(&signed, &raw, SignatureFormat::Raw)
            .unwrap();
        assert!(sig.raw()[32] < 0x80, "low s");
        assert!(sig.recovery_id().unwrap() <= 1);
    }
    // Adopt by key id, and an unknown id is UnknownKey.
    let adopted = kms
        .adopt(key.handle.as_str(), Algorithm::Secp256k1)
        .await
        .unwrap();
    assert_eq!(adopted.public_key, key.public_key);
    assert!(matches!(
        kms.sign(
            &custos_types::KeyHandle::new("6f1d0a4e-0000-4000-8000-000000000000"),
            Algorithm::P256,
            &SignPayload::Digest([0; 32])
        )
        .await,
        Err(ProviderError::UnknownKey(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_budget_is_throttled_not_stormed() {
    let moto = moto();
    let limits = KmsLimits {
        requests_per_second: 5,
        burst: 5,
        max_concurrency: 4,
        max_wait: Duration::from_millis(300),
        max_attempts: 1,
    };
    let kms = Arc::new(KmsProvider::new(
        ProviderName::new("kms").unwrap(),
        &sdk(&moto.endpoint).await,
        limits,
    ));
    let key = kms
        .generate(Algorithm::P256, "custos:burst:v1")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (kms, key) = (Arc::clone(&kms), key.clone());
            tokio::spawn(async move {
                kms.sign(&key.handle, Algorithm::P256, &SignPayload::Digest([1; 32]))
                    .await
            })
        })
        .collect();
    let (mut ok, mut throttled) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ProviderError::Throttled) => throttled += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // About burst + rate × max_wait pass; the rest are refused quickly and retryably.
    assert!((4..=12).contains(&ok), "{ok} passed");
    assert_eq!(ok + throttled, 40);
    assert!(ProviderError::Throttled.is_retryable());
}

//! The conformance suite every key provider runs from its own tests.
//!
//! Generate, public key, sign, verify with an independent implementation (the `openssl` command-line tool,
//! not the Rust crates Custos signs with), unknown key, wrong algorithm, an unavailable back-end, and
//! concurrent signing from many tasks. A provider's test builds a [`Harness`] and calls [`run`].
//!
//! This is test code that ships behind the `conformance` feature: a failed expectation panics with a
//! description, exactly as an assertion in a test does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use custos_types::{Algorithm, HashAlgorithm, KeyHandle, SignPayload, SignatureFormat};
use rand_core::RngCore as _;

use crate::{KeyProvider, ProviderError};

/// What the suite needs from a provider's test.
#[derive(Debug)]
pub struct Harness {
    /// The provider under test, ready to use.
    pub provider: Arc<dyn KeyProvider>,
    /// The same kind of provider whose back-end cannot be reached (a stopped service, a removed token,
    /// a store that fails). Its errors must say they are retryable.
    pub unavailable: Arc<dyn KeyProvider>,
    /// A known deviation of an emulator standing in for the real back-end; `None` for real parts.
    pub quirk: Option<EmulatorQuirk>,
}

/// A known way an emulator differs from the service it stands in for. The suite then checks signatures
/// against what the emulator actually signs, and every other check stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorQuirk {
    /// The emulator treats a prehashed digest as a message and signs SHA-256 of it (moto's KMS with
    /// `MessageType=DIGEST`). Real AWS KMS signs the digest as given.
    DigestHashedAgain,
}

impl Harness {
    /// A harness for a provider and its unreachable twin.
    pub fn new(provider: Arc<dyn KeyProvider>, unavailable: Arc<dyn KeyProvider>) -> Harness {
        Harness {
            provider,
            unavailable,
            quirk: None,
        }
    }

    /// Declares an emulator's known deviation.
    pub fn with_quirk(mut self, quirk: EmulatorQuirk) -> Harness {
        self.quirk = Some(quirk);
        self
    }
}

/// What the back-end really signed for `payload`.
fn signed_payload(quirk: Option<EmulatorQuirk>, payload: &SignPayload) -> SignPayload {
    match (quirk, payload) {
        (Some(EmulatorQuirk::DigestHashedAgain), SignPayload::Digest(d)) => {
            SignPayload::Digest(HashAlgorithm::Sha256.digest(d))
        }
        _ => payload.clone(),
    }
}

/// Runs every check; panics with a description on the first failure.
pub async fn run(harness: Harness) {
    let provider = &harness.provider;
    let caps = provider.capabilities();
    assert!(
        !caps.algorithms.is_empty(),
        "a provider must support an algorithm"
    );
    assert!(
        provider.health().await.available,
        "healthy provider reports unavailable"
    );
    for &alg in &caps.algorithms {
        generate_sign_verify(provider.as_ref(), alg, harness.quirk).await;
    }
    for &alg in &caps.algorithms {
        share(provider.as_ref(), alg).await;
    }
    sealing(provider.as_ref()).await;
    unknown_key(provider.as_ref(), caps.algorithms[0]).await;
    wrong_algorithm(provider.as_ref(), &caps.algorithms).await;
    unavailable(harness.unavailable.as_ref(), caps.algorithms[0]).await;
    concurrent_signing(provider, caps.algorithms[0], harness.quirk).await;
}

fn payload_for(alg: Algorithm, message: &[u8]) -> SignPayload {
    if alg.is_ecdsa() {
        SignPayload::Digest(HashAlgorithm::Sha256.digest(message))
    } else {
        SignPayload::Message(message.to_vec())
    }
}

fn random_message() -> Vec<u8> {
    let mut message = vec![0u8; 1 + (rand_core::OsRng.next_u32() % 300) as usize];
    rand_core::OsRng.fill_bytes(&mut message);
    message
}

/// Export and import, as far as the capabilities promise them: an exported key is the key itself, an
/// imported key signs as itself; a provider that promises neither refuses both with `NotSupported`.
async fn share(provider: &dyn KeyProvider, alg: Algorithm) {
    let caps = provider.capabilities();
    let key = provider
        .generate(alg, "custos-conformance")
        .await
        .expect("generate");
    match provider.export(&key.handle).await {
        Ok(exported) => {
            assert!(
                caps.exportable,
                "exported a key while claiming keys cannot leave"
            );
            assert_eq!(
                exported.public_key(),
                key.public_key,
                "exported a different key"
            );
        }
        Err(ProviderError::NotSupported(_)) => assert!(!caps.exportable, "export refused"),
        Err(e) => panic!("export {alg}: {e}"),
    }
    let outside = custos_types::PrivateKey::generate(alg);
    match provider.import(&outside, "custos-conformance-import").await {
        Ok(imported) => {
            assert!(caps.import, "imported a key while claiming no import");
            assert_eq!(
                imported.public_key,
                outside.public_key(),
                "imported a different key"
            );
            let payload = payload_for(alg, b"imported");
            let raw = provider
                .sign(&imported.handle, alg, &payload)
                .await
                .expect("sign with an imported key");
            outside
                .public_key()
                .verify(&payload, &raw, SignatureFormat::Raw)
                .expect("an imported key's signature verifies");
        }
        Err(ProviderError::NotSupported(_)) => assert!(!caps.import, "import refused"),
        Err(e) => panic!("import {alg}: {e}"),
    }
}

/// Sealing, where offered: a round trip; another context, a flipped bit or a truncation is refused as
/// corrupt; two seals of one secret differ (fresh nonces).
async fn sealing(provider: &dyn KeyProvider) {
    let secret = b"a stored private key";
    let sealed = match provider.seal(secret, b"context-1").await {
        Ok(sealed) => sealed,
        Err(ProviderError::NotSupported(_)) => return,
        Err(e) => panic!("seal: {e}"),
    };
    assert!(
        !sealed.windows(secret.len()).any(|w| w == secret),
        "sealed bytes hold the plaintext"
    );
    let opened = provider
        .unseal(&sealed, b"context-1")
        .await
        .expect("unseal");
    assert_eq!(opened.as_slice(), secret);
    assert_ne!(
        provider.seal(secret, b"context-1").await.expect("seal"),
        sealed
    );
    assert!(matches!(
        provider.unseal(&sealed, b"context-2").await,
        Err(ProviderError::Corrupt(_))
    ));
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        provider.unseal(&flipped, b"context-1").await,
        Err(ProviderError::Corrupt(_))
    ));
    assert!(matches!(
        provider.unseal(&sealed[..4], b"context-1").await,
        Err(ProviderError::Corrupt(_))
    ));
}

async fn generate_sign_verify(
    provider: &dyn KeyProvider,
    alg: Algorithm,
    quirk: Option<EmulatorQuirk>,
) {
    let key = provider
        .generate(alg, "custos-conformance")
        .await
        .unwrap_or_else(|e| panic!("generate {alg}: {e}"));
    assert_eq!(key.public_key.algorithm(), alg);
    let public = provider.public_key(&key.handle).await.expect("public key");
    assert_eq!(
        public, key.public_key,
        "public_key() differs from generate()"
    );
    let other = provider
        .generate(alg, "custos-conformance")
        .await
        .expect("second key");
    assert_ne!(
        other.public_key, key.public_key,
        "two generated keys are equal"
    );
    assert_ne!(
        other.handle, key.handle,
        "two generated keys share a handle"
    );

    for message in [random_message(), b"custos".to_vec()] {
        let payload = payload_for(alg, &message);
        let raw = provider
            .sign(&key.handle, alg, &payload)
            .await
            .unwrap_or_else(|e| panic!("sign {alg}: {e}"));
        let payload = signed_payload(quirk, &payload);
        let sig = public
            .verify(&payload, &raw, SignatureFormat::Raw)
            .unwrap_or_else(|e| panic!("{alg} signature does not verify: {e}"));
        let encoded = if alg.is_ecdsa() {
            sig.encode(SignatureFormat::Der).expect("der")
        } else {
            sig.raw().to_vec()
        };
        openssl_verify(&public.to_pem(), alg, &payload, &encoded, true);
        // The other key must not verify it: the check is not vacuous.
        openssl_verify(&other.public_key.to_pem(), alg, &payload, &encoded, false);
    }
}

/// Verifies with the `openssl` CLI: `pkeyutl -verify` on the PEM key (`-rawin` for Ed25519's message;
/// the digest itself for ECDSA).
pub fn openssl_verify(pem: &str, alg: Algorithm, payload: &SignPayload, sig: &[u8], expect: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let key = write("key.pem", pem.as_bytes());
    let input = write("input.bin", payload.as_bytes());
    let sigfile = write("sig.bin", sig);
    let mut cmd = Command::new("openssl");
    cmd.args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(&input)
        .arg("-sigfile")
        .arg(&sigfile);
    if alg == Algorithm::Ed25519 {
        cmd.arg("-rawin");
    }
    let out = cmd
        .output()
        .expect("the openssl CLI must be installed (scripts/test installs it)");
    let ok = out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully");
    assert_eq!(
        ok,
        expect,
        "openssl verify of {alg} expected {expect}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn unknown_key(provider: &dyn KeyProvider, alg: Algorithm) {
    let handle = KeyHandle::new("custos-conformance-no-such-key");
    let err = provider
        .sign(&handle, alg, &payload_for(alg, b"x"))
        .await
        .expect_err("signing with an unknown handle must fail");
    assert!(matches!(err, ProviderError::UnknownKey(_)), "got {err:?}");
    assert!(!err.is_retryable());
    let err = provider
        .public_key(&handle)
        .await
        .expect_err("unknown public key");
    assert!(matches!(err, ProviderError::UnknownKey(_)), "got {err:?}");
}

async fn wrong_algorithm(provider: &dyn KeyProvider, supported: &[Algorithm]) {
    for alg in Algorithm::ALL
        .into_iter()
        .filter(|a| !supported.contains(a))
    {
        let err = provider
            .generate(alg, "x")
            .await
            .expect_err("unsupported algorithm");
        assert!(
            matches!(err, ProviderError::UnsupportedAlgorithm(_)),
            "got {err:?}"
        );
    }
    // A payload of the wrong kind for the key is refused, not signed.
    for &alg in supported {
        let key = provider
            .generate(alg, "custos-conformance")
            .await
            .expect("generate");
        let wrong = if alg.is_ecdsa() {
            SignPayload::Message(b"not a digest".to_vec())
        } else {
            SignPayload::Digest([7; 32])
        };
        let err = provider
            .sign(&key.handle, alg, &wrong)
            .await
            .expect_err("wrong payload kind");
        assert!(
            !err.is_retryable(),
            "wrong payload must not be retryable: {err:?}"
        );
    }
}

async fn unavailable(provider: &dyn KeyProvider, alg: Algorithm) {
    assert!(
        !provider.health().await.available,
        "unavailable provider reports healthy"
    );
    let err = provider
        .generate(alg, "x")
        .await
        .expect_err("unavailable back-end");
    assert!(err.is_retryable(), "unavailable must be retryable: {err:?}");
}

async fn concurrent_signing(
    provider: &Arc<dyn KeyProvider>,
    alg: Algorithm,
    quirk: Option<EmulatorQuirk>,
) {
    let key = provider
        .generate(alg, "custos-conformance")
        .await
        .expect("generate");
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let provider = Arc::clone(provider);
            let key = key.clone();
            tokio::spawn(async move {
                for j in 0..8u32 {
                    let message = [i.to_be_bytes(), j.to_be_bytes()].concat();
                    let payload = payload_for(alg, &message);
                    let raw = provider
                        .sign(&key.handle, alg, &payload)
                        .await
                        .expect("sign");
                    key.public_key
                        .verify(&signed_payload(quirk, &payload), &raw, SignatureFormat::Raw)
                        .expect("concurrent signature verifies");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

//! A data directory written on one byte order opens on the other: fixtures written on x86-64
//! (little-endian) and on s390x (big-endian, under qemu) are opened here, on whichever architecture runs
//! the tests. See `examples/write_fixture.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::path::Path;
use std::sync::Arc;

use custos_core::{
    AuditConfig, AuditLog, KeyManager, Metrics, RequestContext, Settings, SignInput, SignRequest,
};
use custos_provider::{KeyProvider, ProviderError};
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, KeyName, KeyVersion, ProviderName, SignPayload, SignatureFormat};
use secrecy::SecretString;
use serde_json::Value;

const PASSWORD: &str = "cross-endian fixture password";
const MESSAGE: &[u8] = b"written on one byte order";

fn copy_fixture(name: &str) -> (tempfile::TempDir, Value) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for file in ["custos.db", "manifest.json"] {
        std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
    }
    let manifest =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap())
            .unwrap();
    (dir, manifest)
}

async fn soft(store: &Arc<dyn Store>, password: &str) -> Result<SoftProvider, ProviderError> {
    let params = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    SoftProvider::open(
        ProviderName::new("soft").unwrap(),
        Arc::clone(store),
        &SecretString::from(password.to_owned()),
        params,
    )
    .await
}

async fn opens(fixture: &str) {
    let (dir, manifest) = copy_fixture(fixture);
    assert_eq!(manifest["arch"], fixture);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    assert!(matches!(
        soft(&store, "wrong").await,
        Err(ProviderError::Locked(_))
    ));
    let soft: Arc<dyn KeyProvider> = Arc::new(soft(&store, PASSWORD).await.unwrap());
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::clone(&soft),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await
    .unwrap();
    assert_eq!(
        hex::encode(audit.public_key().as_bytes()),
        manifest["audit_public_key"].as_str().unwrap()
    );
    let keys = KeyManager::open(
        store,
        vec![soft],
        ProviderName::new("soft").unwrap(),
        Arc::clone(&audit),
        metrics,
        Settings::default(),
    )
    .await
    .unwrap();
    let ctx = RequestContext::system("cross-endian");
    for algorithm in Algorithm::ALL {
        let name = KeyName::new(format!("fixture-{algorithm}")).unwrap();
        let expected = &manifest[name.as_str()];
        let key = keys
            .key(&RequestContext::system("test"), &name)
            .await
            .unwrap();
        assert_eq!(key.versions.len(), 2);
        assert_eq!(
            hex::encode(key.versions[0].public_key.as_bytes()),
            expected["v1"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(key.versions[1].public_key.as_bytes()),
            expected["v2"].as_str().unwrap()
        );
        assert_eq!(key.current().unwrap().version, KeyVersion(2));
        // The signature made on the other byte order verifies here...
        let recorded = hex::decode(expected["signature_v1"].as_str().unwrap()).unwrap();
        let payload = if algorithm.is_ecdsa() {
            SignPayload::Digest(custos_types::HashAlgorithm::Sha256.digest(MESSAGE))
        } else {
            SignPayload::Message(MESSAGE.to_vec())
        };
        key.versions[0]
            .public_key
            .verify(&payload, &recorded, SignatureFormat::Raw)
            .unwrap();
        // ...and signing again gives the same bytes (Ed25519 and RFC 6979 ECDSA are deterministic), so the
        // very same private key came out of the sealed record.
        let request = SignRequest {
            input: SignInput::Message(MESSAGE.to_vec()),
            hash: None,
            version: Some(KeyVersion(1)),
            sequence: None,
        };
        let again = keys.sign(&ctx, &name, &request).await.unwrap();
        assert_eq!(
            again.signature.encode(SignatureFormat::Raw).unwrap(),
            recorded,
            "{fixture} {algorithm}"
        );
    }
    // The audit chain written on the other byte order verifies, and extends here.
    let export = audit.export().await.unwrap();
    let report = custos_audit::verify_export(&export, audit.public_key()).unwrap();
    let written = manifest["audit_records"].as_u64().unwrap();
    assert_eq!(
        report.records,
        written + 1 + 3,
        "{fixture}: the fixture's records, our start-up, our three signatures"
    );
}

#[tokio::test]
async fn a_data_directory_written_on_x86_64_opens_here() {
    opens("x86_64").await;
}

#[tokio::test]
async fn a_data_directory_written_on_s390x_opens_here() {
    opens("s390x").await;
}

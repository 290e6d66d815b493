//! Writes a Custos data directory for the cross-byte-order fixture test: a software keystore with one
//! key of each algorithm, a rotation, an audit chain with a checkpoint, and `manifest.json` with the public
//! keys and one signature per key. Run natively and on s390x (big-endian); both outputs are committed and
//! `tests/cross_endian.rs` opens each on whichever architecture runs the tests.
//!
//! Usage: `cargo run -p custos-core --example write_fixture -- DIR`

use std::sync::Arc;

use custos_core::{
    AuditConfig, AuditLog, KeyManager, Metrics, RequestContext, Settings, SignInput, SignRequest,
};
use custos_provider::KeyProvider;
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, KeyName, ProviderName, SignatureFormat};

/// The fixture's master password (a test fixture: no real secret).
pub const PASSWORD: &str = "cross-endian fixture password";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: write_fixture DIR")?;
    let dir = std::path::Path::new(&dir);
    if dir.join(SqliteStore::FILE_NAME).exists() {
        return Err(format!("{} already holds a data directory", dir.display()).into());
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir)?);
    let soft: Arc<dyn KeyProvider> = Arc::new(
        SoftProvider::open(
            ProviderName::new("soft")?,
            Arc::clone(&store),
            &secrecy::SecretString::from(PASSWORD.to_owned()),
            // Small Argon2 cost: the test opens this under an emulator too.
            KdfParams {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
        )
        .await?,
    );
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::clone(&soft),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await?;
    let keys = KeyManager::open(
        Arc::clone(&store),
        vec![soft],
        ProviderName::new("soft")?,
        Arc::clone(&audit),
        metrics,
        Settings::default(),
    )
    .await?;
    let ctx = RequestContext::system("fixture");
    let mut manifest = serde_json::Map::new();
    manifest.insert("arch".into(), std::env::consts::ARCH.into());
    manifest.insert(
        "audit_public_key".into(),
        hex::encode(audit.public_key().as_bytes()).into(),
    );
    for algorithm in Algorithm::ALL {
        let name = KeyName::new(format!("fixture-{algorithm}"))?;
        keys.create_key(&ctx, name.clone(), algorithm, vec![])
            .await?;
        keys.rotate(&ctx, &name).await?;
        let request = SignRequest {
            input: SignInput::Message(b"written on one byte order".to_vec()),
            hash: None,
            version: Some(custos_types::KeyVersion(1)),
            sequence: None,
        };
        let signed = keys.sign(&ctx, &name, &request).await?;
        let key = keys.key(&RequestContext::system("fixture"), &name).await?;
        manifest.insert(
            name.to_string(),
            serde_json::json!({
                "algorithm": algorithm.as_str(),
                "v1": hex::encode(key.versions[0].public_key.as_bytes()),
                "v2": hex::encode(key.versions[1].public_key.as_bytes()),
                "signature_v1": hex::encode(signed.signature.encode(SignatureFormat::Raw)?),
            }),
        );
    }
    let export = audit.export().await?;
    manifest.insert(
        "audit_records".into(),
        (export
            .lines()
            .filter(|l| l.contains(r#""type":"record""#))
            .count() as u64)
            .into(),
    );
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}

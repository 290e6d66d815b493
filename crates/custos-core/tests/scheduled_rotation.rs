//! The rotation scheduler: due keys rotate once, the store lease lets one manager of several do it, the
//! overlap ends in verify-only, and rotations reach a real webhook receiver, signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use custos_core::{
    AuditConfig, AuditLog, Events, KeyManager, Limits, Metrics, RequestContext, RotationPolicy,
    SignInput, SignRequest, VerifyRequest, Webhook,
};
use custos_provider::KeyProvider;
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{KeyRecord, Location, SqliteStore, Store, VersionRecord};
use custos_types::{
    Algorithm, KeyName, KeyVersion, ProviderName, SignatureFormat, Timestamp, VersionState,
};
use secrecy::SecretString;

fn ctx() -> RequestContext {
    RequestContext::system("test")
}

async fn manager(dir: &std::path::Path, events: Events) -> (Arc<KeyManager>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir).unwrap());
    let soft: Arc<dyn KeyProvider> = Arc::new(
        SoftProvider::open(
            ProviderName::new("soft").unwrap(),
            Arc::clone(&store),
            &SecretString::from("pw".to_owned()),
            KdfParams::default(),
        )
        .await
        .unwrap(),
    );
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::clone(&soft),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await
    .unwrap();
    let km = KeyManager::load(
        Arc::clone(&store),
        vec![soft],
        ProviderName::new("soft").unwrap(),
        Limits::default(),
        audit,
        metrics,
    )
    .await
    .unwrap()
    .with_events(events);
    (Arc::new(km), store)
}

/// Puts a key whose only version was made `days` ago straight into the store, as if Custos had made it
/// then (the private key is a real one, in the software keystore).
async fn old_key(dir: &std::path::Path, name: &str, days: i64) {
    let (km, store) = manager(dir, Events::none()).await;
    let provider = km.provider(&ProviderName::new("soft").unwrap()).unwrap();
    let made = provider.generate(Algorithm::Ed25519, name).await.unwrap();
    let then = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(24 * days))
        .unwrap();
    store
        .create_key(&KeyRecord {
            name: KeyName::new(name).unwrap(),
            algorithm: Algorithm::Ed25519,
            providers: vec![ProviderName::new("soft").unwrap()],
            created_at: then,
            versions: vec![VersionRecord {
                version: KeyVersion(1),
                state: VersionState::Current,
                public_key: made.public_key,
                created_at: then,
                locations: vec![Location {
                    provider: ProviderName::new("soft").unwrap(),
                    handle: made.handle,
                }],
            }],
        })
        .await
        .unwrap();
}

fn policy(interval_days: u32, overlap_days: u32) -> RotationPolicy {
    RotationPolicy {
        interval_days,
        overlap_days,
        rotation_time: "00:00:00".into(),
        time_zone: "Pacific/Auckland".into(),
        backup_enabled: false,
        backup_location: None,
        backup_recipient: None,
    }
}

fn states(km: &KeyManager, name: &str) -> Vec<VersionState> {
    km.key(&KeyName::new(name).unwrap())
        .unwrap()
        .versions
        .iter()
        .map(|v| v.state)
        .collect()
}

/// A webhook receiver on 127.0.0.1: every POST's signature header and body go to the channel.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use axum::routing::post;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let signature = headers
                        .get("x-custos-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((signature, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_keys_rotate_once_under_the_lease_and_the_overlap_ends_in_verify_only() {
    let dir = tempfile::tempdir().unwrap();
    old_key(dir.path(), "old", 40).await;
    old_key(dir.path(), "young", 3).await;
    let (url, mut hooks) = receiver().await;
    let secret = SecretString::from("hook secret".to_owned());
    let events = Events::webhooks(vec![Webhook {
        url,
        events: vec!["key_rotated".into()],
        secret: Some(secret.clone()),
    }]);
    let (a, _) = manager(dir.path(), events).await;
    for name in ["old", "young"] {
        a.set_rotation_policy(&ctx(), &KeyName::new(name).unwrap(), Some(policy(30, 1)))
            .await
            .unwrap();
    }
    let next = a
        .next_rotation(&KeyName::new("young").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(next > Timestamp::now(), "the young key is not due");

    // Holder a takes the lease and rotates the due key only; holder b does nothing while a's lease
    // holds. (Two processes on one SQLite file would also need one audit writer, which SQLite's
    // single-process store does not give; the lease is what a shared store will rely on.)
    let lease = Duration::from_secs(60);
    let rotated = a.run_scheduled(&ctx(), "a", lease).await.unwrap();
    assert_eq!(rotated, [KeyName::new("old").unwrap()]);
    assert_eq!(
        states(&a, "old"),
        [VersionState::Enabled, VersionState::Current]
    );
    assert_eq!(states(&a, "young"), [VersionState::Current]);
    assert!(
        a.run_scheduled(&ctx(), "a", lease)
            .await
            .unwrap()
            .is_empty(),
        "rotated once"
    );
    old_key(dir.path(), "late", 40).await;
    let (a, _) = manager(dir.path(), a.events().clone()).await;
    a.set_rotation_policy(&ctx(), &KeyName::new("late").unwrap(), Some(policy(30, 1)))
        .await
        .unwrap();
    assert!(
        a.run_scheduled(&ctx(), "b", lease)
            .await
            .unwrap()
            .is_empty(),
        "b has no lease"
    );
    assert_eq!(states(&a, "late"), [VersionState::Current]);

    // The rotation reached the webhook, signed with the shared secret.
    let (signature, body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .expect("a webhook call")
        .unwrap();
    assert_eq!(signature, custos_core::signature_header(&secret, &body));
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["event"], "key_rotated");
    assert_eq!(event["key"], "old");
    assert_eq!(event["version"], 2);

    // During the overlap, version 1 still signs by explicit version.
    let old = KeyName::new("old").unwrap();
    let by_v1 = SignRequest {
        input: SignInput::Message(b"late block".to_vec()),
        hash: None,
        version: Some(KeyVersion(1)),
        sequence: None,
    };
    let signed = a.sign(&ctx(), &old, &by_v1).await.unwrap();
    assert_eq!(signed.version, KeyVersion(1));

    // With no overlap, the next pass makes version 1 verify-only: it no longer signs, and what it
    // signed still verifies.
    a.set_rotation_policy(&ctx(), &old, Some(policy(30, 0)))
        .await
        .unwrap();
    a.run_scheduled(&ctx(), "a", lease).await.unwrap();
    assert_eq!(
        states(&a, "old"),
        [VersionState::Disabled, VersionState::Current]
    );
    let refused = a.sign(&ctx(), &old, &by_v1).await.unwrap_err();
    assert_eq!(refused.code(), "version_not_usable");
    let verified = a
        .verify(
            &ctx(),
            &old,
            &VerifyRequest {
                input: SignInput::Message(b"late block".to_vec()),
                hash: None,
                signature: signed.signature.raw().to_vec(),
                format: SignatureFormat::Raw,
                version: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(verified.version, Some(KeyVersion(1)));
    assert!(verified.valid);

    // A rotation whose backup cannot be written fails, stays recorded, and the next pass finishes it
    // once the policy is fixed.
    let unwritable = RotationPolicy {
        backup_enabled: true,
        backup_location: Some("/dev/null/backups".into()),
        backup_recipient: Some(
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
        ),
        ..policy(30, 0)
    };
    a.set_rotation_policy(&ctx(), &old, Some(unwritable))
        .await
        .unwrap();
    let err = a.rotate(&ctx(), &old).await.unwrap_err();
    assert_eq!(err.code(), "provider_unavailable", "{err}");
    assert_eq!(a.key(&old).unwrap().versions.len(), 2, "nothing half-made");
    a.set_rotation_policy(&ctx(), &old, Some(policy(30, 0)))
        .await
        .unwrap();
    let rotated = a.run_scheduled(&ctx(), "a", lease).await.unwrap();
    assert_eq!(
        rotated,
        std::slice::from_ref(&old),
        "the unfinished rotation is finished"
    );
    // (With no overlap, the same pass also makes version 2 verify-only.)
    assert_eq!(
        states(&a, "old"),
        [
            VersionState::Disabled,
            VersionState::Disabled,
            VersionState::Current
        ]
    );

    // A policy the manager cannot follow is refused with a clear code.
    let err = a
        .set_rotation_policy(&ctx(), &old, Some(policy(0, 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_rotation_policy");
}

//! Failover, failback, emergency mode, the signature cache and the equivocation guard, driven by the
//! fault-injecting wrapper around real software providers sharing one store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_core::{
    AuditConfig, AuditLog, EmergencyConfig, FailoverConfig, KeyManager, ManualClock, Metrics,
    RequestContext, Settings, SignInput, SignRequest,
};
use custos_provider::fault::{Fault, FaultyProvider};
use custos_provider::KeyProvider;
use custos_provider_soft::{KdfParams, MemoryProvider, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, KeyName, ProviderName, SignPayload, SignatureFormat};

struct Rig {
    km: Arc<KeyManager>,
    clock: Arc<ManualClock>,
    primary: Arc<FaultyProvider>,
    secondary: Arc<FaultyProvider>,
}

fn name(n: &str) -> ProviderName {
    ProviderName::new(n).unwrap()
}

fn config(emergency: bool) -> FailoverConfig {
    FailoverConfig {
        primary_retry_interval_ms: 10,
        max_primary_retries: 1,
        secondary_retry_interval_ms: 10,
        max_secondary_retries: 1,
        provider_timeout_ms: 200,
        breaker_failures: 2,
        breaker_open_ms: 100,
        emergency: EmergencyConfig {
            enabled: emergency,
            max_transactions: 3,
            max_time_seconds: 3600,
            allowed_operations: vec!["sign".into()],
        },
    }
}

async fn rig(dir: &std::path::Path, failover: FailoverConfig) -> Rig {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir).unwrap());
    let soft = |n: &'static str| {
        let store = Arc::clone(&store);
        async move {
            SoftProvider::open(
                name(n),
                store,
                &secrecy::SecretString::from("pw".to_owned()),
                KdfParams::default(),
            )
            .await
            .unwrap()
        }
    };
    let primary = FaultyProvider::new(Arc::new(soft("primary").await));
    let secondary = FaultyProvider::new(Arc::new(soft("secondary").await));
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::new(soft("audit").await),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await
    .unwrap();
    let providers: Vec<Arc<dyn KeyProvider>> = vec![primary.clone(), secondary.clone()];
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let km = KeyManager::open(
        store,
        providers,
        name("primary"),
        audit,
        metrics,
        Settings {
            failover,
            emergency_provider: Some(Arc::new(MemoryProvider::new(name("emergency")))),
            clock: clock.clone(),
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    Rig {
        km: Arc::new(km),
        clock,
        primary,
        secondary,
    }
}

fn ctx() -> RequestContext {
    RequestContext::system("test")
}

fn key() -> KeyName {
    KeyName::new("seq").unwrap()
}

fn message(m: &[u8]) -> SignRequest {
    SignRequest::new(SignInput::Message(m.to_vec()))
}

fn at(sequence: u64, m: &[u8]) -> SignRequest {
    SignRequest {
        sequence: Some(sequence),
        ..message(m)
    }
}

async fn chain_key(rig: &Rig) {
    let created = rig
        .km
        .create_key(
            &ctx(),
            key(),
            Algorithm::Ed25519,
            vec![name("primary"), name("secondary")],
        )
        .await
        .unwrap();
    let locations = &created.current().unwrap().locations;
    assert_eq!(locations.len(), 2, "the key is held by both providers");
    // The same key in both: each signs under the version's one public key.
    for location in locations {
        let provider = rig.km.provider(&location.provider).unwrap();
        let payload = SignPayload::Message(b"x".to_vec());
        let raw = provider
            .sign(&location.handle, Algorithm::Ed25519, &payload)
            .await
            .unwrap();
        created
            .current()
            .unwrap()
            .public_key
            .verify(&payload, &raw, SignatureFormat::Raw)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_secondary_signs_within_the_budget_then_fails_back() {
    let dir = tempfile::tempdir().unwrap();
    let failover = config(false);
    let rig = rig(dir.path(), failover.clone()).await;
    chain_key(&rig).await;
    let km = &rig.km;
    assert_eq!(
        km.sign(&ctx(), &key(), &message(b"a"))
            .await
            .unwrap()
            .provider,
        name("primary")
    );

    rig.primary.set(Fault::Unavailable);
    let (calls, started) = (rig.primary.sign_calls(), Instant::now());
    let signed = km.sign(&ctx(), &key(), &message(b"b")).await.unwrap();
    assert_eq!(signed.provider, name("secondary"));
    // Two attempts on the primary (the second one opens its circuit), then the secondary; the bound on
    // time is loose because the big-endian lane runs under an emulator.
    assert_eq!(rig.primary.sign_calls() - calls, 2);
    assert!(started.elapsed() < failover.retry_budget(0) + Duration::from_secs(2));
    assert_eq!(km.metrics().failovers.get(), 1);
    // The circuit is open now: the next request does not touch the primary at all.
    let calls = rig.primary.sign_calls();
    let signed = km.sign(&ctx(), &key(), &message(b"c")).await.unwrap();
    assert_eq!(signed.provider, name("secondary"));
    assert_eq!(rig.primary.sign_calls(), calls);
    let circuit = km.circuit(&name("primary")).unwrap();
    assert_eq!(circuit.state, custos_core::CircuitState::Open);

    // The primary comes back: after the cool-down a probe finds it, and signing fails back.
    rig.primary.set(Fault::None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signed = km.sign(&ctx(), &key(), &message(b"d")).await.unwrap();
    assert_eq!(signed.provider, name("primary"));
    assert_eq!(km.metrics().failbacks.get(), 1);
    assert_eq!(
        km.circuit(&name("primary")).unwrap().state,
        custos_core::CircuitState::Closed
    );
    assert_eq!(km.circuit(&name("secondary")).unwrap().switches_to, 1);
    // Both switches are in the audit log.
    let switches = km
        .audit()
        .query(&custos_audit::AuditQuery {
            operation: Some("provider_switch".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let subjects: Vec<_> = switches
        .iter()
        .map(|r| r.entry.subject.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        subjects,
        ["failover from primary", "failback from secondary"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_times_out_and_a_permanent_error_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), config(false)).await;
    chain_key(&rig).await;
    rig.primary.set(Fault::Hang);
    let (calls, started) = (rig.primary.sign_calls(), Instant::now());
    let signed = rig.km.sign(&ctx(), &key(), &message(b"a")).await.unwrap();
    assert_eq!(signed.provider, name("secondary"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "two timed-out attempts: {took:?}"
    );
    assert_eq!(rig.primary.sign_calls() - calls, 2, "no third attempt");

    // A refusal is permanent: no retry, no failover, the caller hears it.
    rig.primary.set(Fault::None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    rig.km
        .sign(&ctx(), &key(), &message(b"probe"))
        .await
        .unwrap();
    rig.primary.set(Fault::Refuse);
    let before = (rig.primary.sign_calls(), rig.secondary.sign_calls());
    let err = rig
        .km
        .sign(&ctx(), &key(), &message(b"b"))
        .await
        .unwrap_err();
    // (A device's refusal needs an operator: it is an internal error to the caller, logged in full.)
    assert_eq!(err.code(), "internal");
    assert_eq!(rig.primary.sign_calls(), before.0 + 1);
    assert_eq!(rig.secondary.sign_calls(), before.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_down_means_emergency_mode_with_its_restrictions_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), config(true)).await;
    chain_key(&rig).await;
    let own = rig
        .km
        .key(&ctx(), &key())
        .await
        .unwrap()
        .current()
        .unwrap()
        .public_key
        .clone();
    rig.primary.set(Fault::Unavailable);
    rig.secondary.set(Fault::Unavailable);

    let signed = rig.km.sign(&ctx(), &key(), &message(b"e1")).await.unwrap();
    let emergency = signed
        .emergency
        .clone()
        .expect("marked as an emergency signature");
    assert_ne!(emergency, own, "a different identity");
    assert_eq!(signed.provider.as_str(), custos_core::EMERGENCY_PROVIDER);
    let payload = SignPayload::Message(b"e1".to_vec());
    emergency
        .verify(&payload, signed.signature.raw(), SignatureFormat::Raw)
        .unwrap();
    assert!(own
        .verify(&payload, signed.signature.raw(), SignatureFormat::Raw)
        .is_err());
    // Only `sign` is allowed: a batch is refused.
    let batch = rig
        .km
        .sign_batch(&ctx(), &key(), &[message(b"b")])
        .await
        .unwrap();
    assert_eq!(
        batch[0].as_ref().unwrap_err().code(),
        "emergency_restricted"
    );
    rig.km.sign(&ctx(), &key(), &message(b"e2")).await.unwrap();
    assert_eq!(rig.km.metrics().emergency_signatures.get(), 2);
    drop(rig);

    // A restart does not reset the count: one emergency signature is left of three.
    let rig = self::rig(dir.path(), config(true)).await;
    rig.primary.set(Fault::Unavailable);
    rig.secondary.set(Fault::Unavailable);
    let third = rig.km.sign(&ctx(), &key(), &message(b"e3")).await.unwrap();
    assert_ne!(
        third.emergency.unwrap(),
        emergency,
        "a new process, a new ephemeral key"
    );
    let err = rig
        .km
        .sign(&ctx(), &key(), &message(b"e4"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "emergency_restricted");

    // Without emergency mode, the caller hears that no provider could sign.
    let dir = tempfile::tempdir().unwrap();
    let rig = self::rig(dir.path(), config(false)).await;
    chain_key(&rig).await;
    rig.primary.set(Fault::Unavailable);
    rig.secondary.set(Fault::Unavailable);
    let err = rig
        .km
        .sign(&ctx(), &key(), &message(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "provider_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emergency_window_closes_after_max_time_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut failover = config(true);
    failover.emergency.max_time_seconds = 1;
    let rig = rig(dir.path(), failover).await;
    chain_key(&rig).await;
    rig.primary.set(Fault::Unavailable);
    rig.secondary.set(Fault::Unavailable);
    rig.km.sign(&ctx(), &key(), &message(b"1")).await.unwrap();
    rig.clock.advance(jiff::SignedDuration::from_secs(2));
    let err = rig
        .km
        .sign(&ctx(), &key(), &message(b"2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "emergency_restricted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_sign_once_through_the_cache_and_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), config(false)).await;
    chain_key(&rig).await;
    // Slow the provider so that the identical requests really overlap.
    rig.primary.set(Fault::Slow(Duration::from_millis(100)));
    let before = rig.primary.sign_calls();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let km = Arc::clone(&rig.km);
            tokio::spawn(async move { km.sign(&ctx(), &key(), &message(b"same")).await })
        })
        .collect();
    let mut signatures = Vec::new();
    for task in tasks {
        signatures.push(task.await.unwrap().unwrap().signature.raw().to_vec());
    }
    signatures.dedup();
    assert_eq!(signatures.len(), 1);
    assert_eq!(
        rig.primary.sign_calls() - before,
        1,
        "one provider call for eight requests"
    );
    assert_eq!(rig.km.metrics().cache_hits.get(), 7);

    let before = rig.primary.sign_calls();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let km = Arc::clone(&rig.km);
            tokio::spawn(async move { km.sign(&ctx(), &key(), &at(10, b"block 10")).await })
        })
        .collect();
    let mut signatures = Vec::new();
    for task in tasks {
        signatures.push(task.await.unwrap().unwrap().signature.raw().to_vec());
    }
    signatures.dedup();
    assert_eq!(signatures.len(), 1, "one signature per sequence");
    assert!(rig.primary.sign_calls() - before <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_holds_across_failover_emergency_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), config(true)).await;
    chain_key(&rig).await;
    let first = rig
        .km
        .sign(&ctx(), &key(), &at(1, b"block 1"))
        .await
        .unwrap();
    rig.primary.set(Fault::Unavailable);
    // The secondary holds the same key, so the same payload at the same height is the same signature,
    // and a different payload there is refused.
    let again = rig
        .km
        .sign(&ctx(), &key(), &at(1, b"block 1"))
        .await
        .unwrap();
    assert_eq!(again.signature.raw(), first.signature.raw());
    let fork = rig
        .km
        .sign(&ctx(), &key(), &at(1, b"fork"))
        .await
        .unwrap_err();
    assert_eq!(fork.code(), "equivocation");
    let second = rig
        .km
        .sign(&ctx(), &key(), &at(2, b"block 2"))
        .await
        .unwrap();
    assert_eq!(second.provider, name("secondary"));
    rig.secondary.set(Fault::Unavailable);
    let third = rig
        .km
        .sign(&ctx(), &key(), &at(3, b"block 3"))
        .await
        .unwrap();
    assert!(third.emergency.is_some());
    drop(rig);

    let rig = self::rig(dir.path(), config(true)).await;
    let replay = rig
        .km
        .sign(&ctx(), &key(), &at(3, b"block 3"))
        .await
        .unwrap();
    assert_eq!(replay.signature.raw(), third.signature.raw());
    assert_eq!(
        replay.emergency, third.emergency,
        "still marked, with the same emergency key"
    );
    for (sequence, payload) in [(3, b"other".as_slice()), (2, b"block 2")] {
        let err = rig
            .km
            .sign(&ctx(), &key(), &at(sequence, payload))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "equivocation", "sequence {sequence}");
    }
    let fourth = rig
        .km
        .sign(&ctx(), &key(), &at(4, b"block 4"))
        .await
        .unwrap();
    assert_eq!(fourth.provider, name("primary"));
}

//! The rotation scheduler, on a manual clock: due keys rotate once, the store lease lets one manager of
//! several do it, the overlap ends in verify-only, an unwritable backup leaves the rotation recorded and
//! the next pass finishes it, deletions that come due destroy the key, and bad policies are refused
//! before anything is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{message, name, system, Harness};
use custos_core::{KeyStateChange, RotationPolicy, SignInput, SignRequest, VerifyRequest};
use custos_types::{Algorithm, KeyState, KeyVersion, SignatureFormat, VersionState};

const LEASE: Duration = Duration::from_secs(60);

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

fn days(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * n)
}

async fn states(h: &Harness, key: &str) -> Vec<VersionState> {
    h.km.key(&system(), &name(key))
        .await
        .unwrap()
        .versions
        .iter()
        .map(|v| v.state)
        .collect()
}

/// Two keys with a 30-day policy, one made 40 days before "now" and one 3 days before.
async fn old_and_young(h: &Harness) {
    h.km.create_key(&system(), name("old"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.clock.advance(days(37));
    h.km.create_key(&system(), name("young"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.clock.advance(days(3));
    for key in ["old", "young"] {
        h.km.set_rotation_policy(&system(), &name(key), Some(policy(30, 1)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn only_due_keys_rotate_and_only_once() {
    let h = Harness::new().await;
    old_and_young(&h).await;
    let next =
        h.km.next_rotation(&system(), &name("young"))
            .await
            .unwrap()
            .unwrap();
    assert!(
        next > custos_core::Clock::now(h.clock.as_ref()),
        "the young key is not due"
    );
    let rotated = h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    assert_eq!(rotated, [name("old")]);
    assert_eq!(
        states(&h, "old").await,
        [VersionState::Enabled, VersionState::Current]
    );
    assert_eq!(states(&h, "young").await, [VersionState::Current]);
    assert!(
        h.km.run_scheduled(&system(), "a", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "rotated once"
    );
}

#[tokio::test]
async fn another_holder_does_nothing_while_the_lease_holds() {
    let h = Harness::new().await;
    old_and_young(&h).await;
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    h.km.create_key(&system(), name("late"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.set_rotation_policy(&system(), &name("late"), Some(policy(1, 0)))
        .await
        .unwrap();
    h.clock.advance(jiff::SignedDuration::from_hours(30));
    // a holds the lease now (as another process's scheduler would).
    let now = custos_core::Clock::now(h.clock.as_ref());
    assert!(h
        .store
        .acquire_lease(
            "rotation",
            "a",
            now,
            now + jiff::SignedDuration::from_secs(60)
        )
        .await
        .unwrap());
    assert!(
        h.km.run_scheduled(&system(), "b", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "b has no lease"
    );
    assert_eq!(states(&h, "late").await, [VersionState::Current]);
    h.clock.advance(jiff::SignedDuration::from_secs(61));
    assert_eq!(
        h.km.run_scheduled(&system(), "b", LEASE).await.unwrap(),
        [name("late")],
        "b takes the lease once a's has run out"
    );
}

#[tokio::test]
async fn the_overlap_ends_in_verify_only() {
    let h = Harness::new().await;
    old_and_young(&h).await;
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    let old = name("old");
    // During the overlap, version 1 still signs by explicit version.
    let by_v1 = SignRequest {
        version: Some(KeyVersion(1)),
        ..message(b"late block")
    };
    let signed = h.km.sign(&system(), &old, &by_v1).await.unwrap();
    assert_eq!(signed.version, KeyVersion(1));
    // Once the overlap has passed, the next pass makes version 1 verify-only.
    h.clock.advance(days(2));
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    assert_eq!(
        states(&h, "old").await,
        [VersionState::Disabled, VersionState::Current]
    );
    let refused = h.km.sign(&system(), &old, &by_v1).await.unwrap_err();
    assert_eq!(refused.code(), "version_not_usable");
    let verified =
        h.km.verify(
            &system(),
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
    assert!(verified.valid);
    assert_eq!(verified.version, Some(KeyVersion(1)));
}

#[tokio::test]
async fn an_unwritable_backup_leaves_the_rotation_recorded_and_the_next_pass_finishes_it() {
    let h = Harness::new().await;
    old_and_young(&h).await;
    let old = name("old");
    let unwritable = RotationPolicy {
        backup_enabled: true,
        backup_location: Some("/dev/null/backups".into()),
        backup_recipient: Some(
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
        ),
        ..policy(30, 0)
    };
    h.km.set_rotation_policy(&system(), &old, Some(unwritable))
        .await
        .unwrap();
    let err = h.km.rotate(&system(), &old).await.unwrap_err();
    assert_eq!(err.code(), "provider_unavailable", "{err}");
    assert_eq!(states(&h, "old").await.len(), 1, "nothing half-made");
    h.km.set_rotation_policy(&system(), &old, Some(policy(30, 0)))
        .await
        .unwrap();
    let rotated = h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    assert_eq!(
        rotated,
        std::slice::from_ref(&old),
        "the unfinished rotation is finished"
    );
}

#[tokio::test]
async fn policies_out_of_range_are_refused_before_anything_is_stored() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    for bad in [
        policy(0, 0),
        policy(4_294_967_295, 0),
        policy(3651, 0),
        policy(30, 30),
    ] {
        let err =
            h.km.set_rotation_policy(&system(), &k, Some(bad))
                .await
                .unwrap_err();
        assert_eq!(err.code(), "invalid_rotation_policy");
    }
    assert_eq!(h.km.rotation_policy(&system(), &k).await.unwrap(), None);
    // The scheduler keeps working for every key.
    h.km.set_rotation_policy(&system(), &k, Some(policy(3650, 0)))
        .await
        .unwrap();
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
}

#[tokio::test]
async fn a_deletion_that_comes_due_destroys_the_key() {
    let h = Harness::new().await;
    let k = name("gone");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.set_key_state(&system(), &k, KeyStateChange::ScheduleDeletion { days: 7 })
        .await
        .unwrap();
    h.clock.advance(days(6));
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    assert!(matches!(
        h.km.key(&system(), &k).await.unwrap().state,
        KeyState::PendingDeletion { .. }
    ));
    h.clock.advance(days(2));
    h.km.run_scheduled(&system(), "a", LEASE).await.unwrap();
    let key = h.km.key(&system(), &k).await.unwrap();
    assert_eq!(key.state, KeyState::Destroyed);
    assert!(key
        .versions
        .iter()
        .all(|v| v.state == VersionState::Destroyed));
    let err = h.km.sign(&system(), &k, &message(b"x")).await.unwrap_err();
    assert_eq!(err.code(), "key_disabled");
    let err =
        h.km.set_key_state(&system(), &k, KeyStateChange::Enable)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "invalid_key_state");
}

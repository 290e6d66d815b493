//! The key manager as every surface sees it: signing and verifying, codes for bad input, the audit
//! record of every operation (refusals under the operation's own name), key state obeyed by every path,
//! the policy step, the equivocation guard's ranges, custody settings, BIP32 keys, imports with one-time
//! tokens, sealing keys and client-named keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use common::{at, message, name, system, Harness};
use custos_audit::Outcome;
use custos_core::{
    ClientKeyFormat, CoreError, Decision, KeyStateChange, NewClientKey, Operation, Policies,
    PolicyInput, RotationPolicy, Settings, SignInput, SignPolicy, SignRequest, VerifyRequest,
    WrappingAlgorithm,
};
use custos_provider::HARDENED;
use custos_types::{
    Algorithm, HashAlgorithm, KeyState, KeyVersion, PrivateKey, ProviderName, SignPayload,
    SignatureFormat, VersionState,
};
use k256::elliptic_curve::sec1::ToEncodedPoint as _;
use proptest::prelude::*;

fn verify_request(m: &[u8], signature: &[u8]) -> VerifyRequest {
    VerifyRequest {
        input: SignInput::Message(m.to_vec()),
        hash: None,
        signature: signature.to_vec(),
        format: SignatureFormat::Raw,
        version: None,
    }
}

// ---- signing, verifying, rotating -----------------------------------------------------------------

#[tokio::test]
async fn a_signature_verifies_under_its_version_after_a_rotation() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Secp256k1, vec![])
        .await
        .unwrap();
    let signed = h.km.sign(&system(), &k, &message(b"hello")).await.unwrap();
    assert_eq!(signed.version, KeyVersion(1));
    assert!(signed.signature.recovery_id().is_some());
    let rotated = h.km.rotate(&system(), &k).await.unwrap();
    assert_eq!(rotated.current().unwrap().version, KeyVersion(2));
    assert_eq!(
        rotated.version(KeyVersion(1)).unwrap().state,
        VersionState::Enabled
    );
    let outcome =
        h.km.verify(
            &system(),
            &k,
            &verify_request(b"hello", signed.signature.raw()),
        )
        .await
        .unwrap();
    assert!(outcome.valid);
    assert_eq!(outcome.version, Some(KeyVersion(1)));
    assert!(
        !h.km
            .verify(
                &system(),
                &k,
                &verify_request(b"other", signed.signature.raw())
            )
            .await
            .unwrap()
            .valid
    );
}

#[tokio::test]
async fn new_signatures_come_from_the_current_version_and_old_ones_on_request() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::P256, vec![])
        .await
        .unwrap();
    h.km.rotate(&system(), &k).await.unwrap();
    assert_eq!(
        h.km.sign(&system(), &k, &message(b"x"))
            .await
            .unwrap()
            .version,
        KeyVersion(2)
    );
    let mut old = message(b"x");
    old.version = Some(KeyVersion(1));
    assert_eq!(
        h.km.sign(&system(), &k, &old).await.unwrap().version,
        KeyVersion(1)
    );
    old.version = Some(KeyVersion(9));
    assert_eq!(
        h.km.sign(&system(), &k, &old).await.unwrap_err().code(),
        "version_not_found"
    );
}

#[tokio::test]
async fn a_keccak_message_and_its_digest_sign_the_same() {
    let h = Harness::new().await;
    let k = name("eth");
    h.km.create_key(&system(), k.clone(), Algorithm::Secp256k1, vec![])
        .await
        .unwrap();
    let keccak = SignRequest {
        hash: Some(HashAlgorithm::Keccak256),
        ..message(b"eth")
    };
    let digest = SignRequest::new(SignInput::Digest(
        HashAlgorithm::Keccak256.digest(b"eth").to_vec(),
    ));
    let a = h.km.sign(&system(), &k, &keccak).await.unwrap();
    let b = h.km.sign(&system(), &k, &digest).await.unwrap();
    assert_eq!(
        a.signature, b.signature,
        "RFC 6979 signing is deterministic"
    );
}

#[tokio::test]
async fn bad_inputs_have_stable_codes_and_change_nothing() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("ed"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let cases = [
        ("ed", message(b""), "empty_message"),
        ("ed", message(&vec![0; 64 * 1024 + 1]), "message_too_large"),
        (
            "ed",
            SignRequest {
                hash: Some(HashAlgorithm::Sha256),
                ..message(b"x")
            },
            "not_supported",
        ),
        ("nope", message(b"x"), "key_not_found"),
    ];
    for (key, request, code) in cases {
        let err =
            h.km.sign(&system(), &name(key), &request)
                .await
                .unwrap_err();
        assert_eq!(err.code(), code, "{key} {request:?}");
    }
    let chain = vec![
        ProviderName::new("soft").unwrap(),
        ProviderName::new("soft").unwrap(),
    ];
    let err =
        h.km.create_key(&system(), name("c"), Algorithm::Ed25519, chain)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "chain_cannot_share");
    let err =
        h.km.create_key(
            &system(),
            name("c"),
            Algorithm::Ed25519,
            vec![ProviderName::new("hsm").unwrap()],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_provider");
    assert!(h
        .km
        .list_keys(&system())
        .await
        .unwrap()
        .iter()
        .all(|k| k.name.as_str() != "c"));
}

#[tokio::test]
async fn keys_reload_from_the_store() {
    let h = Harness::new().await;
    let created =
        h.km.create_key(&system(), name("r"), Algorithm::Ed25519, vec![])
            .await
            .unwrap();
    h.km.rotate(&system(), &name("r")).await.unwrap();
    let h = h.reopen().await;
    let loaded = h.km.key(&system(), &name("r")).await.unwrap();
    assert_eq!(
        loaded.versions[0].public_key,
        created.versions[0].public_key
    );
    assert_eq!(loaded.current().unwrap().version, KeyVersion(2));
    h.km.sign(&system(), &name("r"), &message(b"after reload"))
        .await
        .unwrap();
}

// ---- the audit record of every operation ---------------------------------------------------------

#[tokio::test]
async fn every_operation_is_audited_with_a_mac_never_the_payload() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("a"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.sign(&system(), &name("a"), &message(b"one"))
        .await
        .unwrap();
    h.km.sign(&system(), &name("missing"), &message(b"two"))
        .await
        .unwrap_err();
    h.km.rotate(&system(), &name("a")).await.unwrap();
    let records = h.records().await;
    let ops: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.entry.operation.as_str(),
                r.entry.outcome,
                r.entry.error_code.clone(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("startup", Outcome::Ok, None),
            ("key_create", Outcome::Ok, None),
            ("sign", Outcome::Ok, None),
            ("sign", Outcome::Error, Some("key_not_found".to_owned())),
            ("key_rotate", Outcome::Ok, None),
        ]
    );
    assert_eq!(
        records[2].entry.payload_mac.as_deref(),
        Some(h.km.audit().mac(b"one").as_str())
    );
    assert!(!serde_json::to_string(&records).unwrap().contains("6f6e65"));
}

#[tokio::test]
async fn the_export_verifies_and_an_edit_is_caught() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("a"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.rotate(&system(), &name("a")).await.unwrap();
    let export = h.km.export_audit(&system()).await.unwrap();
    let report = custos_audit::verify_export(&export, h.km.audit().public_key()).unwrap();
    assert_eq!(report.records, 3);
    let forged = export.replacen("key_rotate", "key_create", 1);
    assert!(custos_audit::verify_export(&forged, h.km.audit().public_key()).is_err());
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_signature_closed() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("a"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    // Make every audit insert fail, as a full disk would.
    let db = rusqlite::Connection::open(h.dir.path().join(custos_store::SqliteStore::FILE_NAME))
        .unwrap();
    db.execute_batch("CREATE TRIGGER fail BEFORE INSERT ON audit_log BEGIN SELECT RAISE(FAIL, 'disk full'); END;")
        .unwrap();
    let err =
        h.km.sign(&system(), &name("a"), &message(b"x"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "audit_unavailable");
    assert!(!h.km.audit().is_healthy());
    assert_eq!(h.km.metrics().audit_write_failures.get(), 1);
    assert_eq!(h.km.metrics().audit_up.get(), 0);
    db.execute_batch("DROP TRIGGER fail;").unwrap();
    h.km.sign(&system(), &name("a"), &message(b"x"))
        .await
        .unwrap();
    assert!(h.km.audit().is_healthy());
    let export = h.km.export_audit(&system()).await.unwrap();
    custos_audit::verify_export(&export, h.km.audit().public_key()).unwrap();
}

// ---- authorisation decided in core ----------------------------------------------------------------

#[tokio::test]
async fn a_caller_without_the_scope_is_refused_and_recorded_under_the_operation() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("k"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let verifier = h.caller(&["verify:*"]).await;
    let err =
        h.km.sign(&verifier, &name("k"), &message(b"x"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    let signer = h.caller(&["sign:k"]).await;
    h.km.sign(&signer, &name("k"), &message(b"x"))
        .await
        .unwrap();
    assert_eq!(
        h.km.create_key(&signer, name("other"), Algorithm::Ed25519, vec![])
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
    let denied: Vec<_> = h
        .records()
        .await
        .into_iter()
        .filter(|r| r.entry.outcome == Outcome::Denied)
        .map(|r| (r.entry.operation, r.entry.key))
        .collect();
    assert_eq!(
        denied,
        [
            ("sign".to_owned(), Some("k".to_owned())),
            ("key_create".to_owned(), Some("other".to_owned()))
        ]
    );
}

// ---- key state obeyed by every path ---------------------------------------------------------------

#[tokio::test]
async fn a_disabled_key_neither_signs_nor_verifies_until_enabled() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let signed = h.km.sign(&system(), &k, &message(b"x")).await.unwrap();
    h.km.set_key_state(&system(), &k, KeyStateChange::Disable)
        .await
        .unwrap();
    assert_eq!(
        h.km.sign(&system(), &k, &message(b"x"))
            .await
            .unwrap_err()
            .code(),
        "key_disabled"
    );
    assert_eq!(
        h.km.sign(&system(), &k, &at(1, b"x"))
            .await
            .unwrap_err()
            .code(),
        "key_disabled",
        "the guarded path too"
    );
    let batch = Arc::clone(&h.km)
        .sign_batch(&system(), &k, &[message(b"x")])
        .await;
    assert_eq!(batch.unwrap_err().code(), "key_disabled");
    assert_eq!(
        h.km.verify(&system(), &k, &verify_request(b"x", signed.signature.raw()))
            .await
            .unwrap_err()
            .code(),
        "key_disabled"
    );
    h.km.set_key_state(&system(), &k, KeyStateChange::Enable)
        .await
        .unwrap();
    h.km.sign(&system(), &k, &message(b"x")).await.unwrap();
}

#[tokio::test]
async fn a_key_pending_deletion_is_refused_and_a_cancelled_deletion_leaves_it_disabled() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.set_key_state(&system(), &k, KeyStateChange::ScheduleDeletion { days: 7 })
        .await
        .unwrap();
    assert_eq!(
        h.km.sign(&system(), &k, &message(b"x"))
            .await
            .unwrap_err()
            .code(),
        "key_pending_deletion"
    );
    assert_eq!(
        h.km.rotate(&system(), &k).await.unwrap_err().code(),
        "key_pending_deletion"
    );
    let key =
        h.km.set_key_state(&system(), &k, KeyStateChange::CancelDeletion)
            .await
            .unwrap();
    assert_eq!(key.state, KeyState::Disabled);
    let h = h.reopen().await;
    assert_eq!(
        h.km.key(&system(), &k).await.unwrap().state,
        KeyState::Disabled,
        "durable"
    );
}

#[tokio::test]
async fn disabling_needs_keys_rotate_and_deleting_needs_admin() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let rotator = h.caller(&["keys:rotate"]).await;
    h.km.set_key_state(&rotator, &k, KeyStateChange::Disable)
        .await
        .unwrap();
    let err =
        h.km.set_key_state(&rotator, &k, KeyStateChange::ScheduleDeletion { days: 30 })
            .await
            .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    let admin = h.caller(&["admin"]).await;
    h.km.set_key_state(&admin, &k, KeyStateChange::ScheduleDeletion { days: 30 })
        .await
        .unwrap();
}

// ---- the policy step ------------------------------------------------------------------------------

/// A policy for the test: refuses messages that say "forbidden", holds those that say "hold".
#[derive(Debug)]
struct Words;

#[async_trait]
impl SignPolicy for Words {
    fn name(&self) -> &str {
        "words"
    }

    async fn decide(&self, input: &PolicyInput<'_>) -> Result<Decision, CoreError> {
        Ok(match input.message {
            Some(b"forbidden") => Decision::Deny("this word is not signed".into()),
            Some(b"hold") => Decision::Pending(vec!["2 of treasury".into()]),
            _ => Decision::Allow,
        })
    }
}

#[tokio::test]
async fn an_installed_policy_allows_denies_or_holds_and_is_audited() {
    let h = Harness::with(Settings {
        policies: Policies::none().with(Arc::new(Words)),
        ..Settings::default()
    })
    .await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.sign(&system(), &k, &message(b"fine")).await.unwrap();
    let denied =
        h.km.sign(&system(), &k, &message(b"forbidden"))
            .await
            .unwrap_err();
    assert_eq!(denied.code(), "policy_denied");
    assert!(denied.to_string().contains("words"), "{denied}");
    let held =
        h.km.sign(&system(), &k, &message(b"hold"))
            .await
            .unwrap_err();
    assert_eq!(held.code(), "approval_required");
    assert!(held.to_string().contains("2 of treasury"), "{held}");
    let sign_records: Vec<_> = h
        .records()
        .await
        .into_iter()
        .filter(|r| r.entry.operation == "sign")
        .map(|r| (r.entry.outcome, r.entry.error_code))
        .collect();
    assert_eq!(
        sign_records,
        [
            (Outcome::Ok, None),
            (Outcome::Denied, Some("policy_denied".to_owned())),
            (Outcome::Error, Some("approval_required".to_owned()))
        ]
    );
    assert_eq!(h.km.policies(), ["words"]);
}

// ---- the equivocation guard -----------------------------------------------------------------------

#[tokio::test]
async fn the_guard_signs_each_sequence_once() {
    let h = Harness::new().await;
    let k = name("seq");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let first =
        h.km.sign(&system(), &k, &at(10, b"block 10"))
            .await
            .unwrap();
    let again =
        h.km.sign(&system(), &k, &at(10, b"block 10"))
            .await
            .unwrap();
    assert_eq!(
        again.signature, first.signature,
        "the same payload at the same sequence"
    );
    for (n, m) in [
        (10, &b"block 10 (forked)"[..]),
        (9, b"block 9"),
        (3, b"block 10"),
    ] {
        let err = h.km.sign(&system(), &k, &at(n, m)).await.unwrap_err();
        assert_eq!(err.code(), "equivocation", "{n}");
    }
    h.km.sign(&system(), &k, &message(b"unsequenced"))
        .await
        .unwrap();
    let err = Arc::clone(&h.km)
        .sign_batch(&system(), &k, &[at(12, b"x")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_supported");
}

#[tokio::test]
async fn concurrent_requests_for_one_new_sequence_have_exactly_one_winner_durably() {
    let h = Harness::new().await;
    let k = name("seq");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let (km, k) = (Arc::clone(&h.km), k.clone());
            tokio::spawn(async move { km.sign(&system(), &k, &at(20, &[i; 4])).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(err) => assert_eq!(err.code(), "equivocation"),
        }
    }
    assert_eq!(won, 1);
    let h = h.reopen().await;
    let err =
        h.km.sign(&system(), &k, &at(19, b"late"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "equivocation", "the watermark is durable");
}

#[tokio::test]
async fn sequences_out_of_range_or_too_far_ahead_are_refused_and_do_not_freeze_the_key() {
    let h = Harness::new().await;
    let k = name("seq");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let err =
        h.km.sign(&system(), &k, &at(u64::MAX, b"x"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "invalid_sequence");
    assert_eq!(
        h.km.sign(&system(), &k, &at(custos_core::MAX_SEQUENCE + 1, b"x"))
            .await
            .unwrap_err()
            .code(),
        "invalid_sequence"
    );
    h.km.sign(&system(), &k, &at(100, b"block 100"))
        .await
        .unwrap();
    let far = 100 + custos_core::DEFAULT_MAX_SEQUENCE_JUMP + 1;
    let err =
        h.km.sign(&system(), &k, &at(far, b"typo"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "sequence_too_far");
    // The key still signs the next block.
    h.km.sign(&system(), &k, &at(101, b"block 101"))
        .await
        .unwrap();
    h.km.sign(
        &system(),
        &k,
        &at(101 + custos_core::DEFAULT_MAX_SEQUENCE_JUMP, b"jump"),
    )
    .await
    .unwrap();
}

// ---- custody settings -----------------------------------------------------------------------------

fn schedule(backup: bool) -> RotationPolicy {
    RotationPolicy {
        interval_days: 30,
        overlap_days: 0,
        rotation_time: "00:00:00".into(),
        time_zone: "UTC".into(),
        backup_enabled: backup,
        backup_location: backup.then(|| "/tmp/custos-test-backups".into()),
        backup_recipient: backup
            .then(|| "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into()),
    }
}

#[tokio::test]
async fn keys_rotate_sets_the_schedule_but_only_admin_sets_backups() {
    let h = Harness::new().await;
    let k = name("k");
    h.km.create_key(&system(), k.clone(), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    let rotator = h.caller(&["keys:rotate"]).await;
    h.km.set_rotation_policy(&rotator, &k, Some(schedule(false)))
        .await
        .unwrap();
    let err =
        h.km.set_rotation_policy(&rotator, &k, Some(schedule(true)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    assert_eq!(
        h.km.rotation_policy(&system(), &k).await.unwrap(),
        Some(schedule(false))
    );
    let admin = h.caller(&["admin"]).await;
    h.km.set_rotation_policy(&admin, &k, Some(schedule(true)))
        .await
        .unwrap();
    // Turning backups off, or removing the policy, is a custody change too.
    let err =
        h.km.set_rotation_policy(&rotator, &k, None)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    let mut shorter = schedule(true);
    shorter.interval_days = 7;
    h.km.set_rotation_policy(&rotator, &k, Some(shorter))
        .await
        .unwrap();
    let changes: Vec<_> = h
        .records()
        .await
        .into_iter()
        .filter(|r| r.entry.operation == "rotation_policy")
        .map(|r| r.entry.outcome)
        .collect();
    assert_eq!(
        changes,
        [
            Outcome::Ok,
            Outcome::Denied,
            Outcome::Ok,
            Outcome::Denied,
            Outcome::Ok
        ]
    );
}

// ---- BIP32 keys -----------------------------------------------------------------------------------

#[tokio::test]
async fn a_bip32_key_signs_derived_children_inside_the_provider() {
    let h = Harness::new().await;
    let mut chain_code = None;
    let (record, key) =
        h.km.generate_client_key(
            &system(),
            Operation::CreateKey,
            "test:user",
            NewClientKey::Bip32,
            BTreeMap::new(),
            |public, code| {
                chain_code = code;
                Ok(hex::encode(public.as_bytes()))
            },
        )
        .await
        .unwrap();
    assert_eq!(key.kind, custos_types::KeyKind::Bip32);
    assert_eq!(record.key.as_ref(), Some(&key.name));
    let chain_code = chain_code.expect("a BIP32 master has a chain code");
    // The child m/0/1 by public derivation (BIP32 CKDpub) with an independent implementation: the
    // `bip32` crate's public key derivation from the master public key and chain code.
    let master = key.current().unwrap().public_key.clone();
    let xpub = bip32_public(&master, chain_code);
    let child = xpub
        .derive_child(bip32::ChildNumber(0))
        .unwrap()
        .derive_child(bip32::ChildNumber(1))
        .unwrap();
    let child_key = custos_types::PublicKey::from_bytes(
        Algorithm::Secp256k1,
        child.public_key().to_encoded_point(false).as_bytes(),
    )
    .unwrap();
    let digest = [9u8; 32];
    let signature =
        h.km.sign_derived(
            &system(),
            Operation::Sign(key.name.as_str()),
            &key.name,
            &[0, 1],
            &digest,
            &child_key,
        )
        .await
        .unwrap();
    child_key
        .verify(
            &SignPayload::Digest(digest),
            signature.raw(),
            SignatureFormat::Raw,
        )
        .unwrap();
    // A path that does not lead to the named key is refused; no signature is released.
    let err =
        h.km.sign_derived(
            &system(),
            Operation::Sign(key.name.as_str()),
            &key.name,
            &[HARDENED, 1],
            &digest,
            &child_key,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_public_key");
    assert_eq!(
        h.km.rotate(&system(), &key.name).await.unwrap_err().code(),
        "not_supported"
    );
}

fn bip32_public(master: &custos_types::PublicKey, chain_code: [u8; 32]) -> bip32::XPub {
    let point = k256::EncodedPoint::from_bytes(master.as_bytes()).unwrap();
    let compressed = k256::PublicKey::from_sec1_bytes(point.as_bytes())
        .unwrap()
        .to_encoded_point(true);
    let mut key_bytes = [0u8; 33];
    key_bytes.copy_from_slice(compressed.as_bytes());
    bip32::XPub::try_from(bip32::ExtendedKey {
        prefix: bip32::Prefix::XPUB,
        attrs: bip32::ExtendedKeyAttrs {
            depth: 0,
            parent_fingerprint: [0; 4],
            child_number: bip32::ChildNumber(0),
            chain_code,
        },
        key_bytes,
    })
    .unwrap()
}

// ---- imports --------------------------------------------------------------------------------------

fn wrap(public_der: &[u8], material: &[u8]) -> Vec<u8> {
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
    let key =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public_der).unwrap()).unwrap();
    let mut out = vec![0u8; key.ciphertext_size()];
    key.encrypt(&OAEP_SHA256_MGF1SHA256, material, &mut out, None)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn imported_material_becomes_the_key_and_signs() {
    let h = Harness::new().await;
    h.km.create_import(&system(), "imp", Algorithm::Ed25519, "from outside".into())
        .await
        .unwrap();
    let params =
        h.km.import_parameters(&system(), "imp", WrappingAlgorithm::OaepSha256, 2048)
            .await
            .unwrap();
    let private = PrivateKey::generate(Algorithm::Ed25519);
    let der = private.to_pkcs8_der().unwrap();
    let key =
        h.km.import_material(
            &system(),
            "imp",
            &params.token,
            &wrap(&params.public_key_der, &der),
        )
        .await
        .unwrap();
    assert_eq!(key.current().unwrap().public_key, private.public_key());
    assert_eq!(key.description, "from outside");
    assert!(h.km.import_record("imp").await.unwrap().is_none());
    h.km.sign(&system(), &name("imp"), &message(b"x"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_a_failed_import_ends_the_token() {
    let h = Harness::new().await;
    h.km.create_import(&system(), "imp", Algorithm::P256, String::new())
        .await
        .unwrap();
    let params =
        h.km.import_parameters(&system(), "imp", WrappingAlgorithm::OaepSha256, 2048)
            .await
            .unwrap();
    let err =
        h.km.import_material(&system(), "imp", &[0; 32], b"x")
            .await
            .unwrap_err();
    assert_eq!(err.code(), "invalid_import_token");
    let err =
        h.km.import_material(
            &system(),
            "imp",
            &params.token,
            &wrap(&params.public_key_der, b"not a key"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "incorrect_key_material");
    let good = PrivateKey::generate(Algorithm::P256)
        .to_pkcs8_der()
        .unwrap();
    let err =
        h.km.import_material(
            &system(),
            "imp",
            &params.token,
            &wrap(&params.public_key_der, &good),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "invalid_import_token",
        "the token was used up by the failed attempt"
    );
}

#[tokio::test]
async fn an_import_token_expires_by_the_clock() {
    let h = Harness::new().await;
    h.km.create_import(&system(), "imp", Algorithm::P256, String::new())
        .await
        .unwrap();
    let params =
        h.km.import_parameters(&system(), "imp", WrappingAlgorithm::OaepSha1, 2048)
            .await
            .unwrap();
    h.clock.advance(jiff::SignedDuration::from_hours(25));
    let err =
        h.km.import_material(&system(), "imp", &params.token, b"x")
            .await
            .unwrap_err();
    assert_eq!(err.code(), "import_token_expired");
}

// ---- sealing keys and aliases ---------------------------------------------------------------------

#[tokio::test]
async fn a_sealing_key_opens_only_its_own_ciphertext_in_its_context_while_enabled() {
    let h = Harness::new().await;
    h.km.create_sealing_key(&system(), "s1", String::new())
        .await
        .unwrap();
    h.km.create_sealing_key(&system(), "s2", String::new())
        .await
        .unwrap();
    let sealed =
        h.km.seal_with(&system(), "s1", b"data key", b"ctx")
            .await
            .unwrap();
    assert_eq!(
        h.km.unseal_with(&system(), "s1", &sealed, b"ctx")
            .await
            .unwrap()
            .as_slice(),
        b"data key"
    );
    for (id, context) in [("s1", &b"other"[..]), ("s2", b"ctx")] {
        let err =
            h.km.unseal_with(&system(), id, &sealed, context)
                .await
                .unwrap_err();
        assert_eq!(err.code(), "invalid_payload", "{id}");
    }
    h.km.set_state_by_id(&system(), "s1", KeyStateChange::Disable)
        .await
        .unwrap();
    assert_eq!(
        h.km.unseal_with(&system(), "s1", &sealed, b"ctx")
            .await
            .unwrap_err()
            .code(),
        "key_disabled"
    );
    let signer = h.caller(&["sign:s2"]).await;
    assert_eq!(
        h.km.seal_with(&signer, "s1", b"x", b"")
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
}

#[tokio::test]
async fn aliases_name_existing_keys_only() {
    let h = Harness::new().await;
    h.km.create_key(&system(), name("k"), Algorithm::Ed25519, vec![])
        .await
        .unwrap();
    h.km.create_alias(&system(), "alias/k", "k").await.unwrap();
    assert_eq!(
        h.km.create_alias(&system(), "alias/k", "k")
            .await
            .unwrap_err()
            .code(),
        "alias_exists"
    );
    assert_eq!(
        h.km.create_alias(&system(), "alias/x", "nope")
            .await
            .unwrap_err()
            .code(),
        "key_not_found"
    );
    assert_eq!(
        h.km.alias_target("alias/k").await.unwrap().as_deref(),
        Some("k")
    );
    h.km.delete_alias(&system(), "alias/k").await.unwrap();
    assert_eq!(
        h.km.delete_alias(&system(), "alias/k")
            .await
            .unwrap_err()
            .code(),
        "alias_not_found"
    );
}

// ---- client-named keys ----------------------------------------------------------------------------

#[tokio::test]
async fn a_stored_client_key_signs_through_the_provider_and_is_retrieved_only_as_asked() {
    let h = Harness::new().await;
    let secret = [7u8; 32];
    let prv = hex::encode(secret);
    let record =
        h.km.store_client_key(
            &system(),
            Operation::CreateKey,
            "test:user",
            "pub-1",
            prv.as_bytes(),
            b"ctx",
            Some(ClientKeyFormat::Hex(Algorithm::Secp256k1)),
            BTreeMap::from([("coin".to_owned(), "eth".to_owned())]),
        )
        .await
        .unwrap();
    let key =
        h.km.client_signing_key(
            &system(),
            Operation::CreateKey,
            &record,
            b"ctx",
            ClientKeyFormat::Hex(Algorithm::Secp256k1),
        )
        .await
        .unwrap();
    assert_eq!(
        key.current().unwrap().public_key,
        PrivateKey::from_secret(Algorithm::Secp256k1, &secret)
            .unwrap()
            .public_key()
    );
    let err =
        h.km.store_client_key(
            &system(),
            Operation::CreateKey,
            "test:user",
            "pub-1",
            b"x",
            b"ctx",
            None,
            BTreeMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_exists");
    let caller = h.caller(&["admin"]).await;
    let err =
        h.km.retrieve_client_key(&caller, Operation::CreateKey, &record, b"ctx", true)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "client_certificate_required");
    let opened =
        h.km.retrieve_client_key(&caller, Operation::CreateKey, &record, b"ctx", false)
            .await
            .unwrap();
    assert_eq!(opened.as_slice(), prv.as_bytes());
    // The audit log names the key, never its material.
    assert!(!serde_json::to_string(&h.records().await)
        .unwrap()
        .contains(&prv));
}

// ---- invariants -----------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Every batch result lines up with its input, and bad items fail alone.
    #[test]
    fn batch_results_line_up(lengths in proptest::collection::vec(0usize..40, 1..20)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let h = Harness::new().await;
            let key = h.km.create_key(&system(), name("b"), Algorithm::Ed25519, vec![]).await.unwrap();
            let items: Vec<_> = lengths.iter().map(|&n| message(&vec![n as u8; n])).collect();
            let results = Arc::clone(&h.km).sign_batch(&system(), &name("b"), &items).await.unwrap();
            prop_assert_eq!(results.len(), items.len());
            for (n, result) in lengths.iter().zip(results) {
                if *n == 0 {
                    prop_assert_eq!(result.unwrap_err().code(), "empty_message");
                } else {
                    let payload = SignPayload::Message(vec![*n as u8; *n]);
                    let sig = result.unwrap().signature;
                    prop_assert!(key.versions[0].public_key.verify(&payload, sig.raw(), SignatureFormat::Raw).is_ok());
                }
            }
            Ok(())
        })?;
    }

    /// However many rotations, exactly one version is current, in memory and in the store.
    #[test]
    fn exactly_one_current_version(rotations in 0usize..6) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let h = Harness::new().await;
            h.km.create_key(&system(), name("r"), Algorithm::P256, vec![]).await.unwrap();
            for _ in 0..rotations {
                h.km.rotate(&system(), &name("r")).await.unwrap();
            }
            let stored = h.store.get_key(&name("r")).await.unwrap().unwrap();
            let in_memory = h.km.key(&system(), &name("r")).await.unwrap();
            prop_assert_eq!(&stored, in_memory.as_ref());
            let current = stored.versions.iter().filter(|v| v.state == VersionState::Current).count();
            prop_assert_eq!(current, 1);
            prop_assert_eq!(stored.versions.len(), rotations + 1);
            Ok(())
        })?;
    }
}

//! The conformance suite every store implementation runs from its own tests.
//!
//! Each check takes a fresh, empty store from the caller's factory and exercises one role trait: keys and
//! versions (one current version, numbering, key states), tokens, sealed keys, settings, leases, the audit
//! log (chain continuity, queries, paging both ways, checkpoints), watermarks (compare-and-set), aliases,
//! sealing keys, imports and client-named keys. [`run`] runs them all; SQLite runs it today, and every
//! other store (PostgreSQL) runs the same suite.
//!
//! This is test code that ships behind the `conformance` feature: a failed expectation panics with a
//! description, exactly as an assertion in a test does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use custos_audit::{Actor, AuditEntry, AuditQuery, AuditRecord, Checkpoint, Head, Outcome};
use custos_types::{
    Algorithm, AliasRecord, ClientKeyRecord, ImportRecord, ImportWrapping, KeyHandle, KeyKind,
    KeyName, KeyRecord, KeyState, KeyVersion, Location, ProviderName, PublicKey, SealedKey,
    SealingKeyRecord, Timestamp, TokenRecord, VersionRecord, VersionState, Watermark,
};

use crate::{Store, StoreError};

/// The RFC 8032 test 1 public key: any valid point will do for storage tests.
const PUBLIC: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn provider() -> ProviderName {
    ProviderName::new("soft").unwrap()
}

/// A version of an Ed25519 key in the soft provider.
pub fn version(n: u32, state: VersionState) -> VersionRecord {
    VersionRecord {
        version: KeyVersion(n),
        state,
        public_key: PublicKey::from_bytes(Algorithm::Ed25519, &PUBLIC).unwrap(),
        created_at: at(i64::from(n)),
        locations: vec![Location {
            provider: provider(),
            handle: KeyHandle::new(format!("h{n}")),
        }],
    }
}

/// An Ed25519 key with one current version.
pub fn key(name: &str) -> KeyRecord {
    KeyRecord::new(
        KeyName::new(name).unwrap(),
        Algorithm::Ed25519,
        vec![provider()],
        at(0),
        vec![version(1, VersionState::Current)],
    )
}

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    keys_and_versions(fresh().await).await;
    two_current_versions_are_refused(fresh().await).await;
    key_state_description_and_tags(fresh().await).await;
    tokens(fresh().await).await;
    sealed_keys(fresh().await).await;
    settings(fresh().await).await;
    leases(fresh().await).await;
    audit_log(fresh().await).await;
    audit_paging(fresh().await).await;
    watermarks(fresh().await).await;
    aliases(fresh().await).await;
    sealing_keys(fresh().await).await;
    imports(fresh().await).await;
    client_keys(fresh().await).await;
}

/// Keys, rotation by `add_current_version`, version states.
pub async fn keys_and_versions(store: Arc<dyn Store>) {
    store.create_key(&key("a")).await.unwrap();
    assert!(
        matches!(
            store.create_key(&key("a")).await,
            Err(StoreError::Conflict(_))
        ),
        "a second key of the same name must conflict"
    );
    let name = KeyName::new("a").unwrap();
    store
        .add_current_version(
            &name,
            &version(2, VersionState::Current),
            VersionState::Enabled,
        )
        .await
        .unwrap();
    assert!(
        store
            .add_current_version(
                &name,
                &version(2, VersionState::Current),
                VersionState::Enabled
            )
            .await
            .is_err(),
        "adding a version number twice must fail"
    );
    assert!(
        store
            .add_current_version(
                &name,
                &version(4, VersionState::Current),
                VersionState::Enabled
            )
            .await
            .is_err(),
        "skipping a version number must fail"
    );
    store
        .set_version_state(&name, KeyVersion(1), VersionState::Disabled)
        .await
        .unwrap();
    assert!(
        store
            .set_version_state(&name, KeyVersion(2), VersionState::Disabled)
            .await
            .is_err(),
        "the current version's state changes only by rotation"
    );
    let loaded = store.get_key(&name).await.unwrap().unwrap();
    assert_eq!(loaded.versions.len(), 2);
    assert_eq!(loaded.current().unwrap().version, KeyVersion(2));
    assert_eq!(
        loaded.version(KeyVersion(1)).unwrap().state,
        VersionState::Disabled
    );
    assert_eq!(loaded.versions[1].locations[0].handle.as_str(), "h2");
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
    assert!(store
        .get_key(&KeyName::new("b").unwrap())
        .await
        .unwrap()
        .is_none());
}

/// The store itself refuses two current versions, and a failed create leaves nothing behind.
pub async fn two_current_versions_are_refused(store: Arc<dyn Store>) {
    let mut k = key("two");
    k.versions.push(version(2, VersionState::Current));
    assert!(matches!(
        store.create_key(&k).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.list_keys().await.unwrap().is_empty());
}

/// Key state, kind, description and tags are kept; destroying destroys every version.
pub async fn key_state_description_and_tags(store: Arc<dyn Store>) {
    let mut k = key("s");
    k.kind = KeyKind::Bip32;
    k.description = "hot wallet".into();
    store.create_key(&k).await.unwrap();
    let name = KeyName::new("s").unwrap();
    let loaded = store.get_key(&name).await.unwrap().unwrap();
    assert_eq!(
        (loaded.kind, loaded.state, loaded.description.as_str()),
        (KeyKind::Bip32, KeyState::Enabled, "hot wallet")
    );
    for state in [
        KeyState::Disabled,
        KeyState::PendingDeletion { at: at(7 * 86_400) },
        KeyState::Enabled,
    ] {
        store.set_key_state(&name, state).await.unwrap();
        assert_eq!(store.get_key(&name).await.unwrap().unwrap().state, state);
    }
    store.set_key_description(&name, "cold").await.unwrap();
    assert_eq!(
        store.get_key(&name).await.unwrap().unwrap().description,
        "cold"
    );
    assert!(matches!(
        store
            .set_key_state(&KeyName::new("none").unwrap(), KeyState::Disabled)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let set = BTreeMap::from([
        ("team".to_owned(), "ops".to_owned()),
        ("env".into(), "prod".into()),
    ]);
    store.update_tags("s", &set, &[]).await.unwrap();
    store
        .update_tags(
            "s",
            &BTreeMap::from([("env".to_owned(), "dev".to_owned())]),
            &["team".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(
        store.tags("s").await.unwrap(),
        BTreeMap::from([("env".to_owned(), "dev".to_owned())])
    );
    store
        .set_key_state(&name, KeyState::Destroyed)
        .await
        .unwrap();
    let destroyed = store.get_key(&name).await.unwrap().unwrap();
    assert_eq!(destroyed.state, KeyState::Destroyed);
    assert!(destroyed
        .versions
        .iter()
        .all(|v| v.state == VersionState::Destroyed));
}

/// Tokens: create once, revoke, last use.
pub async fn tokens(store: Arc<dyn Store>) {
    let token = TokenRecord {
        id: "t1".into(),
        name: "root".into(),
        secret_hash: [9; 32],
        scopes: vec!["admin".into()],
        created_at: at(0),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    store.create_token(&token).await.unwrap();
    assert!(store.create_token(&token).await.is_err());
    assert_eq!(store.list_tokens().await.unwrap(), vec![token.clone()]);
    store.touch_tokens(&[("t1".into(), at(5))]).await.unwrap();
    store.revoke_token("t1", at(6)).await.unwrap();
    store.revoke_token("t1", at(9)).await.unwrap();
    assert!(matches!(
        store.revoke_token("nope", at(6)).await,
        Err(StoreError::NotFound(_))
    ));
    let stored = store.list_tokens().await.unwrap().remove(0);
    assert_eq!(
        (stored.revoked_at, stored.last_used_at),
        (Some(at(6)), Some(at(5))),
        "a second revocation keeps the first time"
    );
}

/// Sealed key material: stored once, listed and found by handle.
pub async fn sealed_keys(store: Arc<dyn Store>) {
    let sealed = SealedKey {
        provider: provider(),
        handle: KeyHandle::new("h"),
        algorithm: Algorithm::P256,
        nonce: vec![1; 24],
        ciphertext: vec![2; 48],
        created_at: at(0),
    };
    store.put_sealed_key(&sealed).await.unwrap();
    assert!(store.put_sealed_key(&sealed).await.is_err());
    assert_eq!(
        store.list_sealed_keys(&provider()).await.unwrap(),
        vec![sealed.clone()]
    );
    assert_eq!(
        store
            .get_sealed_key(&provider(), &KeyHandle::new("h"))
            .await
            .unwrap(),
        Some(sealed)
    );
    assert_eq!(
        store
            .get_sealed_key(&provider(), &KeyHandle::new("other"))
            .await
            .unwrap(),
        None
    );
}

/// Settings: write-once, replace, prefix listing, delete.
pub async fn settings(store: Arc<dyn Store>) {
    assert!(store.put_setting_if_absent("x", b"1").await.unwrap());
    assert!(!store.put_setting_if_absent("x", b"2").await.unwrap());
    assert_eq!(store.get_setting("x").await.unwrap().unwrap(), b"1");
    store.put_setting("x", b"3").await.unwrap();
    store.put_setting("x:a", b"4").await.unwrap();
    store.put_setting("y", b"5").await.unwrap();
    assert_eq!(
        store.list_settings("x").await.unwrap(),
        vec![
            ("x".to_owned(), b"3".to_vec()),
            ("x:a".to_owned(), b"4".to_vec())
        ]
    );
    store.delete_setting("x").await.unwrap();
    store.delete_setting("never-there").await.unwrap();
    assert_eq!(store.get_setting("x").await.unwrap(), None);
}

/// Leases: one holder at a time until expiry; the holder renews.
pub async fn leases(store: Arc<dyn Store>) {
    assert!(store
        .acquire_lease("rot", "a", at(0), at(30))
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("rot", "b", at(10), at(40))
        .await
        .unwrap());
    assert!(store
        .acquire_lease("rot", "a", at(10), at(40))
        .await
        .unwrap());
    assert!(store
        .acquire_lease("rot", "b", at(40), at(70))
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("rot", "a", at(41), at(71))
        .await
        .unwrap());
}

fn audit_batch(head: Head, count: u32) -> (Vec<AuditRecord>, Head) {
    let mut head = head;
    let mut batch = Vec::new();
    for i in 0..count {
        let mut entry = AuditEntry::new(if i % 2 == 0 { "sign" } else { "verify" });
        entry.key = Some(format!("k{}", i % 2));
        entry.actor = Some(Actor {
            token_id: Some("t1".into()),
            token_name: Some("ci".into()),
            cert_fingerprint: None,
        });
        entry.outcome = if i == 4 { Outcome::Error } else { Outcome::Ok };
        let record = AuditRecord::seal(head, at(i64::from(i)), entry);
        head = record.head().unwrap();
        batch.push(record);
    }
    (batch, head)
}

fn query(f: impl FnOnce(&mut AuditQuery)) -> AuditQuery {
    let mut query = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    f(&mut query);
    query
}

/// The audit log: append in one transaction, the head, filters, checkpoints.
pub async fn audit_log(store: Arc<dyn Store>) {
    assert_eq!(store.audit_head().await.unwrap(), Head::GENESIS);
    let (batch, head) = audit_batch(Head::GENESIS, 5);
    store.append_audit(&batch).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap(), head);
    assert!(
        store.append_audit(&batch[3..]).await.is_err(),
        "a batch that reuses a sequence number is refused"
    );
    assert_eq!(
        store.audit_head().await.unwrap(),
        head,
        "and changes nothing"
    );
    assert_eq!(store.query_audit(&query(|_| {})).await.unwrap(), batch);
    let count = |q: AuditQuery| {
        let store = Arc::clone(&store);
        async move { store.query_audit(&q).await.unwrap().len() }
    };
    assert_eq!(count(query(|q| q.operation = Some("sign".into()))).await, 3);
    assert_eq!(count(query(|q| q.key = Some("k1".into()))).await, 2);
    assert_eq!(count(query(|q| q.actor = Some("ci".into()))).await, 5);
    assert_eq!(count(query(|q| q.actor = Some("t1".into()))).await, 5);
    assert_eq!(count(query(|q| q.outcome = Some("error".into()))).await, 1);
    assert_eq!(count(query(|q| q.from = Some(at(3)))).await, 2);
    assert_eq!(count(query(|q| q.to = Some(at(1)))).await, 2);
    let checkpoint = Checkpoint {
        seq: 5,
        head_hash: hex(&head.hash),
        time: at(9),
        signature: "00".into(),
    };
    store.put_checkpoint(&checkpoint).await.unwrap();
    store.put_checkpoint(&checkpoint).await.unwrap();
    assert_eq!(store.checkpoints(0, 10).await.unwrap(), vec![checkpoint]);
    assert!(store.checkpoints(6, 10).await.unwrap().is_empty());
}

/// Paging: oldest first after a sequence, newest first before one.
pub async fn audit_paging(store: Arc<dyn Store>) {
    let (batch, _) = audit_batch(Head::GENESIS, 5);
    store.append_audit(&batch).await.unwrap();
    let seqs = |records: Vec<AuditRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
    let page = store
        .query_audit(&query(|q| {
            q.after_seq = 2;
            q.limit = 2
        }))
        .await
        .unwrap();
    assert_eq!(seqs(page), [3, 4]);
    let newest = store
        .query_audit(&query(|q| {
            q.newest_first = true;
            q.limit = 2
        }))
        .await
        .unwrap();
    assert_eq!(seqs(newest), [5, 4]);
    let before = store
        .query_audit(&query(|q| {
            q.newest_first = true;
            q.after_seq = 4;
            q.limit = 2
        }))
        .await
        .unwrap();
    assert_eq!(seqs(before), [3, 2]);
}

fn mark(sequence: u64, byte: u8) -> Watermark {
    Watermark {
        sequence,
        payload_hash: [byte; 32],
        version: KeyVersion(1),
        provider: provider(),
        signature: vec![byte; 64],
    }
}

/// Watermarks: each mark is a compare-and-set; a batch applies in order.
pub async fn watermarks(store: Arc<dyn Store>) {
    store.create_key(&key("w")).await.unwrap();
    let w = KeyName::new("w").unwrap();
    assert_eq!(store.watermark(&w).await.unwrap(), None);
    let answers = store
        .advance_watermarks(&[
            (w.clone(), mark(5, 1)),
            (w.clone(), mark(5, 2)),
            (w.clone(), mark(7, 3)),
            (w.clone(), mark(6, 4)),
        ])
        .await
        .unwrap();
    assert_eq!(answers, [true, false, true, false]);
    assert_eq!(store.watermark(&w).await.unwrap(), Some(mark(7, 3)));
    let beyond = store
        .advance_watermarks(&[(w.clone(), mark(u64::MAX, 9))])
        .await
        .unwrap();
    assert_eq!(
        beyond,
        [false],
        "a sequence above i64::MAX is never written"
    );
}

/// Aliases: unique names, retargeting, deletion.
pub async fn aliases(store: Arc<dyn Store>) {
    let alias = AliasRecord {
        name: "alias/pay".into(),
        target: "k1".into(),
        created_at: at(0),
        updated_at: at(0),
    };
    store.create_alias(&alias).await.unwrap();
    assert!(matches!(
        store.create_alias(&alias).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .retarget_alias("alias/pay", "k2", at(5))
        .await
        .unwrap();
    let got = store.get_alias("alias/pay").await.unwrap().unwrap();
    assert_eq!((got.target.as_str(), got.updated_at), ("k2", at(5)));
    assert!(matches!(
        store.retarget_alias("alias/none", "k2", at(5)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_aliases().await.unwrap().len(), 1);
    store.delete_alias("alias/pay").await.unwrap();
    assert!(store.get_alias("alias/pay").await.unwrap().is_none());
    assert!(matches!(
        store.delete_alias("alias/pay").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Sealing keys: unique ids and states.
pub async fn sealing_keys(store: Arc<dyn Store>) {
    let key = SealingKeyRecord {
        id: "s1".into(),
        provider: provider(),
        state: KeyState::Enabled,
        description: "data keys".into(),
        created_at: at(0),
    };
    store.create_sealing_key(&key).await.unwrap();
    assert!(store.create_sealing_key(&key).await.is_err());
    let pending = KeyState::PendingDeletion { at: at(100) };
    store.set_sealing_key_state("s1", pending).await.unwrap();
    assert_eq!(
        store.get_sealing_key("s1").await.unwrap().unwrap().state,
        pending
    );
    assert_eq!(store.list_sealing_keys().await.unwrap().len(), 1);
    assert!(store.get_sealing_key("s2").await.unwrap().is_none());
}

/// Imports: the wrapping key comes and goes; completing replaces the import by a key in one step.
pub async fn imports(store: Arc<dyn Store>) {
    let import = ImportRecord {
        id: "i1".into(),
        algorithm: Algorithm::Ed25519,
        description: "imported".into(),
        state: KeyState::Enabled,
        created_at: at(0),
        wrapping: None,
    };
    store.create_import(&import).await.unwrap();
    assert!(store.create_import(&import).await.is_err());
    let wrapping = ImportWrapping {
        sealed_private_key: vec![7; 40],
        token_hash: [3; 32],
        algorithm: "RSAES_OAEP_SHA_256".into(),
        valid_to: at(86_400),
    };
    store
        .set_import_wrapping("i1", Some(&wrapping))
        .await
        .unwrap();
    assert_eq!(
        store.get_import("i1").await.unwrap().unwrap().wrapping,
        Some(wrapping)
    );
    store.set_import_wrapping("i1", None).await.unwrap();
    assert_eq!(
        store.get_import("i1").await.unwrap().unwrap().wrapping,
        None
    );
    store
        .set_import_state("i1", KeyState::Disabled)
        .await
        .unwrap();
    assert_eq!(store.list_imports().await.unwrap().len(), 1);
    store.complete_import("i1", &key("i1")).await.unwrap();
    assert!(store.get_import("i1").await.unwrap().is_none());
    assert!(store
        .get_key(&KeyName::new("i1").unwrap())
        .await
        .unwrap()
        .is_some());
    assert!(matches!(
        store.complete_import("i1", &key("i2")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .get_key(&KeyName::new("i2").unwrap())
            .await
            .unwrap()
            .is_none(),
        "a failed completion creates no key"
    );
}

/// Client-named keys: unique per namespace, linked to a Custos key.
pub async fn client_keys(store: Arc<dyn Store>) {
    store.create_key(&key("c")).await.unwrap();
    let record = ClientKeyRecord {
        namespace: "bitgo:user".into(),
        id: "xpub661".into(),
        key: None,
        sealed: Some(vec![1, 2, 3]),
        attributes: BTreeMap::from([("coin".to_owned(), "btc".to_owned())]),
        created_at: at(0),
    };
    store.create_client_key(&record).await.unwrap();
    assert!(matches!(
        store.create_client_key(&record).await,
        Err(StoreError::Conflict(_))
    ));
    let other_namespace = ClientKeyRecord {
        namespace: "bitgo:backup".into(),
        ..record.clone()
    };
    store.create_client_key(&other_namespace).await.unwrap();
    store
        .link_client_key("bitgo:user", "xpub661", &KeyName::new("c").unwrap())
        .await
        .unwrap();
    let got = store
        .get_client_key("bitgo:user", "xpub661")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, Some(KeyName::new("c").unwrap()));
    assert_eq!(got.sealed, record.sealed);
    assert_eq!(got.attributes, record.attributes);
    assert!(store
        .get_client_key("bitgo:user", "other")
        .await
        .unwrap()
        .is_none());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

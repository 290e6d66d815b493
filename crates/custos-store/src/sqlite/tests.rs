//! Tests of what is SQLite's own: the conformance suite on a real file, files and modes, reopening,
//! closing, and the migrations (including the move of old settings into their tables).

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use custos_types::{KeyKind, KeyName, KeyState, KeyVersion, VersionState};

use super::*;
use crate::conformance;
use crate::{AliasStore, ClientKeyStore, ImportStore, KeyStore, SealingKeyStore, SettingStore};

#[tokio::test]
async fn sqlite_passes_the_store_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run(|| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir.path()).unwrap());
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn the_database_is_private_and_survives_reopening() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    assert!(matches!(
        SqliteStore::open(&dir),
        Err(StoreError::NotInitialised(_))
    ));
    let store = SqliteStore::create(&dir).unwrap();
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "the data directory is not group or world readable"
    );
    store.create_key(&conformance::key("a")).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&dir).unwrap();
    let loaded = store
        .get_key(&KeyName::new("a").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded, conformance::key("a"));
}

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::create(dir.path()).unwrap();
    store.ping().await.unwrap();
    store.close();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::create(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(SqliteStore::FILE_NAME)).unwrap();
    conn.pragma_update(None, "user_version", 99u32).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

/// A data directory written before migration 5, with the KMS-compatible and BitGo APIs' settings, opens
/// with every setting moved into its table.
#[tokio::test]
async fn migration_5_moves_the_compatibility_settings_into_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SqliteStore::FILE_NAME);
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for (_, sql) in &MIGRATIONS[..4] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 4u32).unwrap();
        let public = hex::encode(
            conformance::version(1, VersionState::Current)
                .public_key
                .as_bytes(),
        );
        tx.execute_batch(&format!(
            "INSERT INTO keys VALUES ('k1', 'ed25519', '[\"soft\"]', '2026-01-01T00:00:00Z');
             INSERT INTO key_versions VALUES ('k1', 1, 'current', x'{public}', '2026-01-01T00:00:00Z');
             INSERT INTO key_locations VALUES ('k1', 1, 0, 'soft', 'h1');
             INSERT INTO keys VALUES ('k2', 'ed25519', '[\"soft\"]', '2026-01-01T00:00:00Z');
             INSERT INTO key_versions VALUES ('k2', 1, 'current', x'{public}', '2026-01-01T00:00:00Z');
             INSERT INTO key_locations VALUES ('k2', 1, 0, 'soft', 'h2');"
        ))
        .unwrap();
        let settings: &[(&str, &str)] = &[
            (
                "kms_state:k1",
                r#"{"state":"Disabled","description":"old","deletion_date":null,"created":"2026-01-01T00:00:00Z"}"#,
            ),
            (
                "kms_state:k2",
                r#"{"state":"PendingDeletion","description":"","deletion_date":"2026-02-01T00:00:00Z","created":null}"#,
            ),
            ("kms_symmetric:s1", "soft"),
            (
                "kms_state:s1",
                r#"{"state":"Enabled","description":"sym","deletion_date":null,"created":"2026-01-02T00:00:00Z"}"#,
            ),
            ("kms_pending:i1", "ECC_NIST_P256"),
            (
                "kms_import:i1",
                r#"{"sealed_wrapping_key":"0102","token_hash":"0303030303030303030303030303030303030303030303030303030303030303","algorithm":"RSAES_OAEP_SHA_256","valid_to":"2026-01-03T00:00:00Z"}"#,
            ),
            ("kms_alias:alias/pay", "k1"),
            (
                "bitgo_key:user:abc",
                r#"{"pub":"xpub1","coin":"btc","source":"user","type":"independent","sealed":"0a0b","created_at":"2026-01-04T00:00:00Z"}"#,
            ),
            (
                "bitgo_generated:backup:def",
                r#"{"pub":"02ab","coin":"eth","source":"backup","type":"tss","key":"k2"}"#,
            ),
            ("rotation_policy:k1", "{}"),
        ];
        for (name, value) in settings {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)",
                rusqlite::params![name, value.as_bytes()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let k1 = store
        .get_key(&KeyName::new("k1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (k1.state, k1.kind, k1.description.as_str()),
        (KeyState::Disabled, KeyKind::Standard, "old")
    );
    let k2 = store
        .get_key(&KeyName::new("k2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        k2.state,
        KeyState::PendingDeletion {
            at: "2026-02-01T00:00:00Z".parse().unwrap()
        }
    );
    assert_eq!(k2.current().unwrap().version, KeyVersion(1));
    let sym = store.get_sealing_key("s1").await.unwrap().unwrap();
    assert_eq!(
        (sym.state, sym.description.as_str(), sym.provider.as_str()),
        (KeyState::Enabled, "sym", "soft")
    );
    let import = store.get_import("i1").await.unwrap().unwrap();
    assert_eq!(import.algorithm, custos_types::Algorithm::P256);
    let wrapping = import.wrapping.unwrap();
    assert_eq!(
        (wrapping.sealed_private_key, wrapping.token_hash),
        (vec![1, 2], [3; 32])
    );
    assert_eq!(
        store.get_alias("alias/pay").await.unwrap().unwrap().target,
        "k1"
    );
    let stored = store
        .get_client_key("bitgo:user", "xpub1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.sealed, stored.key), (Some(vec![0x0a, 0x0b]), None));
    assert_eq!(stored.attributes["coin"], "btc");
    let generated = store
        .get_client_key("bitgo:backup", "02ab")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(generated.key, Some(KeyName::new("k2").unwrap()));
    assert_eq!(generated.attributes["type"], "tss");
    let left: Vec<String> = store
        .list_settings("")
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        left,
        ["rotation_policy:k1"],
        "only settings that stay settings are left"
    );
}

//! A test kit for every crate that tests against the key manager: a key manager over a real SQLite file and
//! a real software keystore in a temporary directory, a manual clock, and token-bearing request contexts.
//!
//! This is test code that ships behind the `testkit` feature: a failed expectation panics with a
//! description, exactly as an assertion in a test does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::{
    Access, AuditConfig, AuditLog, KeyManager, ManualClock, Metrics, RequestContext, Scope, Scopes,
    Settings, SignInput, SignRequest,
};
use custos_provider::KeyProvider;
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{KeyName, ProviderName, Timestamp};
use secrecy::{ExposeSecret as _, SecretString};

/// A key manager, its store, tokens and clock, in a temporary data directory.
#[derive(Debug)]
pub struct Harness {
    pub km: Arc<KeyManager>,
    pub access: Arc<Access>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

/// The time every harness starts at.
pub fn start() -> Timestamp {
    "2026-12-01T09:00:00Z".parse().unwrap()
}

impl Harness {
    /// A fresh data directory.
    pub async fn new() -> Harness {
        Harness::with(Settings::default()).await
    }

    /// A fresh data directory with these settings (its clock is replaced by the harness's).
    pub async fn with(settings: Settings) -> Harness {
        Harness::with_scopes(settings, Scopes::default()).await
    }

    /// [`Harness::with`], with tokens that may also carry `scopes`' extensions.
    pub async fn with_scopes(settings: Settings, scopes: Scopes) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start()));
        let (km, access, store) = open(dir.path(), settings, scopes, Arc::clone(&clock)).await;
        Harness {
            km,
            access,
            store,
            clock,
            dir,
        }
    }

    /// The same data directory opened again, as after a restart.
    pub async fn reopen(self) -> Harness {
        let Harness {
            dir,
            clock,
            km,
            access,
            store,
        } = self;
        let scopes = access.scopes().clone();
        drop((km, access, store));
        let (km, access, store) =
            open(dir.path(), Settings::default(), scopes, Arc::clone(&clock)).await;
        Harness {
            km,
            access,
            store,
            clock,
            dir,
        }
    }

    /// A request context carrying a new token with `scopes`.
    pub async fn caller(&self, scopes: &[&str]) -> RequestContext {
        let scopes: Vec<Scope> = scopes
            .iter()
            .map(|s| self.access.scopes().parse(s).unwrap())
            .collect();
        let issued = self
            .access
            .issue(&system(), "test caller", &scopes, None)
            .await
            .unwrap();
        RequestContext {
            request_id: "test".into(),
            principal: Some(
                self.access
                    .authenticate(issued.token.expose_secret())
                    .unwrap(),
            ),
            ..RequestContext::default()
        }
    }

    /// Every audit record so far.
    pub async fn records(&self) -> Vec<custos_audit::AuditRecord> {
        self.km
            .audit()
            .query(&custos_audit::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

async fn open(
    dir: &std::path::Path,
    settings: Settings,
    scopes: Scopes,
    clock: Arc<ManualClock>,
) -> (Arc<KeyManager>, Arc<Access>, Arc<dyn Store>) {
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
    let access = Arc::new(
        Access::load(
            Arc::clone(&store),
            Arc::clone(&audit),
            scopes,
            clock.clone(),
        )
        .await
        .unwrap(),
    );
    let km = KeyManager::open(
        Arc::clone(&store),
        vec![soft],
        ProviderName::new("soft").unwrap(),
        audit,
        metrics,
        Settings { clock, ..settings },
    )
    .await
    .unwrap();
    (Arc::new(km), access, store)
}

/// Custos acting on its own.
pub fn system() -> RequestContext {
    RequestContext::system("test")
}

/// A checked key name.
pub fn name(n: &str) -> KeyName {
    KeyName::new(n).unwrap()
}

/// A request to sign a message with the current version.
pub fn message(m: &[u8]) -> SignRequest {
    SignRequest::new(SignInput::Message(m.to_vec()))
}

/// A request to sign a message at a sequence.
pub fn at(sequence: u64, m: &[u8]) -> SignRequest {
    SignRequest {
        sequence: Some(sequence),
        ..message(m)
    }
}

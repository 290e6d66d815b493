//! The PKCS#11 provider against a real SoftHSM2 token in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use custos_provider::{conformance, KeyProvider, ProviderError};
use custos_provider_pkcs11::{Pkcs11Config, Pkcs11Provider, TokenRef};
use custos_types::{
    Algorithm, HashAlgorithm, KeyHandle, ProviderName, SignPayload, SignatureFormat,
};
use secrecy::SecretString;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "5678";
const TOKENS: [&str; 4] = [
    "custos-test",
    "custos-pin",
    "custos-adopt",
    "custos-relogin",
];

struct SoftHsm {
    _dir: tempfile::TempDir,
}

/// One test at a time against the module: under CPU contention SoftHSM2 2.6.1 intermittently reports
/// sessions as logged out (or CKR_GENERAL_ERROR) when several tests drive different tokens of one module
/// concurrently. Each test still drives its provider from many tasks at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private SoftHSM2 token store, set up once per test process before the module is loaded.
fn softhsm() -> &'static SoftHsm {
    static FIXTURE: OnceLock<SoftHsm> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is not installed: run scripts/test (it installs softhsm2)"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // Set before the first use of the module in this process; SoftHSM2 reads it in C_Initialize.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in TOKENS {
            let out = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--so-pin",
                    "1234",
                    "--pin",
                    PIN,
                ])
                .output()
                .expect("softhsm2-util");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        SoftHsm { _dir: dir }
    })
}

fn provider(label: &str, pin: &str) -> Result<Pkcs11Provider, ProviderError> {
    softhsm();
    Pkcs11Provider::new(
        ProviderName::new("hsm").unwrap(),
        Pkcs11Config {
            module: PathBuf::from(MODULE),
            token: TokenRef::Label(label.to_owned()),
            pin: SecretString::from(pin.to_owned()),
            sessions: 4,
        },
    )
}

fn pkcs11_tool(token: &str, args: &[&str]) -> String {
    softhsm();
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            token,
            "--login",
            "--pin",
            PIN,
        ])
        .args(args)
        .output()
        .expect("pkcs11-tool (Debian opensc) must be installed: scripts/test installs it");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_softhsm2() {
    let _serial = SERIAL.lock().await;
    let hsm = provider("custos-test", PIN).unwrap();
    // A token that is not plugged in: the provider exists, and says it is unavailable.
    let absent = provider("custos-absent", PIN).unwrap();
    conformance::run(conformance::Harness::new(Arc::new(hsm), Arc::new(absent))).await;
}

#[tokio::test]
async fn wrong_pin_is_a_clear_refusal() {
    let _serial = SERIAL.lock().await;
    let err = provider("custos-pin", "0000").unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("login failed") && message.contains("custos-pin"),
        "{message}"
    );
    assert!(
        !message.contains("0000"),
        "the PIN leaked into the error: {message}"
    );
}

#[tokio::test]
async fn keys_survive_restart_and_are_visible_and_non_extractable() {
    let _serial = SERIAL.lock().await;
    let hsm = provider("custos-test", PIN).unwrap();
    let key = hsm
        .generate(Algorithm::P256, "custos:visible:v1")
        .await
        .unwrap();
    drop(hsm);
    let hsm = provider("custos-test", PIN).unwrap();
    assert_eq!(hsm.public_key(&key.handle).await.unwrap(), key.public_key);
    let digest = HashAlgorithm::Sha256.digest(b"after restart");
    let payload = SignPayload::Digest(digest);
    let raw = hsm
        .sign(&key.handle, Algorithm::P256, &payload)
        .await
        .unwrap();
    key.public_key
        .verify(&payload, &raw, SignatureFormat::Raw)
        .unwrap();

    let listing = pkcs11_tool("custos-test", &["--list-objects", "--type", "privkey"]);
    let entry = listing
        .split("Private Key Object")
        .find(|block| block.contains("custos:visible:v1"))
        .unwrap_or_else(|| panic!("pkcs11-tool does not show the key: {listing}"));
    assert!(
        entry.contains("never extractable") && entry.contains("sensitive"),
        "{entry}"
    );
    assert!(
        entry.contains(key.handle.as_str()),
        "the CKA_ID is the handle: {entry}"
    );
}

#[tokio::test]
async fn adopts_existing_token_keys_by_label_and_id() {
    let _serial = SERIAL.lock().await;
    pkcs11_tool(
        "custos-adopt",
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "legacy-key",
            "--id",
            "0a0b0c",
        ],
    );
    let hsm = provider("custos-adopt", PIN).unwrap();
    let by_label = hsm
        .adopt("label:legacy-key", Algorithm::P256)
        .await
        .unwrap();
    assert_eq!(by_label.handle, KeyHandle::new("0a0b0c"));
    let by_id = hsm.adopt("id:0a0b0c", Algorithm::P256).await.unwrap();
    assert_eq!(by_id.public_key, by_label.public_key);
    let payload = SignPayload::Digest([9; 32]);
    let raw = hsm
        .sign(&by_id.handle, Algorithm::P256, &payload)
        .await
        .unwrap();
    by_id
        .public_key
        .verify(&payload, &raw, SignatureFormat::Raw)
        .unwrap();
    // The wrong algorithm, a missing label and a malformed reference are refused.
    assert!(matches!(
        hsm.adopt("label:legacy-key", Algorithm::Ed25519).await,
        Err(ProviderError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        hsm.adopt("label:nothing", Algorithm::P256).await,
        Err(ProviderError::UnknownKey(_))
    ));
    assert!(hsm.adopt("legacy-key", Algorithm::P256).await.is_err());
}

#[tokio::test]
async fn a_lost_login_is_reopened_without_failing_the_caller() {
    let _serial = SERIAL.lock().await;
    let hsm = provider("custos-test", PIN).unwrap();
    let key = hsm
        .generate(Algorithm::Ed25519, "custos:relogin:v1")
        .await
        .unwrap();
    let payload = SignPayload::Message(b"before".to_vec());
    hsm.sign(&key.handle, Algorithm::Ed25519, &payload)
        .await
        .unwrap();
    // Log the whole application out of the token behind the provider's back, as an HSM session
    // timeout does: every pooled session is now logged out.
    let ctx = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "custos-relogin")
        .unwrap();
    ctx.open_ro_session(slot).unwrap().logout().unwrap();
    let payload = SignPayload::Message(b"after".to_vec());
    let raw = hsm
        .sign(&key.handle, Algorithm::Ed25519, &payload)
        .await
        .unwrap();
    key.public_key
        .verify(&payload, &raw, SignatureFormat::Raw)
        .unwrap();
}

//! API integration tests: the real server on 127.0.0.1:0, spoken to over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::sync::Arc;

use custos_api::{b64, KeyView, SignBatchResponse, SignResponse};
use custos_core::{
    Access, AuditConfig, AuditLog, KeyManager, Limits, Metrics, RequestContext, Scope, Scopes,
    Settings, SystemClock,
};
use custos_http::{AppState, HttpOptions, TlsFiles};
use custos_provider::conformance::openssl_verify;
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, HashAlgorithm, ProviderName, SignPayload};
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{json, Value};

struct Server {
    base: String,
    admin: String,
    access: Arc<Access>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

const MAX_BODY: usize = 64 * 1024;

async fn start_with(tls: Option<(TlsFiles, reqwest::Certificate)>) -> Server {
    start_with_options(
        tls,
        HttpOptions {
            max_body_bytes: MAX_BODY,
            ..HttpOptions::default()
        },
    )
    .await
}

/// Like `start_with`, with the server's audit log wired into the TLS reloader and returned.
async fn start_with_audit(
    tls: Option<(TlsFiles, reqwest::Certificate)>,
) -> (Server, Arc<AuditLog>) {
    let slot = Arc::new(std::sync::Mutex::new(None));
    let options = HttpOptions {
        max_body_bytes: MAX_BODY,
        ..HttpOptions::default()
    };
    let server = start_inner(tls, options, Some(Arc::clone(&slot))).await;
    let audit = slot.lock().unwrap().take().unwrap();
    (server, audit)
}

async fn start_with_options(
    tls: Option<(TlsFiles, reqwest::Certificate)>,
    options: HttpOptions,
) -> Server {
    start_inner(tls, options, None).await
}

async fn start_inner(
    tls: Option<(TlsFiles, reqwest::Certificate)>,
    options: HttpOptions,
    audit_out: Option<Arc<std::sync::Mutex<Option<Arc<AuditLog>>>>>,
) -> Server {
    custos_http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir.path()).unwrap());
    let soft = SoftProvider::open(
        ProviderName::new("soft").unwrap(),
        Arc::clone(&store),
        &SecretString::from("test password".to_owned()),
        KdfParams::default(),
    )
    .await
    .unwrap();
    let limits = Limits {
        max_message_bytes: 1024,
        max_batch_items: 10,
        ..Limits::default()
    };
    let soft: Arc<dyn custos_provider::KeyProvider> = Arc::new(soft);
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::clone(&soft),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await
    .unwrap();
    let keys = KeyManager::open(
        Arc::clone(&store),
        vec![soft],
        ProviderName::new("soft").unwrap(),
        Arc::clone(&audit),
        metrics,
        Settings {
            limits,
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    let access = Arc::new(
        Access::load(
            store,
            Arc::clone(&audit),
            Scopes::default(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap(),
    );
    let tls = tls.map(|(mut files, ca)| {
        files.audit = Some(Arc::clone(&audit));
        (files, ca)
    });
    if let Some(out) = audit_out {
        *out.lock().unwrap() = Some(Arc::clone(&audit));
    }
    let admin = access
        .issue(
            &RequestContext::system("test"),
            "root",
            &[Scope::Admin],
            None,
        )
        .await
        .unwrap();
    let app = custos_server::router(AppState::new(Arc::new(keys), Arc::clone(&access)), options);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (scheme, files, http) = match tls {
        None => ("http", None, reqwest::Client::new()),
        Some((files, ca)) => (
            "https",
            Some(files),
            reqwest::Client::builder()
                .add_root_certificate(ca)
                .build()
                .unwrap(),
        ),
    };
    tokio::spawn(custos_http::serve(listener, app, files, async {
        let _ = stopped.await;
    }));
    let host = if scheme == "https" {
        "localhost"
    } else {
        "127.0.0.1"
    };
    Server {
        base: format!("{scheme}://{host}:{port}"),
        admin: admin.token.expose_secret().to_owned(),
        access,
        http,
        _dir: dir,
        _stop: stop,
    }
}

async fn start() -> Server {
    start_with(None).await
}

impl Server {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            path,
            Some(&self.admin),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn token(&self, scopes: &[&str]) -> String {
        let scopes: Vec<_> = scopes
            .iter()
            .map(|s| Scopes::default().parse(s).unwrap())
            .collect();
        self.access
            .issue(&RequestContext::system("test"), "t", &scopes, None)
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_owned()
    }

    async fn create(&self, name: &str, algorithm: &str) -> KeyView {
        let (status, body) = self
            .post("/v1/keys", json!({"name": name, "algorithm": algorithm}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        serde_json::from_value(body).unwrap()
    }
}

fn pem_of(key: &KeyView, version: usize) -> String {
    key.versions[version].public_key.pem.clone()
}

#[tokio::test]
async fn health_and_the_openapi_document_answer_without_a_token() {
    let s = start().await;
    let (status, health) = s.call("GET", "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["providers"][0]["kind"], "soft");

    let (status, doc) = s.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/health",
        "/v1/keys",
        "/v1/keys/{name}",
        "/v1/keys/{name}/sign",
        "/v1/keys/{name}/sign-batch",
        "/v1/keys/{name}/verify",
        "/v1/keys/{name}/rotate",
        "/v1/tokens",
        "/v1/openapi.json",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "openapi.json lacks {path}"
        );
    }
}

#[tokio::test]
async fn keys_are_created_listed_and_shown_with_every_public_key_form() {
    let s = start().await;
    let ed = s.create("seq-1", "ed25519").await;
    let k1 = s.create("eth-1", "secp256k1").await;
    let p = s.create("p-1", "p256").await;
    assert_eq!(ed.current_version, 1);
    assert!(ed.versions[0].public_key.address.as_ref().unwrap().len() >= 32);
    let eth = k1.versions[0].public_key.address.clone().unwrap();
    assert!(
        eth.starts_with("0x") && eth.len() == 42 && eth.chars().any(|c| c.is_ascii_uppercase())
    );
    assert!(p.versions[0].public_key.address.is_none());
    assert_eq!(
        b64::decode(&k1.versions[0].public_key.raw).unwrap().len(),
        65
    );
    assert_eq!(ed.versions[0].locations[0].provider, "soft");

    let (status, list) = s.call("GET", "/v1/keys", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eth-1", "p-1", "seq-1"]);
    let (status, shown) = s.call("GET", "/v1/keys/p-1", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown["versions"][0]["public_key"]["pem"],
        p.versions[0].public_key.pem
    );
}

#[tokio::test]
async fn ed25519_signatures_verify_under_openssl_and_over_http() {
    let s = start().await;
    let ed = s.create("seq-1", "ed25519").await;
    // Ed25519 over HTTP, checked by OpenSSL.
    let message = b"block 1".to_vec();
    let (status, body) = s
        .post(
            "/v1/keys/seq-1/sign",
            json!({"message": b64::encode(&message)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signed: SignResponse = serde_json::from_value(body).unwrap();
    assert_eq!(
        (signed.version, signed.provider.as_str(), signed.recovery_id),
        (1, "soft", None)
    );
    let sig = b64::decode(&signed.signature).unwrap();
    openssl_verify(
        &pem_of(&ed, 0),
        Algorithm::Ed25519,
        &SignPayload::Message(message.clone()),
        &sig,
        true,
    );
    let (_, verified) = s
        .post(
            "/v1/keys/seq-1/verify",
            json!({"message": b64::encode(&message), "signature": signed.signature}),
        )
        .await;
    assert_eq!(verified, json!({"valid": true, "version": 1}));
    let (_, verified) = s
        .post(
            "/v1/keys/seq-1/verify",
            json!({"message": b64::encode(b"block 2"), "signature": signed.signature}),
        )
        .await;
    assert_eq!(verified, json!({"valid": false}));
}

#[tokio::test]
async fn ecdsa_signatures_in_every_hash_and_format_verify_under_openssl() {
    let s = start().await;
    let k1 = s.create("eth-1", "secp256k1").await;
    let p = s.create("p-1", "p256").await;
    let message = b"block 1".to_vec();
    // ECDSA: SHA-256 default, keccak256, a given digest, DER; each checked by OpenSSL.
    for (key, alg) in [(&k1, Algorithm::Secp256k1), (&p, Algorithm::P256)] {
        for (hash, request) in [
            (
                HashAlgorithm::Sha256,
                json!({"message": b64::encode(&message), "format": "der"}),
            ),
            (
                HashAlgorithm::Keccak256,
                json!({"message": b64::encode(&message), "hash": "keccak256", "format": "der"}),
            ),
            (
                HashAlgorithm::Sha256,
                json!({"digest": b64::encode(HashAlgorithm::Sha256.digest(&message)), "format": "der"}),
            ),
        ] {
            let (status, body) = s
                .post(&format!("/v1/keys/{}/sign", key.name), request)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let signed: SignResponse = serde_json::from_value(body).unwrap();
            assert!(signed.recovery_id.unwrap() <= 1);
            let der = b64::decode(&signed.signature).unwrap();
            openssl_verify(
                &pem_of(key, 0),
                alg,
                &SignPayload::Digest(hash.digest(&message)),
                &der,
                true,
            );
        }
        let (_, raw) = s
            .post(
                &format!("/v1/keys/{}/sign", key.name),
                json!({"message": b64::encode(&message)}),
            )
            .await;
        let raw_sig = b64::decode(raw["signature"].as_str().unwrap()).unwrap();
        assert_eq!(raw_sig.len(), 64);
        // Low s: the upper half of the order never appears (s < n/2 means its top bit is clear for both curves).
        assert!(raw_sig[32] < 0x80);
        let (_, verified) = s
            .post(
                &format!("/v1/keys/{}/verify", key.name),
                json!({"message": b64::encode(&message), "signature": raw["signature"]}),
            )
            .await;
        assert_eq!(verified["valid"], true);
    }
}

#[tokio::test]
async fn a_batch_answers_in_input_order_and_bad_items_fail_alone() {
    let s = start().await;
    let ed = s.create("seq-1", "ed25519").await;
    // Batch: results in input order, bad items fail alone.
    let items = json!({"items": [
        {"message": b64::encode(b"a")},
        {"message": "not base64!"},
        {"message": ""},
        {"message": b64::encode(b"d")},
    ]});
    let (status, body) = s.post("/v1/keys/seq-1/sign-batch", items).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let batch: SignBatchResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(batch.results.len(), 4);
    assert_eq!(body["results"][1]["error"]["code"], "invalid_base64");
    assert_eq!(body["results"][2]["error"]["code"], "empty_message");
    for (i, msg) in [(0, b"a"), (3, b"d")] {
        let sig = b64::decode(body["results"][i]["signature"].as_str().unwrap()).unwrap();
        openssl_verify(
            &pem_of(&ed, 0),
            Algorithm::Ed25519,
            &SignPayload::Message(msg.to_vec()),
            &sig,
            true,
        );
    }
}

#[tokio::test]
async fn a_rotated_key_signs_with_version_2_and_version_1_on_request() {
    let s = start().await;
    s.create("seq-1", "ed25519").await;
    let message = b"block 1".to_vec();
    let (_, first) = s
        .post(
            "/v1/keys/seq-1/sign",
            json!({"message": b64::encode(&message)}),
        )
        .await;
    let signed: SignResponse = serde_json::from_value(first).unwrap();
    // Rotate: version 2 is current, version 1 stays enabled and still signs by version.
    let (status, rotated) = s.post("/v1/keys/seq-1/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["current_version"], 2);
    assert_eq!(rotated["versions"][0]["state"], "enabled");
    assert_eq!(rotated["versions"][1]["state"], "current");
    let (_, v2) = s
        .post(
            "/v1/keys/seq-1/sign",
            json!({"message": b64::encode(&message)}),
        )
        .await;
    assert_eq!(v2["version"], 2);
    let (_, v1) = s
        .post(
            "/v1/keys/seq-1/sign",
            json!({"message": b64::encode(&message), "version": 1}),
        )
        .await;
    assert_eq!(v1["version"], 1);
    assert_eq!(
        v1["signature"], signed.signature,
        "Ed25519 is deterministic: the same key signs the same bytes"
    );
}

#[tokio::test]
async fn a_scoped_token_signs_only_what_its_pattern_allows() {
    let s = start().await;
    s.create("seq-1", "ed25519").await;
    s.create("p-1", "p256").await;
    // Tokens: a scoped token signs only what its pattern allows.
    let (status, token) = s
        .post(
            "/v1/tokens",
            json!({"name": "ci", "scopes": ["sign:seq-*"], "expires_in_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let scoped = token["token"].as_str().unwrap();
    let body = json!({"message": b64::encode(b"x")})
        .to_string()
        .into_bytes();
    let (status, _) = s
        .call(
            "POST",
            "/v1/keys/seq-1/sign",
            Some(scoped),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = s
        .call("POST", "/v1/keys/p-1/sign", Some(scoped), Some(body))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
}

#[tokio::test]
async fn a_disabled_or_deleted_key_refuses_and_only_admin_schedules_deletion() {
    let s = start().await;
    s.create("k", "ed25519").await;
    let sign = json!({"message": b64::encode(b"x")});
    let (status, key) = s.post("/v1/keys/k/disable", json!({})).await;
    assert_eq!(
        (status, key["state"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
    let (status, err) = s.post("/v1/keys/k/sign", sign.clone()).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("key_disabled"))
    );
    s.post("/v1/keys/k/enable", json!({})).await;
    let rotator = s.token(&["keys:rotate"]).await;
    let (status, err) = s
        .call(
            "POST",
            "/v1/keys/k/schedule-deletion",
            Some(&rotator),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, key) = s
        .post(
            "/v1/keys/k/schedule-deletion",
            json!({"pending_window_days": 7}),
        )
        .await;
    assert_eq!(
        (status, key["state"].as_str()),
        (StatusCode::OK, Some("pending_deletion"))
    );
    assert!(key["deletion_date"].is_string());
    let (status, err) = s.post("/v1/keys/k/sign", sign.clone()).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("key_pending_deletion"))
    );
    let (status, err) = s.post("/v1/keys/k/enable", json!({})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_key_state"))
    );
    let (status, err) = s
        .post(
            "/v1/keys/k/schedule-deletion",
            json!({"pending_window_days": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let (status, key) = s.post("/v1/keys/k/cancel-deletion", json!({})).await;
    assert_eq!(
        (status, key["state"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
}

/// Method, path, token, body, expected status, expected code.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn bad_inputs_get_their_status_and_code() {
    let s = start().await;
    s.create("ed", "ed25519").await;
    s.create("ec", "secp256k1").await;
    let signer = s.token(&["sign:ed"]).await;
    let reader = s.token(&["keys:read"]).await;
    let admin = s.admin.clone();
    let m = |bytes: &[u8]| b64::encode(bytes);
    let big_message = json!({"message": m(&vec![1; 1025])}).to_string();
    let huge_body = "x".repeat(MAX_BODY + 1);
    let batch_of_11 = json!({"items": vec![json!({"message": m(b"x")}); 11]}).to_string();
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{"message":"%%%"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_base64",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{"message":"eA==","extra":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{"message":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_message",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            big_message,
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            huge_body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            format!(r#"{{"digest":"{}"}}"#, m(&[0; 32])),
            StatusCode::BAD_REQUEST,
            "not_supported",
        ),
        (
            "POST",
            "/v1/keys/ec/sign",
            Some(&admin),
            format!(r#"{{"digest":"{}"}}"#, m(&[0; 31])),
            StatusCode::BAD_REQUEST,
            "invalid_digest",
        ),
        (
            "POST",
            "/v1/keys/ec/sign",
            Some(&admin),
            r#"{"message":"eA==","hash":"md5"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_hash",
        ),
        (
            "POST",
            "/v1/keys/ec/sign",
            Some(&admin),
            r#"{"message":"eA==","format":"pem"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_format",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{"message":"eA==","format":"der"}"#.into(),
            StatusCode::BAD_REQUEST,
            "not_supported",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&admin),
            r#"{"message":"eA==","version":7}"#.into(),
            StatusCode::NOT_FOUND,
            "version_not_found",
        ),
        (
            "POST",
            "/v1/keys/nope/sign",
            Some(&admin),
            r#"{"message":"eA=="}"#.into(),
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            "POST",
            "/v1/keys/bad%20name/sign",
            Some(&admin),
            r#"{"message":"eA=="}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/keys/ed/verify",
            Some(&admin),
            r#"{"message":"eA==","signature":"AAAA"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "POST",
            "/v1/keys/ed/sign-batch",
            Some(&admin),
            batch_of_11,
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
        ),
        (
            "POST",
            "/v1/keys/ed/sign-batch",
            Some(&admin),
            r#"{"items":[]}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&admin),
            r#"{"name":"ed","algorithm":"ed25519"}"#.into(),
            StatusCode::CONFLICT,
            "key_exists",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&admin),
            r#"{"name":"-bad","algorithm":"ed25519"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&admin),
            format!(r#"{{"name":"{}","algorithm":"ed25519"}}"#, "a".repeat(65)),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&admin),
            r#"{"name":"x","algorithm":"rsa"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_algorithm",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&admin),
            r#"{"name":"x","algorithm":"ed25519","provider":"hsm"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_provider",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(&admin),
            r#"{"name":"t","scopes":["root"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            None,
            r#"{"message":"eA=="}"#.into(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some("cst_0011223344556677_00"),
            r#"{"message":"eA=="}"#.into(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "GET",
            "/v1/keys",
            Some("not-a-token"),
            String::new(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "POST",
            "/v1/keys/ec/sign",
            Some(&signer),
            r#"{"message":"eA=="}"#.into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/keys/ed/verify",
            Some(&signer),
            r#"{"message":"eA==","signature":"AA=="}"#.into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/keys/ed/sign",
            Some(&reader),
            "{not json".into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/keys",
            Some(&reader),
            r#"{"name":"x","algorithm":"ed25519"}"#.into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/keys/ed/rotate",
            Some(&reader),
            String::new(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(&reader),
            r#"{"name":"t","scopes":["admin"]}"#.into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "GET",
            "/v1/keys",
            Some(&signer),
            String::new(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "GET",
            "/v1/nothing",
            Some(&admin),
            String::new(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/keys/ed",
            Some(&admin),
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let shown = body.chars().take(60).collect::<String>();
        let body = (!body.is_empty() || method == "POST").then(|| body.into_bytes());
        let (got, answer) = s.call(method, path, token, body).await;
        assert_eq!(got, status, "{method} {path} {shown}: {answer}");
        assert_eq!(
            answer["error"]["code"], code,
            "{method} {path} {shown}: {answer}"
        );
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A failed creation leaves nothing behind.
    let (_, list) = s.call("GET", "/v1/keys", Some(&admin), None).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
}

/// A throw-away CA and a server certificate for localhost signed by it, made with the openssl CLI;
/// plus any number of self-signed client certificates (pinned by fingerprint, so no CA is needed).
fn make_pki(dir: &std::path::Path, clients: &[&str]) {
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=custos-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    for client in clients {
        let (key, cert) = (format!("{client}.key"), format!("{client}.pem"));
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={client}"),
                    "-keyout",
                    &key,
                    "-out",
                    &cert,
                ],
            ]
            .concat(),
        );
    }
}

fn client_identity(dir: &std::path::Path, name: &str) -> reqwest::Identity {
    let mut pem = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
    pem.extend(std::fs::read(dir.join(format!("{name}.key"))).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}

fn client_fingerprint(dir: &std::path::Path, name: &str) -> String {
    use rustls_pki_types::pem::PemObject as _;
    let der =
        rustls_pki_types::CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).unwrap();
    custos_http::fingerprint(der.as_ref())
}

#[tokio::test]
async fn tls_from_cert_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), &[]);
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let files = TlsFiles::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let s = start_with(Some((files, ca))).await;
    assert!(s.base.starts_with("https://"));
    s.create("tls-key", "ed25519").await;
    let (status, body) = s
        .post(
            "/v1/keys/tls-key/sign",
            json!({"message": b64::encode(b"over tls")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Plain HTTP to the TLS port does not get an answer.
    let plain = s.base.replace("https://localhost", "http://127.0.0.1");
    assert!(reqwest::get(format!("{plain}/v1/health"))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true));
}

#[tokio::test]
async fn mutual_tls_accepts_only_pinned_client_certificates_and_reloads_the_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), &["client-a", "client-b"]);
    let (fp_a, fp_b) = (
        client_fingerprint(dir.path(), "client-a"),
        client_fingerprint(dir.path(), "client-b"),
    );
    let allowlist = dir.path().join("clients.txt");
    std::fs::write(&allowlist, format!("# operators\n{fp_a}  # client-a\n")).unwrap();
    let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let ca = || reqwest::Certificate::from_pem(&ca_pem).unwrap();
    let mut files = TlsFiles::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
    files.client_allowlist = Some(allowlist.clone());
    files.reload_interval = std::time::Duration::from_millis(100);
    let (s, audit) = start_with_audit(Some((files, ca()))).await;
    let client = |name: Option<&str>| {
        let mut builder = reqwest::Client::builder().add_root_certificate(ca());
        if let Some(name) = name {
            builder = builder.identity(client_identity(dir.path(), name));
        }
        builder.build().unwrap()
    };
    let get = |c: reqwest::Client| {
        let (url, token) = (format!("{}/v1/keys", s.base), s.admin.clone());
        async move {
            c.get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    assert_eq!(get(client(Some("client-a"))).await.unwrap(), StatusCode::OK);
    assert!(
        get(client(Some("client-b"))).await.is_err(),
        "a certificate off the allowlist got in"
    );
    assert!(
        get(client(None)).await.is_err(),
        "a client without a certificate got in"
    );
    // The client certificate is in the audit record of what it did.
    let a = client(Some("client-a"));
    let response = a
        .post(format!("{}/v1/keys", s.base))
        .bearer_auth(&s.admin)
        .body(json!({"name": "mtls-key", "algorithm": "ed25519"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let page: Value = a
        .get(format!(
            "{}/v1/audit?operation=key_create&key=mtls-key",
            s.base
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["records"][0]["actor"]["cert_fingerprint"],
        fp_a.as_str(),
        "{page}"
    );

    // Swap the allowlist while the server runs: b is let in, a is shut out.
    std::fs::write(
        &allowlist,
        format!(
            "{}\n",
            fp_b.to_uppercase()
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":")
        ),
    )
    .unwrap();
    let mut switched = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if get(client(Some("client-b"))).await.is_ok() {
            switched = true;
            break;
        }
    }
    assert!(switched, "the allowlist was not reloaded");
    assert!(
        get(client(Some("client-a"))).await.is_err(),
        "a removed certificate still gets in"
    );
    // The change of configuration is in the audit log.
    let query = custos_audit::AuditQuery {
        operation: Some("config_reload".into()),
        limit: 10,
        ..Default::default()
    };
    let reloads = audit.query(&query).await.unwrap();
    assert!(
        reloads.iter().any(|r| r
            .entry
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("client_allowlist"))),
        "{reloads:?}"
    );
}

/// Parses Prometheus text with a real parser (Python's prometheus_client) and returns the metric names.
fn parse_prometheus(text: &str) -> Vec<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn audit_metrics_and_token_lifecycle() {
    let s = start().await;
    s.create("seq-1", "ed25519").await;
    s.create("other", "ed25519").await;
    let signer = s.token(&["sign:seq-*"]).await;
    let auditor = s.token(&["audit:read"]).await;
    let body = || {
        Some(
            json!({"message": b64::encode(b"block")})
                .to_string()
                .into_bytes(),
        )
    };

    // A signature's audit record carries the request id the response reported.
    let response = s
        .http
        .post(format!("{}/v1/keys/seq-1/sign", s.base))
        .bearer_auth(&signer)
        .body(body().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Refusals are audited too: a bad token, and a token outside its scope.
    let (status, _) = s
        .call("POST", "/v1/keys/seq-1/sign", Some("cst_00_00"), body())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s
        .call("POST", "/v1/keys/other/sign", Some(&signer), body())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // audit:read can read the log; a signing token cannot.
    let (status, _) = s.call("GET", "/v1/audit", Some(&signer), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, page) = s
        .call(
            "GET",
            "/v1/audit?operation=sign&key=seq-1",
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{page}");
    assert_eq!(records[0]["request_id"], request_id);
    assert_eq!(records[0]["outcome"], "ok");
    assert_eq!(records[0]["actor"]["token_name"], "t");
    assert!(records[0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(records[0]["version"], 1);
    let (_, denied) = s
        .call("GET", "/v1/audit?outcome=denied", Some(&auditor), None)
        .await;
    let ops: Vec<_> = denied["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ops.contains(&"auth_failure".to_owned()) && ops.contains(&"sign".to_owned()),
        "{denied}"
    );
    // Paging and filters.
    let (_, first) = s
        .call("GET", "/v1/audit?limit=2", Some(&auditor), None)
        .await;
    let next = first["next_after"].as_u64().unwrap();
    let (_, second) = s
        .call(
            "GET",
            &format!("/v1/audit?limit=2&after={next}"),
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(second["records"][0]["seq"].as_u64().unwrap(), next + 1);
    let (status, bad) = s
        .call("GET", "/v1/audit?from=yesterday", Some(&auditor), None)
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // The export verifies offline under the published key; the server agrees.
    let (_, key) = s.call("GET", "/v1/audit/key", None, None).await;
    let public = custos_types::PublicKey::from_bytes(
        Algorithm::Ed25519,
        &b64::decode(key["public_key"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let export = s
        .http
        .get(format!("{}/v1/audit/export", s.base))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let report = custos_audit::verify_export(&export, &public).unwrap();
    assert!(report.records >= 8, "{report:?}");
    let (_, verified) = s
        .call("GET", "/v1/audit/verify", Some(&auditor), None)
        .await;
    assert_eq!(verified["valid"], true, "{verified}");

    // Tokens: listed with last use; revocation works at once.
    let (_, tokens) = s.call("GET", "/v1/tokens", Some(&s.admin), None).await;
    let listed = tokens["tokens"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|t| t.get("token").is_none() && !t.to_string().contains("cst_")),
        "{tokens}"
    );
    let signer_id = signer.split('_').nth(1).unwrap();
    let entry = listed.iter().find(|t| t["id"] == signer_id).unwrap();
    assert!(entry["last_used_at"].is_string(), "{entry}");
    let (status, revoked) = s
        .call(
            "POST",
            &format!("/v1/tokens/{signer_id}/revoke"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = s
        .call("POST", "/v1/keys/seq-1/sign", Some(&signer), body())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, err) = s
        .call("POST", "/v1/tokens/nope/revoke", Some(&s.admin), None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("token_not_found")),
        "an unknown token id is 404, like an unknown key"
    );

    // Metrics parse with a real Prometheus parser and name what operators alert on.
    let (_, health) = s.call("GET", "/v1/health", None, None).await;
    assert_eq!(health["audit"], "ok");
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names = parse_prometheus(&text);
    for expected in [
        "custos_http_requests",
        "custos_http_requests_in_flight",
        "custos_sign_duration_seconds",
        "custos_provider_up",
        "custos_provider_circuit_state",
        "custos_failovers",
        "custos_emergency_signatures",
        "custos_signature_cache_hits",
        "custos_rotations",
        "custos_audit_write_duration_seconds",
        "custos_audit_write_failures",
        "custos_audit_up",
        "custos_auth_failures",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        text.contains(r#"custos_http_requests_total{route="/v1/keys/{name}/sign",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"custos_sign_duration_seconds_count{algorithm="ed25519",provider="soft"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn per_token_rate_limit_answers_429_with_retry_after() {
    let options = HttpOptions {
        per_token_rate: Some((1, 3)),
        ..HttpOptions::default()
    };
    let s = start_with_options(None, options).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let response = s
            .http
            .get(format!("{}/v1/keys", s.base))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "{statuses:?}"
    );
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    // Another token has its own budget.
    let other = s.token(&["keys:read"]).await;
    let (status, _) = s.call("GET", "/v1/keys", Some(&other), None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Opens a raw connection and sends a POST's headers but not its body, so the request stays in flight.
async fn stalled_request(s: &Server) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let addr = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/keys/k/sign HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n",
        s.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn too_many_requests_in_flight_are_refused_not_queued() {
    let options = HttpOptions {
        max_concurrent_requests: 1,
        ..HttpOptions::default()
    };
    let s = start_with_options(None, options).await;
    let stalled = stalled_request(&s).await;
    // The stalled request holds the only slot; the next one is refused at once.
    let mut refused = None;
    for _ in 0..100 {
        let response = s
            .http
            .get(format!("{}/v1/health", s.base))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some((
                response.headers().get("retry-after").is_some(),
                response.json::<Value>().await.unwrap(),
            ));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (retry_after, body) = refused.expect("a request over the limit was not refused");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(retry_after);
    drop(stalled);
    // With the slot free again, requests are served.
    let mut served = false;
    for _ in 0..100 {
        if s.http
            .get(format!("{}/v1/health", s.base))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_answered_503_timeout() {
    use tokio::io::AsyncReadExt as _;
    let options = HttpOptions {
        request_timeout: std::time::Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let s = start_with_options(None, options).await;
    let mut stalled = stalled_request(&s).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stalled.read(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
}

#[tokio::test]
async fn every_route_checks_its_scope() {
    let s = start().await;
    s.create("k", "ed25519").await;
    let signature = {
        let (_, signed) = s
            .post("/v1/keys/k/sign", json!({"message": b64::encode(b"m")}))
            .await;
        signed["signature"].as_str().unwrap().to_owned()
    };
    let all = [
        "keys:create",
        "keys:read",
        "keys:rotate",
        "audit:read",
        "sign:k",
        "verify:k",
    ];
    // (method, path, body, the scope that allows it; "admin" means only admin does)
    let mut n = 0;
    let routes: Vec<(&str, String, Option<Value>, &str)> = vec![
        (
            "POST",
            "/v1/keys".into(),
            Some(json!({"name": "x", "algorithm": "ed25519"})),
            "keys:create",
        ),
        ("GET", "/v1/keys".into(), None, "keys:read"),
        ("GET", "/v1/keys/k".into(), None, "keys:read"),
        (
            "POST",
            "/v1/keys/k/sign".into(),
            Some(json!({"message": b64::encode(b"m")})),
            "sign:k",
        ),
        (
            "POST",
            "/v1/keys/k/sign-batch".into(),
            Some(json!({"items": [{"message": b64::encode(b"m")}]})),
            "sign:k",
        ),
        (
            "POST",
            "/v1/keys/k/verify".into(),
            Some(json!({"message": b64::encode(b"m"), "signature": signature})),
            "verify:k",
        ),
        ("POST", "/v1/keys/k/rotate".into(), None, "keys:rotate"),
        ("GET", "/v1/providers".into(), None, "keys:read"),
        ("GET", "/v1/keys/k/rotation".into(), None, "keys:read"),
        (
            "PUT",
            "/v1/keys/k/rotation".into(),
            Some(json!({"interval_days": 30, "overlap_days": 1, "time_zone": "Europe/Berlin"})),
            "keys:rotate",
        ),
        ("DELETE", "/v1/keys/k/rotation".into(), None, "keys:rotate"),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"name": "t", "scopes": ["keys:read"]})),
            "admin",
        ),
        ("GET", "/v1/tokens".into(), None, "admin"),
        ("POST", "/v1/tokens/{victim}/revoke".into(), None, "admin"),
        ("GET", "/v1/audit".into(), None, "audit:read"),
        ("GET", "/v1/audit/export".into(), None, "audit:read"),
        ("GET", "/v1/audit/verify".into(), None, "audit:read"),
    ];
    for (method, path, body, scope) in routes {
        let fresh_path = |path: &str, n: &mut i32| {
            *n += 1;
            path.replace("{victim}", "none")
        };
        let body = |n: i32| {
            body.clone().map(|mut b| {
                if b.get("algorithm").is_some() {
                    b["name"] = json!(format!("x-{n}"));
                }
                b.to_string().into_bytes()
            })
        };
        // No token: 401.
        let p = fresh_path(&path, &mut n);
        let (status, _) = s.call(method, &p, None, body(n)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        // Every other scope, but not this one: 403.
        let others: Vec<&str> = all.iter().copied().filter(|a| *a != scope).collect();
        let token = s.token(&others).await;
        let p = fresh_path(&path, &mut n);
        let (status, answer) = s.call(method, &p, Some(&token), body(n)).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} with {others:?}: {answer}"
        );
        // Exactly this scope: allowed.
        let token = if scope == "admin" {
            s.admin.clone()
        } else {
            s.token(&[scope]).await
        };
        let p = if path.contains("{victim}") {
            let victim = s.token(&["keys:read"]).await;
            path.replace("{victim}", victim.split('_').nth(1).unwrap())
        } else {
            fresh_path(&path, &mut n)
        };
        let (status, answer) = s.call(method, &p, Some(&token), body(n)).await;
        assert!(
            status.is_success(),
            "{method} {path} with {scope}: {status} {answer}"
        );
    }
}

#[tokio::test]
async fn providers_show_their_circuit_and_rotation_policies_are_checked() {
    let s = start().await;
    s.create("k", "ed25519").await;
    let (status, list) = s.call("GET", "/v1/providers", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let soft = &list["providers"][0];
    assert_eq!(soft["kind"], "soft");
    assert_eq!(soft["circuit"], "closed");
    assert_eq!(soft["exportable"], true);
    assert_eq!(soft["import"], true);
    assert_eq!(soft["available"], true);

    let put = |body: Value| {
        let s = &s;
        async move {
            s.call(
                "PUT",
                "/v1/keys/k/rotation",
                Some(&s.admin),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let (status, view) =
        put(json!({"intervalDays": 7, "rotationTime": "03:00:00", "timeZone": "Asia/Tokyo"})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the seed's camelCase names work: {view}"
    );
    assert_eq!(view["policy"]["interval_days"], 7);
    assert!(view["next_rotation"].is_string());
    for (body, needle) in [
        (
            json!({"interval_days": 7, "time_zone": "Mars/Olympus"}),
            "time_zone",
        ),
        (json!({"interval_days": 0}), "interval_days"),
        (
            json!({"interval_days": 7, "rotation_time": "7pm"}),
            "rotation_time",
        ),
        (
            json!({"interval_days": 7, "backup_enabled": true, "backup_location": "s3://b"}),
            "URL",
        ),
    ] {
        let (status, answer) = put(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_rotation_policy");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }
    let (status, answer) = put(json!({"interval_days": 7, "surprise": 1})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {answer}"
    );
    let (status, _) = s
        .call("GET", "/v1/keys/nope/rotation", Some(&s.admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, view) = s
        .call("DELETE", "/v1/keys/k/rotation", Some(&s.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["policy"], Value::Null);
}

#[tokio::test]
async fn failed_authentications_from_one_address_are_limited_before_they_flood_the_audit_log() {
    let options = HttpOptions {
        auth_failure_rate: (1, 5),
        ..HttpOptions::default()
    };
    let (s, audit) = {
        let slot = Arc::new(std::sync::Mutex::new(None));
        let server = start_inner(None, options, Some(Arc::clone(&slot))).await;
        let audit = slot.lock().unwrap().take().unwrap();
        (server, audit)
    };
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, _) = s
            .call("GET", "/v1/keys", Some("cst_0000000000000000_bad"), None)
            .await;
        statuses.push(status);
    }
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let unauthenticated = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        refused >= 20 && unauthenticated >= 5 && refused + unauthenticated == 30,
        "{statuses:?}"
    );
    let query = custos_audit::AuditQuery {
        operation: Some("auth_failure".into()),
        limit: 100,
        ..Default::default()
    };
    let recorded = audit.query(&query).await.unwrap().len();
    assert_eq!(recorded, unauthenticated, "every 401 is audited, no 429 is");
    // A valid token still works from the same address.
    let (status, _) = s.call("GET", "/v1/keys", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_equivocation_guard_over_http() {
    let s = start().await;
    s.create("sequencer", "ed25519").await;
    let sign = |n: u64, m: &[u8]| json!({"message": b64::encode(m), "sequence": n});
    let (status, first) = s
        .post("/v1/keys/sequencer/sign", sign(100, b"block 100"))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = s
        .post("/v1/keys/sequencer/sign", sign(100, b"block 100"))
        .await;
    assert_eq!(again["signature"], first["signature"]);
    let (status, fork) = s
        .post("/v1/keys/sequencer/sign", sign(100, b"block 100 forked"))
        .await;
    assert_eq!(
        (status, fork["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("equivocation")),
        "{fork}"
    );
    let (status, _) = s
        .post("/v1/keys/sequencer/sign", sign(99, b"block 99"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = s
        .post("/v1/keys/sequencer/sign", sign(101, b"block 101"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

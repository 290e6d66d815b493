//! One test per operation (or group of operations), called as the router calls them, against a real key
//! manager over SQLite and the software keystore. The real AWS clients' test is `custos/tests/kms_api.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use custos_core::testkit::Harness;
use custos_core::{RequestContext, SignInput, SignRequest};
use custos_types::{KeyName, PrivateKey};
use serde_json::{json, Value};

use super::run;
use crate::KmsApi;

struct Rig {
    api: KmsApi,
    kit: Harness,
}

async fn rig() -> Rig {
    let kit = Harness::new().await;
    Rig {
        api: KmsApi::new(
            Arc::clone(&kit.km),
            Arc::clone(&kit.access),
            "eu-west-1".into(),
            "111122223333".into(),
        ),
        kit,
    }
}

fn admin() -> RequestContext {
    RequestContext::system("test")
}

async fn caller(rig: &Rig, scopes: &[&str]) -> RequestContext {
    rig.kit.caller(scopes).await
}

async fn call(
    rig: &Rig,
    ctx: &RequestContext,
    op: &str,
    body: Value,
) -> Result<Value, crate::KmsError> {
    run(&rig.api, ctx, op, body.to_string().as_bytes()).await
}

async fn ok(rig: &Rig, op: &str, body: Value) -> Value {
    call(rig, &admin(), op, body)
        .await
        .unwrap_or_else(|e| panic!("{op}: {e:?}"))
}

async fn fails(rig: &Rig, op: &str, body: Value) -> &'static str {
    call(rig, &admin(), op, body).await.expect_err(op).kind
}

async fn create(rig: &Rig, spec: &str) -> String {
    let made = ok(rig, "CreateKey", json!({ "KeySpec": spec, "KeyUsage": if spec == "SYMMETRIC_DEFAULT" { "ENCRYPT_DECRYPT" } else { "SIGN_VERIFY" } })).await;
    made["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_key_makes_each_kind_and_refuses_the_rest() {
    let rig = rig().await;
    for (spec, usage) in [
        ("ECC_SECG_P256K1", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"),
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    ] {
        let made = ok(&rig, "CreateKey", json!({ "KeySpec": spec, "Description": "d", "Tags": [{"TagKey": "team", "TagValue": "ops"}] })).await;
        let meta = &made["KeyMetadata"];
        assert_eq!(
            (
                meta["KeySpec"].as_str(),
                meta["KeyUsage"].as_str(),
                meta["KeyState"].as_str()
            ),
            (Some(spec), Some(usage), Some("Enabled"))
        );
        assert_eq!(meta["Description"], "d");
        assert!(meta["Arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:eu-west-1:111122223333:key/"));
    }
    let external = ok(
        &rig,
        "CreateKey",
        json!({ "KeySpec": "ECC_NIST_P256", "Origin": "EXTERNAL" }),
    )
    .await;
    assert_eq!(external["KeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(external["KeyMetadata"]["Origin"], "EXTERNAL");
    assert_eq!(
        fails(&rig, "CreateKey", json!({ "KeySpec": "RSA_2048" })).await,
        "ValidationException"
    );
    assert_eq!(
        fails(
            &rig,
            "CreateKey",
            json!({ "KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT" })
        )
        .await,
        "ValidationException"
    );
    assert_eq!(
        fails(&rig, "CreateKey", json!({ "Origin": "AWS_CLOUDHSM" })).await,
        "UnsupportedOperationException"
    );
    assert_eq!(
        fails(&rig, "CreateKey", json!({ "KeySpec": 7 })).await,
        "ValidationException"
    );
    assert_eq!(
        run(&rig.api, &admin(), "CreateKey", b"{")
            .await
            .unwrap_err()
            .kind,
        "SerializationException"
    );
}

#[tokio::test]
async fn describe_and_list_keys_page_through_every_kind() {
    let rig = rig().await;
    let mut ids = vec![
        create(&rig, "ECC_NIST_P256").await,
        create(&rig, "SYMMETRIC_DEFAULT").await,
        create(&rig, "ECC_SECG_P256K1").await,
    ];
    ids.sort();
    let described = ok(&rig, "DescribeKey", json!({ "KeyId": ids[0] })).await;
    assert_eq!(described["KeyMetadata"]["KeyId"], ids[0].as_str());
    let first = ok(&rig, "ListKeys", json!({ "Limit": 2 })).await;
    assert_eq!(first["Truncated"], true);
    let marker = first["NextMarker"].as_str().unwrap();
    let second = ok(&rig, "ListKeys", json!({ "Limit": 2, "Marker": marker })).await;
    assert_eq!(second["Truncated"], false);
    let listed: Vec<String> = first["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["Keys"].as_array().unwrap())
        .map(|k| k["KeyId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(
        fails(&rig, "ListKeys", json!({ "Limit": 0 })).await,
        "ValidationException"
    );
    assert_eq!(
        fails(&rig, "DescribeKey", json!({ "KeyId": "nope" })).await,
        "NotFoundException"
    );
}

#[tokio::test]
async fn get_public_key_gives_the_spki_of_a_signing_key_only() {
    let rig = rig().await;
    let id = create(&rig, "ECC_NIST_P256").await;
    let got = ok(&rig, "GetPublicKey", json!({ "KeyId": id })).await;
    let der = B64.decode(got["PublicKey"].as_str().unwrap()).unwrap();
    let record = rig
        .api
        .keys
        .key(&admin(), &KeyName::new(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(der, record.current().unwrap().public_key.to_spki_der());
    let sym = create(&rig, "SYMMETRIC_DEFAULT").await;
    assert_eq!(
        fails(&rig, "GetPublicKey", json!({ "KeyId": sym })).await,
        "UnsupportedOperationException"
    );
}

#[tokio::test]
async fn sign_and_verify_raw_and_digest_and_refuse_what_does_not_fit() {
    let rig = rig().await;
    let id = create(&rig, "ECC_SECG_P256K1").await;
    let message = B64.encode(b"a transaction");
    let signed = ok(
        &rig,
        "Sign",
        json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ECDSA_SHA_256" }),
    )
    .await;
    let signature = signed["Signature"].as_str().unwrap();
    let verified = ok(&rig, "Verify", json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ECDSA_SHA_256", "Signature": signature })).await;
    assert_eq!(verified["SignatureValid"], true);
    let digest = B64.encode(custos_types::HashAlgorithm::Sha256.digest(b"a transaction"));
    ok(&rig, "Sign", json!({ "KeyId": id, "Message": digest, "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256" })).await;
    assert_eq!(fails(&rig, "Verify", json!({ "KeyId": id, "Message": B64.encode(b"other"), "SigningAlgorithm": "ECDSA_SHA_256", "Signature": signature })).await, "KMSInvalidSignatureException");
    assert_eq!(
        fails(
            &rig,
            "Sign",
            json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ED25519_SHA_512" })
        )
        .await,
        "InvalidKeyUsageException"
    );
    assert_eq!(fails(&rig, "Sign", json!({ "KeyId": id, "Message": B64.encode(b"short"), "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256" })).await, "ValidationException");
    assert_eq!(
        fails(
            &rig,
            "Sign",
            json!({ "KeyId": id, "Message": "", "SigningAlgorithm": "ECDSA_SHA_256" })
        )
        .await,
        "ValidationException"
    );
    let ed = create(&rig, "ECC_NIST_EDWARDS25519").await;
    assert_eq!(fails(&rig, "Sign", json!({ "KeyId": ed, "Message": digest, "MessageType": "DIGEST", "SigningAlgorithm": "ED25519_SHA_512" })).await, "ValidationException");
    // A token that may only verify cannot sign.
    let verifier = caller(&rig, &["verify:*"]).await;
    let err = call(
        &rig,
        &verifier,
        "Sign",
        json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ECDSA_SHA_256" }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, "AccessDeniedException");
}

#[tokio::test]
async fn encrypt_decrypt_and_data_keys_are_bound_to_key_and_context() {
    let rig = rig().await;
    let id = create(&rig, "SYMMETRIC_DEFAULT").await;
    let other = create(&rig, "SYMMETRIC_DEFAULT").await;
    let enc = ok(
        &rig,
        "Encrypt",
        json!({ "KeyId": id, "Plaintext": B64.encode(b"secret"), "EncryptionContext": {"w": "1"} }),
    )
    .await;
    let blob = enc["CiphertextBlob"].as_str().unwrap();
    let back = ok(
        &rig,
        "Decrypt",
        json!({ "CiphertextBlob": blob, "EncryptionContext": {"w": "1"} }),
    )
    .await;
    assert_eq!(
        B64.decode(back["Plaintext"].as_str().unwrap()).unwrap(),
        b"secret"
    );
    assert_eq!(
        fails(
            &rig,
            "Decrypt",
            json!({ "CiphertextBlob": blob, "EncryptionContext": {"w": "2"} })
        )
        .await,
        "InvalidCiphertextException"
    );
    assert_eq!(
        fails(
            &rig,
            "Decrypt",
            json!({ "CiphertextBlob": blob, "KeyId": other, "EncryptionContext": {"w": "1"} })
        )
        .await,
        "IncorrectKeyException"
    );
    assert_eq!(
        fails(
            &rig,
            "Decrypt",
            json!({ "CiphertextBlob": B64.encode(b"garbage") })
        )
        .await,
        "InvalidCiphertextException"
    );
    let data = ok(
        &rig,
        "GenerateDataKey",
        json!({ "KeyId": id, "KeySpec": "AES_256" }),
    )
    .await;
    assert_eq!(
        B64.decode(data["Plaintext"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let hidden = ok(
        &rig,
        "GenerateDataKeyWithoutPlaintext",
        json!({ "KeyId": id, "NumberOfBytes": 64 }),
    )
    .await;
    assert!(hidden.get("Plaintext").is_none());
    let opened = ok(
        &rig,
        "Decrypt",
        json!({ "CiphertextBlob": hidden["CiphertextBlob"] }),
    )
    .await;
    assert_eq!(
        B64.decode(opened["Plaintext"].as_str().unwrap())
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        fails(
            &rig,
            "GenerateDataKey",
            json!({ "KeyId": id, "KeySpec": "AES_256", "NumberOfBytes": 32 })
        )
        .await,
        "ValidationException"
    );
    let signing = create(&rig, "ECC_NIST_P256").await;
    assert_eq!(
        fails(
            &rig,
            "Encrypt",
            json!({ "KeyId": signing, "Plaintext": B64.encode(b"x") })
        )
        .await,
        "InvalidKeyUsageException"
    );
}

#[tokio::test]
async fn key_states_change_as_in_aws_and_every_surface_obeys_them() {
    let rig = rig().await;
    let id = create(&rig, "ECC_NIST_EDWARDS25519").await;
    let message = B64.encode(b"x");
    ok(&rig, "DisableKey", json!({ "KeyId": id })).await;
    assert_eq!(
        fails(
            &rig,
            "Sign",
            json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ED25519_SHA_512" })
        )
        .await,
        "DisabledException"
    );
    // The native path refuses too: the state is the key's, not the KMS API's.
    let name = KeyName::new(&id).unwrap();
    let native = rig
        .api
        .keys
        .sign(
            &admin(),
            &name,
            &SignRequest::new(SignInput::Message(b"x".to_vec())),
        )
        .await
        .unwrap_err();
    assert_eq!(native.code(), "key_disabled");
    ok(&rig, "EnableKey", json!({ "KeyId": id })).await;
    let scheduled = ok(
        &rig,
        "ScheduleKeyDeletion",
        json!({ "KeyId": id, "PendingWindowInDays": 7 }),
    )
    .await;
    assert_eq!(scheduled["KeyState"], "PendingDeletion");
    assert!(scheduled["DeletionDate"].is_number());
    assert_eq!(
        fails(
            &rig,
            "Sign",
            json!({ "KeyId": id, "Message": message, "SigningAlgorithm": "ED25519_SHA_512" })
        )
        .await,
        "KMSInvalidStateException"
    );
    assert_eq!(
        fails(&rig, "EnableKey", json!({ "KeyId": id })).await,
        "KMSInvalidStateException"
    );
    assert_eq!(
        rig.api
            .keys
            .sign(
                &admin(),
                &name,
                &SignRequest::new(SignInput::Message(b"x".to_vec()))
            )
            .await
            .unwrap_err()
            .code(),
        "key_pending_deletion"
    );
    ok(&rig, "CancelKeyDeletion", json!({ "KeyId": id })).await;
    assert_eq!(
        ok(&rig, "DescribeKey", json!({ "KeyId": id })).await["KeyMetadata"]["KeyState"],
        "Disabled"
    );
    assert_eq!(
        fails(
            &rig,
            "ScheduleKeyDeletion",
            json!({ "KeyId": id, "PendingWindowInDays": 3 })
        )
        .await,
        "ValidationException"
    );
    // Scheduling a deletion is admin's.
    let rotator = caller(&rig, &["keys:rotate"]).await;
    let err = call(
        &rig,
        &rotator,
        "ScheduleKeyDeletion",
        json!({ "KeyId": id }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, "AccessDeniedException");
    call(&rig, &rotator, "EnableKey", json!({ "KeyId": id }))
        .await
        .unwrap();
    // A symmetric key has the same states.
    let sym = create(&rig, "SYMMETRIC_DEFAULT").await;
    ok(&rig, "DisableKey", json!({ "KeyId": sym })).await;
    assert_eq!(
        fails(
            &rig,
            "Encrypt",
            json!({ "KeyId": sym, "Plaintext": message })
        )
        .await,
        "DisabledException"
    );
}

#[tokio::test]
async fn rotation_status_and_tags_are_read_after_create_key() {
    let rig = rig().await;
    let id = create(&rig, "ECC_NIST_P256").await;
    let status = ok(&rig, "GetKeyRotationStatus", json!({ "KeyId": id })).await;
    assert_eq!(status["KeyRotationEnabled"], false);
    rig.api
        .keys
        .set_rotation_policy(
            &admin(),
            &KeyName::new(&id).unwrap(),
            Some(custos_core::RotationPolicy {
                interval_days: 90,
                overlap_days: 0,
                rotation_time: "00:00:00".into(),
                time_zone: "UTC".into(),
                backup_enabled: false,
                backup_location: None,
                backup_recipient: None,
            }),
        )
        .await
        .unwrap();
    let status = ok(&rig, "GetKeyRotationStatus", json!({ "KeyId": id })).await;
    assert_eq!(
        (
            status["KeyRotationEnabled"].as_bool(),
            status["RotationPeriodInDays"].as_u64()
        ),
        (Some(true), Some(90))
    );
    ok(&rig, "TagResource", json!({ "KeyId": id, "Tags": [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}] })).await;
    ok(
        &rig,
        "UntagResource",
        json!({ "KeyId": id, "TagKeys": ["a"] }),
    )
    .await;
    let tags = ok(&rig, "ListResourceTags", json!({ "KeyId": id })).await;
    assert_eq!(tags["Tags"], json!([{"TagKey": "b", "TagValue": "2"}]));
    assert_eq!(
        fails(
            &rig,
            "TagResource",
            json!({ "KeyId": id, "Tags": [{"TagKey": "aws:x", "TagValue": "1"}] })
        )
        .await,
        "ValidationException"
    );
}

#[tokio::test]
async fn aliases_resolve_everywhere_and_page() {
    let rig = rig().await;
    let a = create(&rig, "ECC_NIST_P256").await;
    let b = create(&rig, "ECC_NIST_P256").await;
    ok(
        &rig,
        "CreateAlias",
        json!({ "AliasName": "alias/one", "TargetKeyId": a }),
    )
    .await;
    ok(
        &rig,
        "CreateAlias",
        json!({ "AliasName": "alias/two", "TargetKeyId": a }),
    )
    .await;
    assert_eq!(
        fails(
            &rig,
            "CreateAlias",
            json!({ "AliasName": "alias/one", "TargetKeyId": a })
        )
        .await,
        "AlreadyExistsException"
    );
    assert_eq!(
        fails(
            &rig,
            "CreateAlias",
            json!({ "AliasName": "alias/aws/x", "TargetKeyId": a })
        )
        .await,
        "ValidationException"
    );
    assert_eq!(
        ok(&rig, "DescribeKey", json!({ "KeyId": "alias/one" })).await["KeyMetadata"]["KeyId"],
        a.as_str()
    );
    let arn = "arn:aws:kms:eu-west-1:111122223333:alias/one";
    assert_eq!(
        ok(&rig, "DescribeKey", json!({ "KeyId": arn })).await["KeyMetadata"]["KeyId"],
        a.as_str()
    );
    ok(
        &rig,
        "UpdateAlias",
        json!({ "AliasName": "alias/two", "TargetKeyId": b }),
    )
    .await;
    let page = ok(&rig, "ListAliases", json!({ "Limit": 1 })).await;
    assert_eq!(
        (
            page["Aliases"][0]["AliasName"].as_str(),
            page["Truncated"].as_bool()
        ),
        (Some("alias/one"), Some(true))
    );
    let rest = ok(&rig, "ListAliases", json!({ "Marker": page["NextMarker"] })).await;
    assert_eq!(rest["Aliases"][0]["TargetKeyId"], b.as_str());
    let filtered = ok(&rig, "ListAliases", json!({ "KeyId": b })).await;
    assert_eq!(filtered["Aliases"].as_array().unwrap().len(), 1);
    ok(&rig, "DeleteAlias", json!({ "AliasName": "alias/one" })).await;
    assert_eq!(
        fails(&rig, "DescribeKey", json!({ "KeyId": "alias/one" })).await,
        "NotFoundException"
    );
    assert_eq!(
        fails(&rig, "DeleteAlias", json!({ "AliasName": "alias/one" })).await,
        "NotFoundException"
    );
}

#[tokio::test]
async fn imported_material_becomes_a_signing_key_and_a_failed_import_ends_the_token() {
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
    let rig = rig().await;
    let made = ok(
        &rig,
        "CreateKey",
        json!({ "KeySpec": "ECC_NIST_P256", "Origin": "EXTERNAL" }),
    )
    .await;
    let id = made["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let params = ok(&rig, "GetParametersForImport", json!({ "KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048" })).await;
    let public = B64.decode(params["PublicKey"].as_str().unwrap()).unwrap();
    let token = params["ImportToken"].as_str().unwrap().to_owned();
    let wrap = |material: &[u8]| {
        let key =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&public).unwrap()).unwrap();
        let mut out = vec![0u8; key.ciphertext_size()];
        B64.encode(
            key.encrypt(&OAEP_SHA256_MGF1SHA256, material, &mut out, None)
                .unwrap(),
        )
    };
    assert_eq!(fails(&rig, "ImportKeyMaterial", json!({ "KeyId": id, "ImportToken": B64.encode([0u8; 32]), "EncryptedKeyMaterial": wrap(b"x") })).await, "InvalidImportTokenException");
    assert_eq!(
        fails(
            &rig,
            "ImportKeyMaterial",
            json!({ "KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": wrap(b"not pkcs8") })
        )
        .await,
        "IncorrectKeyMaterialException"
    );
    let private = PrivateKey::generate(custos_types::Algorithm::P256);
    let der = private.to_pkcs8_der().unwrap();
    assert_eq!(
        fails(
            &rig,
            "ImportKeyMaterial",
            json!({ "KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": wrap(&der) })
        )
        .await,
        "InvalidImportTokenException",
        "the token was used up"
    );
    let params = ok(&rig, "GetParametersForImport", json!({ "KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048" })).await;
    let public = B64.decode(params["PublicKey"].as_str().unwrap()).unwrap();
    let key =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&public).unwrap()).unwrap();
    let mut out = vec![0u8; key.ciphertext_size()];
    let wrapped = B64.encode(
        key.encrypt(&OAEP_SHA256_MGF1SHA256, &der, &mut out, None)
            .unwrap(),
    );
    ok(&rig, "ImportKeyMaterial", json!({ "KeyId": id, "ImportToken": params["ImportToken"], "EncryptedKeyMaterial": wrapped, "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE" })).await;
    let described = ok(&rig, "DescribeKey", json!({ "KeyId": id })).await;
    assert_eq!(described["KeyMetadata"]["KeyState"], "Enabled");
    let got = ok(&rig, "GetPublicKey", json!({ "KeyId": id })).await;
    assert_eq!(
        B64.decode(got["PublicKey"].as_str().unwrap()).unwrap(),
        private.public_key().to_spki_der()
    );
    assert_eq!(fails(&rig, "GetParametersForImport", json!({ "KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048" })).await, "UnsupportedOperationException");
}

#[tokio::test]
async fn an_unknown_operation_is_named() {
    let rig = rig().await;
    let err = fails(&rig, "CreateCustomKeyStore", json!({})).await;
    assert_eq!(err, "UnknownOperationException");
}

//! The KMS-compatible API through real AWS clients: the Rust `aws-sdk-kms` (as Custos's own AWS KMS
//! provider, running the provider conformance suite against Custos), boto3 and the `aws` CLI, with every
//! signature checked independently (openssl through the suite; Python's `cryptography` for boto3 and the
//! CLI), and the error shapes AWS clients expect.
#![cfg(feature = "awskms")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::process::Command;
use std::sync::Arc;

use custos_provider::conformance;
use custos_provider_awskms::{KmsLimits, KmsProvider};
use custos_types::ProviderName;

mod common;
use common::{custos, ok, start};

async fn sdk(endpoint: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "custos-test",
        ))
        .load()
        .await
}

/// boto3 and the aws CLI against Custos; signatures checked with `cryptography`.
const PYTHON: &str = r#"
import base64, json, os, subprocess, sys, tempfile
import boto3, botocore
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

url = os.environ["CUSTOS_URL"]
kms = boto3.client("kms", endpoint_url=url, region_name="us-east-1")

# ECDSA secp256k1: RAW and DIGEST, DER signatures over SHA-256, checked by cryptography.
key = kms.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY", Description="boto3")["KeyMetadata"]
assert key["KeySpec"] == "ECC_SECG_P256K1" and key["KeyState"] == "Enabled", key
public = serialization.load_der_public_key(kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
message = b"a transaction"
signed = kms.sign(KeyId=key["Arn"], Message=message, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
public.verify(signed["Signature"], message, ec.ECDSA(hashes.SHA256()))
digest = hashes.Hash(hashes.SHA256()); digest.update(message); digest = digest.finalize()
signed = kms.sign(KeyId=key["KeyId"], Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
public.verify(signed["Signature"], message, ec.ECDSA(hashes.SHA256()))
assert kms.verify(KeyId=key["KeyId"], Message=message, MessageType="RAW", Signature=signed["Signature"],
                  SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
try:
    kms.verify(KeyId=key["KeyId"], Message=b"another", MessageType="RAW", Signature=signed["Signature"],
               SigningAlgorithm="ECDSA_SHA_256")
    sys.exit("a wrong signature verified")
except kms.exceptions.KMSInvalidSignatureException:
    pass

# Aliases name keys everywhere a key id goes.
kms.create_alias(AliasName="alias/sequencer", TargetKeyId=key["KeyId"])
assert kms.describe_key(KeyId="alias/sequencer")["KeyMetadata"]["KeyId"] == key["KeyId"]
assert [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == ["alias/sequencer"]
try:
    kms.create_alias(AliasName="alias/sequencer", TargetKeyId=key["KeyId"])
    sys.exit("a duplicate alias was accepted")
except kms.exceptions.AlreadyExistsException:
    pass

# Ed25519 over RAW messages.
ed = kms.create_key(KeySpec="ECC_NIST_EDWARDS25519", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
ed_public = serialization.load_der_public_key(kms.get_public_key(KeyId=ed["KeyId"])["PublicKey"])
signed = kms.sign(KeyId=ed["KeyId"], Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")
ed_public.verify(signed["Signature"], message)

# Symmetric keys: data keys and encryption bound to the encryption context.
sym = kms.create_key()["KeyMetadata"]
assert sym["KeySpec"] == "SYMMETRIC_DEFAULT" and sym["KeyUsage"] == "ENCRYPT_DECRYPT"
data = kms.generate_data_key(KeyId=sym["KeyId"], KeySpec="AES_256", EncryptionContext={"wallet": "w1"})
assert len(data["Plaintext"]) == 32
back = kms.decrypt(CiphertextBlob=data["CiphertextBlob"], EncryptionContext={"wallet": "w1"})
assert back["Plaintext"] == data["Plaintext"]
try:
    kms.decrypt(CiphertextBlob=data["CiphertextBlob"], EncryptionContext={"wallet": "w2"})
    sys.exit("another encryption context decrypted")
except kms.exceptions.InvalidCiphertextException:
    pass
enc = kms.encrypt(KeyId=sym["KeyId"], Plaintext=b"secret")
assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == b"secret"

# Key states: a key pending deletion does not sign; cancelling leaves it disabled until enabled.
kms.schedule_key_deletion(KeyId=ed["KeyId"], PendingWindowInDays=7)
assert kms.describe_key(KeyId=ed["KeyId"])["KeyMetadata"]["KeyState"] == "PendingDeletion"
try:
    kms.sign(KeyId=ed["KeyId"], Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")
    sys.exit("a key pending deletion signed")
except kms.exceptions.KMSInvalidStateException:
    pass
kms.cancel_key_deletion(KeyId=ed["KeyId"])
try:
    kms.sign(KeyId=ed["KeyId"], Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")
    sys.exit("a disabled key signed")
except kms.exceptions.DisabledException:
    pass
kms.enable_key(KeyId=ed["KeyId"])
kms.sign(KeyId=ed["KeyId"], Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")

# Errors as AWS shapes them.
try:
    kms.describe_key(KeyId="no-such-key")
    sys.exit("an unknown key was found")
except kms.exceptions.NotFoundException:
    pass
try:
    kms.sign(KeyId=key["KeyId"], Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")
    sys.exit("a wrong signing algorithm was accepted")
except kms.exceptions.InvalidKeyUsageException:
    pass
bad = boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                   aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
try:
    bad.list_keys()
    sys.exit("a bad signature was accepted")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response
stranger = boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="AKIAUNKNOWN", aws_secret_access_key="x")
try:
    stranger.list_keys()
    sys.exit("an unknown access key was accepted")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "UnrecognizedClientException", e.response

# An unsigned request is refused as AWS refuses it.
import urllib.request, urllib.error
request = urllib.request.Request(url + "/", data=b"{}", method="POST", headers={
    "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
try:
    urllib.request.urlopen(request)
    sys.exit("an unsigned request was accepted")
except urllib.error.HTTPError as e:
    assert e.code == 400, e.code
    assert json.loads(e.read())["__type"] == "MissingAuthenticationTokenException"

# The aws CLI: sign a file's contents, check with cryptography.
with tempfile.NamedTemporaryFile(delete=False) as f:
    f.write(message)
out = subprocess.run(["aws", "kms", "sign", "--endpoint-url", url, "--region", "us-east-1",
                      "--key-id", "alias/sequencer", "--message", "fileb://" + f.name,
                      "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256", "--output", "json"],
                     capture_output=True, text=True)
assert out.returncode == 0, out.stderr
public.verify(base64.b64decode(json.loads(out.stdout)["Signature"]), message, ec.ECDSA(hashes.SHA256()))
keys = json.loads(subprocess.run(["aws", "kms", "list-keys", "--endpoint-url", url, "--region", "us-east-1",
                                  "--output", "json"], capture_output=True, text=True, check=True).stdout)
assert len(keys["Keys"]) >= 3, keys
print("python ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_clients_sign_through_custos() {
    let server = start("[kms_api]\nenabled = true\n");
    let (url, root) = (server.url.clone(), server.root.clone());
    let issued: serde_json::Value = serde_json::from_str(&ok(custos(&[
        "token",
        "create",
        "kms-client",
        "--scope",
        "admin",
        "--aws",
        "--json",
    ])
    .env("CUSTOS_ADDR", &url)
    .env("CUSTOS_TOKEN", &root)))
    .unwrap();
    let token_id = issued["id"].as_str().unwrap().to_owned();
    let key = issued["aws_access_key_id"].as_str().unwrap().to_owned();
    let secret = issued["aws_secret_access_key"].as_str().unwrap().to_owned();

    // 1. The Rust SDK, as Custos's own AWS KMS provider, passes the provider conformance suite against
    //    Custos: all three algorithms, signatures checked with openssl, errors, concurrency.
    let kms = KmsProvider::new(
        ProviderName::new("custos-kms").unwrap(),
        &sdk(&url, &key, &secret).await,
        KmsLimits::default(),
    );
    let down = KmsProvider::new(
        ProviderName::new("custos-kms-down").unwrap(),
        &sdk("http://127.0.0.1:1", &key, &secret).await,
        KmsLimits {
            max_attempts: 1,
            ..KmsLimits::default()
        },
    );
    conformance::run(conformance::Harness::new(Arc::new(kms), Arc::new(down))).await;

    // 2. boto3 and the aws CLI.
    let (python_key, python_secret, python_url) = (key.clone(), secret.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        let (key, secret, url) = (python_key, python_secret, python_url);
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON)
            .env("CUSTOS_URL", &url)
            .env("AWS_ACCESS_KEY_ID", &key)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("python ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. Revoking the token ends its access key at once.
    ok(custos(&["token", "revoke", &token_id])
        .env("CUSTOS_ADDR", &url)
        .env("CUSTOS_TOKEN", &root));
    let client = aws_sdk_kms::Client::new(&sdk(&url, &key, &secret).await);
    let err = client.list_keys().send().await.unwrap_err();
    let code = aws_sdk_kms::error::ProvideErrorMetadata::code(&err).map(str::to_owned);
    assert_eq!(
        code.as_deref(),
        Some("UnrecognizedClientException"),
        "{err:?}"
    );
}

//! `--mode kms`: the KMS-compatible `Sign` against the native sign API in one run: the same secp256k1
//! key on the same server, the same number of concurrent clients, a 32-byte digest each time. The KMS
//! path is driven by the AWS SDK for Rust (what a KMS user runs: SigV4 signing, JSON 1.1); the native
//! path by a plain HTTP/1.1 client. For context, the same SDK client against the moto emulator (when
//! `moto_server` is installed), which does no durable audit and verifies nothing. A third KMS phase
//! replays one pre-signed request with the plain client, to separate the SDK's own cost from the server's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use custos_core::RequestContext;
use custos_types::{Algorithm, KeyName};
use hyper::body::Bytes;

async fn client(endpoint: &str, key: &str, secret: &str) -> aws_sdk_kms::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "custos-bench",
        ))
        .load()
        .await;
    aws_sdk_kms::Client::new(&config)
}

/// `connections` tasks signing with `key_id` through `client` for `seconds`; signatures per second.
async fn sdk_loop(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    connections: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, key_id) = (client.clone(), key_id.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                client
                    .sign()
                    .key_id(&key_id)
                    .message(Blob::new([0x5a; 32]))
                    .message_type(MessageType::Digest)
                    .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                    .send()
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The KMS path without the SDK's client-side cost: one request signed once (SigV4 has no nonce, so a
/// signed request may be sent again within 15 minutes, as AWS also allows) and replayed by a plain
/// HTTP/1.1 client on each connection. Signatures per second.
async fn replay_loop(
    addr: std::net::SocketAddr,
    aws: &(String, String),
    connections: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::header::HeaderValue;
    let body = Bytes::from(
        serde_json::json!({
            "KeyId": "bench",
            "Message": custos_api::b64::encode([0x5a; 32]),
            "MessageType": "DIGEST",
            "SigningAlgorithm": "ECDSA_SHA_256",
        })
        .to_string(),
    );
    let now = custos_types::Timestamp::now();
    let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut headers = hyper::HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(&addr.to_string())?);
    headers.insert("x-amz-date", HeaderValue::from_str(&amz_date)?);
    headers.insert(
        "x-amz-target",
        HeaderValue::from_static("TrentService.Sign"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    let auth = custos_kms_api::sigv4::Authorization {
        access_key_id: aws.0.clone(),
        date: amz_date[..8].to_owned(),
        region: "us-east-1".into(),
        service: "kms".into(),
        signed_headers: ["content-type", "host", "x-amz-date", "x-amz-target"]
            .map(str::to_owned)
            .to_vec(),
        signature: String::new(),
    };
    let uri: hyper::Uri = "/".parse()?;
    let authorization = custos_kms_api::sigv4::authorization_header(
        &auth,
        &secrecy::SecretString::from(aws.1.clone()),
        &hyper::Method::POST,
        &uri,
        &headers,
        &body,
        &amz_date,
    )
    .map_err(|e| anyhow::anyhow!("signing: {e:?}"))?;
    headers.insert("authorization", HeaderValue::from_str(&authorization)?);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (headers, body) = (headers.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = crate::connect(addr).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                sender.ready().await?;
                let mut request = hyper::Request::post("/").body(Full::new(body.clone()))?;
                *request.headers_mut() = headers.clone();
                let response = sender.send_request(request).await?;
                let status = response.status();
                let bytes = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
                }
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Starts `moto_server` on a free port, if it is installed; killed on drop.
struct Moto(std::process::Child, String);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Moto(child, endpoint));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

pub fn run(seconds: f64, connections: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "custos-bench kms: {} cores, {seconds} s per phase, {connections} concurrent clients",
            crate::cores()
        );
        let data = tempfile::tempdir()?;
        let (keys, target) = crate::start_server(data.path(), Vec::new(), 64, true).await?;
        let name = KeyName::new("bench")?;
        keys.create_key(
            &RequestContext::system("bench"),
            name.clone(),
            Algorithm::Secp256k1,
            vec![],
        )
        .await?;
        let target = Arc::new(target);
        let body = Bytes::from(format!(
            "{{\"digest\":\"{}\"}}",
            custos_api::b64::encode([0x5a; 32])
        ));
        let native = crate::closed_loop(
            &target,
            connections,
            seconds,
            "/v1/keys/bench/sign",
            body,
        )
        .await?;
        println!("native sign API (secp256k1 digest)    {native:>10.0} /s");
        let endpoint = format!("http://{}", target.addr);
        let custos = client(&endpoint, &target.aws.0, &target.aws.1).await;
        let kms = sdk_loop(&custos, "bench", connections, seconds).await?;
        println!("KMS-compatible Sign (AWS SDK client)  {kms:>10.0} /s");
        let lean = replay_loop(target.addr, &target.aws, connections, seconds).await?;
        println!("KMS-compatible Sign (plain client)    {lean:>10.0} /s");
        let ratio = kms / native;
        let ratio_lean = lean / native;
        println!("ratio_kms_vs_native {ratio:.3} with the AWS SDK client, {ratio_lean:.3} with a plain client (target 0.8)");
        let moto_rate = match moto() {
            Some(moto) => {
                let client = client(&moto.1, "testing", "testing").await;
                let key = client
                    .create_key()
                    .key_spec(KeySpec::EccSecgP256K1)
                    .key_usage(KeyUsageType::SignVerify)
                    .send()
                    .await?;
                let id = key
                    .key_metadata()
                    .map(|m| m.key_id().to_owned())
                    .unwrap_or_default();
                let rate = sdk_loop(&client, &id, connections, seconds).await?;
                println!("moto emulator Sign (same client)      {rate:>10.0} /s");
                Some(rate)
            }
            None => {
                println!("moto emulator Sign                    not measured (moto_server not installed)");
                None
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "mode": "kms",
                "native_sign_per_s": native.round(),
                "kms_sign_per_s": kms.round(),
                "ratio_kms_vs_native": crate::round3(ratio),
                "kms_plain_client_sign_per_s": lean.round(),
                "ratio_kms_plain_client_vs_native": crate::round3(ratio_lean),
                "moto_sign_per_s": moto_rate.map(f64::round),
            })
        );
        anyhow::Ok(())
    })
}

//! Benchmark: HTTP signing throughput and latency against raw in-process signing, measured in one run.
//!
//! Phases, each for `--seconds`:
//! 1. raw: ed25519-dalek signing on every core, no Custos code (the ceiling); then raw sign +
//!    `verify_strict`, the ceiling for any path that verifies every signature as Custos must;
//! 2. core: the Custos sign path in-process (`KeyManager::sign`: registry, provider, mandatory local
//!    verification), on every core, no HTTP;
//! 3. http: the real server on 127.0.0.1, HTTP/1.1 keep-alive, `--connections` concurrent clients;
//! 4. batch: the same with `--batch-size` items per request;
//! 5. latency: an open-loop client at half of the measured HTTP peak; p50/p99 from the scheduled send time.
//!
//! The server and the load generator share the machine's cores. The last line is JSON.

mod kms;
mod signpath;
mod softhsm;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use custos_api::b64;
use custos_core::{
    Access, AuditConfig, AuditLog, KeyManager, Limits, Metrics, RequestContext, Scope, SignInput,
    SignRequest,
};
use custos_http::{AppState, HttpOptions};
use custos_provider_soft::{KdfParams, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, KeyName, ProviderName};
use ed25519_dalek::Signer as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Software provider: HTTP against raw in-process ed25519-dalek signing.
    Soft,
    /// SoftHSM2: HTTP through Custos's PKCS#11 provider against a direct cryptoki loop on the same token.
    Softhsm,
    /// The KMS-compatible API's Sign against the native sign API, same key, server and machine; and the
    /// moto KMS emulator's Sign with the same AWS SDK client, for context.
    Kms,
    /// The sign path's safety and speed features in-process: cache hits against uncached signing, guarded
    /// (durable watermark) against unguarded signing, and the failover switch time when the primary hangs.
    SignPath,
}

#[derive(Debug, Parser)]
#[command(about = "Custos signing benchmark: HTTP against raw in-process signing, in one run")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "soft")]
    mode: Mode,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Items per batch request.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 32)]
    message_bytes: usize,
    /// Worker threads for the server runtime and for the client runtime (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` on `threads` OS threads for `seconds`; returns operations per second.
fn on_all_cores(threads: usize, seconds: f64, work: impl Fn() + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        work();
                    }
                    n += 64;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub(crate) struct Target {
    addr: SocketAddr,
    token: String,
    /// An AWS access key id and secret for the KMS-compatible API on the same server.
    pub(crate) aws: (String, String),
}

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    path: &str,
    body: &Bytes,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = Request::post(path)
        .header(header::HOST, target.addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}

/// Closed loop: every connection sends as fast as answers come back. Returns requests per second.
pub(crate) async fn closed_loop(
    target: &Arc<Target>,
    connections: usize,
    seconds: f64,
    path: &str,
    body: Bytes,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (target, body, path) = (Arc::clone(target), body.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(target.addr).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                post(&mut sender, &target, &path, &body).await?;
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

/// Open loop at `rate` requests per second spread over the connections; latency from the scheduled time.
async fn open_loop(
    target: &Arc<Target>,
    connections: usize,
    seconds: f64,
    rate: f64,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Vec<f64>> {
    let per_connection = Duration::from_secs_f64(connections as f64 / rate);
    let count = (seconds * rate / connections as f64).max(1.0) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (target, body, path) = (Arc::clone(target), body.clone(), path.to_owned());
        // Stagger the connections across one interval.
        let offset = per_connection.mul_f64(c as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(target.addr).await?;
            let mut latencies = Vec::with_capacity(count as usize);
            for i in 0..count {
                let scheduled = start + offset + per_connection * (i as u32);
                tokio::time::sleep_until(scheduled).await;
                post(&mut sender, &target, &path, &body).await?;
                latencies.push(scheduled.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Starts the real server on 127.0.0.1:0 in the current runtime, with the software provider (the
/// default) plus `providers`; returns the key manager and how to reach the server.
pub(crate) async fn start_server(
    data: &std::path::Path,
    providers: Vec<Arc<dyn custos_provider::KeyProvider>>,
    batch_size: usize,
    audit_on: bool,
) -> anyhow::Result<(Arc<KeyManager>, Target)> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(data)?);
    let password = secrecy::SecretString::from("custos-bench".to_owned());
    let soft: Arc<dyn custos_provider::KeyProvider> = Arc::new(
        SoftProvider::open(
            ProviderName::new("soft")?,
            Arc::clone(&store),
            &password,
            KdfParams::default(),
        )
        .await?,
    );
    let limits = Limits {
        max_batch_items: batch_size.max(1000),
        ..Limits::default()
    };
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::clone(&soft),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await?;
    let audit = if audit_on {
        audit
    } else {
        AuditLog::discarding(Arc::clone(&store), audit.public_key().clone())
    };
    let mut all = vec![soft];
    all.extend(providers);
    let keys = Arc::new(
        KeyManager::open(
            Arc::clone(&store),
            all,
            ProviderName::new("soft")?,
            Arc::clone(&audit),
            metrics,
            custos_core::Settings {
                limits,
                // Every request here signs the same message: measure signing, not the signature
                // cache (`--mode sign-path` measures the cache).
                cache_size: 0,
                ..custos_core::Settings::default()
            },
        )
        .await?,
    );
    let access = Arc::new(
        Access::load(
            Arc::clone(&store),
            audit,
            custos_core::Scopes::default(),
            Arc::new(custos_core::SystemClock),
        )
        .await?,
    );
    let credential = access
        .issue_aws(
            &RequestContext::system("bench"),
            "bench",
            &[Scope::Admin],
            None,
            keys.default_provider().as_ref(),
        )
        .await?;
    let token = credential.token.token.expose_secret().to_owned();
    let aws = (
        credential.access_key_id.clone(),
        credential.secret_access_key.expose_secret().to_owned(),
    );
    let kms = custos_kms_api::router(custos_kms_api::KmsApi::new(
        Arc::clone(&keys),
        Arc::clone(&access),
        "us-east-1".into(),
        "000000000000".into(),
    ));
    let state = AppState::new(Arc::clone(&keys), access);
    let app = custos_http::app(
        state.clone(),
        HttpOptions::default(),
        [custos_server::routes(state), kms],
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    tokio::spawn(custos_http::serve(
        listener,
        app,
        None,
        std::future::pending(),
    ));
    Ok((keys, Target { addr, token, aws }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    custos_http::install_crypto_provider();
    if args.mode == Mode::Softhsm {
        return softhsm::run(&args);
    }
    if args.mode == Mode::Kms {
        return kms::run(args.seconds, args.connections);
    }
    if args.mode == Mode::SignPath {
        return signpath::run(args.seconds);
    }
    let threads = args.threads.unwrap_or_else(cores);
    let message = vec![0x5au8; args.message_bytes];
    println!(
        "custos-bench: {} cores, {threads} threads per runtime, {} s per phase, {} connections",
        cores(),
        args.seconds,
        args.connections
    );

    // 1. Raw ed25519-dalek signing: the ceiling.
    let raw_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let raw = on_all_cores(threads, args.seconds, || {
        std::hint::black_box(raw_key.sign(std::hint::black_box(&message)));
    });
    println!("raw ed25519 sign (all cores)          {raw:>10.0} /s");
    // The same plus verify_strict, still no Custos code: the ceiling for any path that verifies each
    // signature before returning it, as Custos must.
    let raw_public = raw_key.verifying_key();
    let raw_verified = on_all_cores(threads, args.seconds, || {
        let sig = raw_key.sign(std::hint::black_box(&message));
        std::hint::black_box(raw_public.verify_strict(&message, &sig).is_ok());
    });
    println!("raw ed25519 sign + verify (all cores) {raw_verified:>10.0} /s");

    // The server: its own runtime, as `custos serve` runs it.
    let data = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let ctx = RequestContext::system("bench");
    let (keys, target) =
        server_rt.block_on(start_server(data.path(), Vec::new(), args.batch_size, true))?;
    server_rt.block_on(keys.create_key(
        &ctx,
        KeyName::new("bench")?,
        Algorithm::Ed25519,
        vec![],
    ))?;
    // The same server with the audit log discarding records: what the fail-closed log costs.
    let data_off = tempfile::tempdir()?;
    let (keys_off, target_off) = server_rt.block_on(start_server(
        data_off.path(),
        Vec::new(),
        args.batch_size,
        false,
    ))?;
    server_rt.block_on(keys_off.create_key(
        &ctx,
        KeyName::new("bench")?,
        Algorithm::Ed25519,
        vec![],
    ))?;

    // 2. The core sign path in-process: what HTTP adds is measured against this too.
    let name = KeyName::new("bench")?;
    let request = SignRequest {
        input: SignInput::Message(message.clone()),
        hash: None,
        version: None,
        sequence: None,
    };
    let handle = server_rt.handle().clone();
    let core = on_all_cores(threads, args.seconds, || {
        let outcome = handle.block_on(keys.sign(&ctx, &name, &request));
        std::hint::black_box(outcome.is_ok());
    });
    println!("core sign path, in-process (all cores) {core:>10.0} /s   (sign + mandatory verify)");

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let target = Arc::new(target);
    let single_body =
        Bytes::from(serde_json::json!({ "message": b64::encode(&message) }).to_string());
    let items: Vec<_> = (0..args.batch_size)
        .map(|_| serde_json::json!({ "message": b64::encode(&message) }))
        .collect();
    let batch_body = Bytes::from(serde_json::json!({ "items": items }).to_string());

    let target_off = Arc::new(target_off);
    let (http, http_audit_off, batch_requests, latencies) = client_rt
        .block_on(async {
            // Warm up connections and caches.
            closed_loop(
                &target,
                args.connections,
                0.5,
                "/v1/keys/bench/sign",
                single_body.clone(),
            )
            .await?;
            let http = closed_loop(
                &target,
                args.connections,
                args.seconds,
                "/v1/keys/bench/sign",
                single_body.clone(),
            )
            .await?;
            // The same load against the server whose audit log records nothing.
            closed_loop(
                &target_off,
                args.connections,
                0.5,
                "/v1/keys/bench/sign",
                single_body.clone(),
            )
            .await?;
            let http_audit_off = closed_loop(
                &target_off,
                args.connections,
                args.seconds,
                "/v1/keys/bench/sign",
                single_body.clone(),
            )
            .await?;
            let batch = closed_loop(
                &target,
                args.connections.min(8),
                args.seconds,
                "/v1/keys/bench/sign-batch",
                batch_body,
            )
            .await?;
            let latencies = open_loop(
                &target,
                args.connections,
                args.seconds,
                http / 2.0,
                "/v1/keys/bench/sign",
                single_body,
            )
            .await?;
            anyhow::Ok((http, http_audit_off, batch, latencies))
        })
        .context("HTTP phase failed")?;
    let batch_items = batch_requests * args.batch_size as f64;
    let metrics = keys.metrics();
    let (writes, write_secs) = (
        metrics.audit_write_seconds.get_sample_count(),
        metrics.audit_write_seconds.get_sample_sum(),
    );
    let records = metrics.audit_records.get();
    println!(
        "audit writer: {records} records in {writes} group commits (mean {:.1} per commit), mean commit {:.3} ms",
        records as f64 / writes.max(1) as f64,
        write_secs * 1000.0 / writes.max(1) as f64
    );
    println!(
        "http sign, audit log off (comparison)  {http_audit_off:>10.0} /s   audit on/off {:.3}",
        http / http_audit_off
    );
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    println!(
        "http sign, {} connections              {http:>10.0} /s",
        args.connections
    );
    println!(
        "http sign-batch ({} items/request)      {batch_items:>10.0} items/s",
        args.batch_size
    );
    println!(
        "latency at {:.0} req/s (half of peak)   p50 {p50:.2} ms  p99 {p99:.2} ms  ({} requests)",
        http / 2.0,
        latencies.len()
    );
    let report = serde_json::json!({
        "cores": cores(),
        "raw_sign_per_s": raw.round(),
        "raw_sign_verify_per_s": raw_verified.round(),
        "core_sign_per_s": core.round(),
        "http_sign_per_s": http.round(),
        "ratio_single": round3(http / raw),
        "http_sign_audit_off_per_s": http_audit_off.round(),
        "ratio_audit_on_off": round3(http / http_audit_off),
        "ratio_single_vs_core": round3(http / core),
        "ratio_single_vs_sign_verify": round3(http / raw_verified),
        "batch_items_per_s": batch_items.round(),
        "ratio_batch": round3(batch_items / raw),
        "ratio_batch_vs_sign_verify": round3(batch_items / raw_verified),
        "half_load_rps": (http / 2.0).round(),
        "p50_ms": round3(p50),
        "p99_ms": round3(p99),
    });
    println!("{report}");
    drop(server_rt);
    Ok(())
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

//! SoftHSM2 mode: Custos over HTTP with keys in a SoftHSM2 token, against a direct cryptoki loop on the
//! same token with the same number of threads (sessions), in one run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType};
use cryptoki::session::UserType;
use custos_api::b64;
use custos_core::{RequestContext, SignInput, SignRequest};
use custos_provider_pkcs11::{Pkcs11Config, Pkcs11Provider, TokenRef};
use custos_types::{Algorithm, HashAlgorithm, KeyName, ProviderName};
use hyper::body::Bytes;
use secrecy::SecretString;

use crate::{closed_loop, cores, round3, start_server, Args};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "custos-bench";
const PIN: &str = "1234";

/// A private SoftHSM2 token store in a temporary directory; `SOFTHSM2_CONF` points at it.
fn token_store() -> anyhow::Result<tempfile::TempDir> {
    if !std::path::Path::new(MODULE).exists() {
        bail!("SoftHSM2 is not installed (apt-get install softhsm2; scripts/test installs it)");
    }
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens)?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    // Set while this process is still single-threaded, before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--so-pin",
            "5678",
            "--pin",
            PIN,
        ])
        .output()
        .context("softhsm2-util")?;
    if !out.status.success() {
        bail!("softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir)
}

/// Direct cryptoki: one logged-in session per thread, signing in a loop for `seconds`. Ops per second.
fn direct(
    threads: usize,
    seconds: f64,
    algorithm: Algorithm,
    message: &[u8],
) -> anyhow::Result<f64> {
    let ctx = Pkcs11::new(MODULE)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => return Err(e.into()),
    }
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == LABEL)
                .unwrap_or(false)
        })
        .context("bench token not found")?;
    let login = ctx.open_rw_session(slot)?;
    login.login(UserType::User, Some(&SecretString::from(PIN.to_owned())))?;
    let (gen, key_type, params, data) = match algorithm {
        Algorithm::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            KeyType::EC_EDWARDS,
            vec![0x06, 0x03, 0x2b, 0x65, 0x70],
            message.to_vec(),
        ),
        _ => (
            Mechanism::EccKeyPairGen,
            KeyType::EC,
            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            HashAlgorithm::Sha256.digest(message).to_vec(),
        ),
    };
    // The same kind of key Custos makes: a persistent, private, sensitive, non-extractable token object.
    let (_, private) = login.generate_key_pair(
        &gen,
        &[
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(key_type),
            Attribute::EcParams(params),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(key_type),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ],
    )?;
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut workers = Vec::new();
        for _ in 0..threads {
            let session = ctx.open_rw_session(slot)?;
            let (stop, count, data) = (&stop, &count, &data);
            workers.push(s.spawn(move || -> anyhow::Result<()> {
                // Mechanisms hold raw pointers, so each thread builds its own.
                let mechanism = match algorithm {
                    Algorithm::Ed25519 => {
                        Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
                    }
                    _ => Mechanism::Ecdsa,
                };
                let mechanism = &mechanism;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    session.sign(mechanism, private, data)?;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }));
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(cores);
    let message = vec![0x5au8; args.message_bytes];
    let _store = token_store()?;
    println!(
        "custos-bench softhsm: {} cores, {threads} sessions/threads, {} s per phase, {} connections",
        cores(),
        args.seconds,
        args.connections
    );
    let mut direct_rates = Vec::new();
    for algorithm in [Algorithm::Ed25519, Algorithm::P256] {
        let rate = direct(threads, args.seconds, algorithm, &message)?;
        println!("direct cryptoki {algorithm:<9} ({threads} threads)      {rate:>8.0} /s");
        direct_rates.push(rate);
    }

    let data = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let hsm = Pkcs11Provider::new(
        ProviderName::new("hsm")?,
        Pkcs11Config {
            module: PathBuf::from(MODULE),
            token: TokenRef::Label(LABEL.to_owned()),
            pin: SecretString::from(PIN.to_owned()),
            sessions: threads,
        },
    )?;
    let (keys, target) = server_rt.block_on(start_server(
        data.path(),
        vec![Arc::new(hsm)],
        args.batch_size,
        true,
    ))?;
    let hsm = ProviderName::new("hsm")?;
    server_rt.block_on(keys.create_key(
        &RequestContext::system("bench"),
        KeyName::new("hsm-ed25519")?,
        Algorithm::Ed25519,
        vec![hsm.clone()],
    ))?;
    server_rt.block_on(keys.create_key(
        &RequestContext::system("bench"),
        KeyName::new("hsm-p256")?,
        Algorithm::P256,
        vec![hsm],
    ))?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let target = Arc::new(target);
    let body = Bytes::from(serde_json::json!({ "message": b64::encode(&message) }).to_string());
    let mut report =
        serde_json::json!({ "mode": "softhsm", "cores": cores(), "sessions": threads });
    for (algorithm, direct_rate) in [Algorithm::Ed25519, Algorithm::P256]
        .into_iter()
        .zip(direct_rates)
    {
        // In-process: the core sign path (registry, PKCS#11 provider, local verification), no HTTP.
        let name = KeyName::new(format!("hsm-{algorithm}"))?;
        let request = SignRequest {
            input: SignInput::Message(message.clone()),
            hash: None,
            version: None,
            sequence: None,
        };
        let core_rate = server_rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            let tasks: Vec<_> = (0..args.connections)
                .map(|_| {
                    let (keys, name, request, stop) = (
                        Arc::clone(&keys),
                        name.clone(),
                        request.clone(),
                        Arc::clone(&stop),
                    );
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            keys.sign(&RequestContext::system("bench"), &name, &request)
                                .await?;
                            n += 1;
                        }
                        anyhow::Ok(n)
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let mut total = 0;
            for task in tasks {
                total += task.await??;
            }
            anyhow::Ok(total as f64 / start.elapsed().as_secs_f64())
        })?;
        println!(
            "custos core {algorithm:<9} (in-process)      {core_rate:>8.0} /s   ratio {:.3}",
            core_rate / direct_rate
        );
        report[format!("core_{algorithm}_per_s")] = core_rate.round().into();
        let path = format!("/v1/keys/hsm-{algorithm}/sign");
        let rate = client_rt.block_on(async {
            closed_loop(&target, args.connections, 0.5, &path, body.clone()).await?;
            closed_loop(&target, args.connections, args.seconds, &path, body.clone()).await
        })?;
        let ratio = rate / direct_rate;
        println!(
            "custos http {algorithm:<9} ({} connections)  {rate:>8.0} /s   ratio {ratio:.3}",
            args.connections
        );
        report[format!("direct_{algorithm}_per_s")] = direct_rate.round().into();
        report[format!("custos_{algorithm}_per_s")] = rate.round().into();
        report[format!("ratio_{algorithm}")] = round3(ratio).into();
    }
    println!("{report}");
    drop(server_rt);
    Ok(())
}

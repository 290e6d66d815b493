//! `--mode sign-path`: the signature cache, the equivocation guard and failover, measured in one run.
//!
//! Every phase runs the real `KeyManager` in-process with real software providers on a real SQLite store
//! and the fail-closed audit log, so the ratios compare like with like:
//! 1. cache: the same message signed over and over, with the cache (hits) and without (a provider call
//!    and a verification each time);
//! 2. guard: 16 keys, each signed by its own sequential caller (a sequencer per key), with a sequence
//!    on every request (a durable watermark per signature, grouped into shared transactions) and
//!    without; then one key alone, where nothing can be grouped;
//! 3. failover: a chain key under load from 8 callers; the primary hangs; the time from the hang to the
//!    first signature from the secondary, minus the configured retry budget, and the requests that
//!    failed meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_core::{
    AuditConfig, AuditLog, FailoverConfig, KeyManager, Metrics, RequestContext, SignInput,
    SignRequest,
};
use custos_provider::fault::{Fault, FaultyProvider};
use custos_provider::KeyProvider;
use custos_provider_soft::{KdfParams, MemoryProvider, SoftProvider};
use custos_store::{SqliteStore, Store};
use custos_types::{Algorithm, KeyName, ProviderName};

fn ctx() -> RequestContext {
    RequestContext::system("bench")
}

fn request(message: &[u8], sequence: Option<u64>) -> SignRequest {
    SignRequest {
        input: SignInput::Message(message.to_vec()),
        hash: None,
        version: None,
        sequence,
    }
}

struct Rig {
    km: Arc<KeyManager>,
    primary: Arc<FaultyProvider>,
    _dir: tempfile::TempDir,
}

async fn rig(cache: usize, failover: FailoverConfig) -> anyhow::Result<Rig> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir.path())?);
    let password = secrecy::SecretString::from("bench".to_owned());
    let soft = |name: &'static str| {
        let (store, password) = (Arc::clone(&store), password.clone());
        async move {
            SoftProvider::open(
                ProviderName::new(name)?,
                store,
                &password,
                KdfParams::default(),
            )
            .await
            .map_err(anyhow::Error::from)
        }
    };
    let primary = FaultyProvider::new(Arc::new(soft("primary").await?));
    let secondary: Arc<dyn KeyProvider> = Arc::new(soft("secondary").await?);
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(
        Arc::clone(&store),
        Arc::new(soft("audit").await?),
        AuditConfig::default(),
        Arc::clone(&metrics),
    )
    .await?;
    let km = KeyManager::open(
        store,
        vec![primary.clone(), secondary],
        ProviderName::new("primary")?,
        audit,
        metrics,
        custos_core::Settings {
            failover,
            emergency_provider: Some(Arc::new(MemoryProvider::new(ProviderName::new(
                "emergency",
            )?))),
            cache_size: cache,
            ..custos_core::Settings::default()
        },
    )
    .await?;
    Ok(Rig {
        km: Arc::new(km),
        primary,
        _dir: dir,
    })
}

/// Runs `callers` tasks, each calling `work(caller, n)` in a loop for `seconds`; returns successful calls
/// per second. A failed call is reported and not counted.
async fn throughput<F, Fut>(callers: usize, seconds: f64, work: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), custos_core::CoreError>> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (work, stop, count) = (Arc::clone(&work), Arc::clone(&stop), Arc::clone(&count));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match work(caller, n).await {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => eprintln!("sign failed: {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn keys(km: &KeyManager, n: usize) -> anyhow::Result<Vec<KeyName>> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = KeyName::new(format!("k{i}"))?;
        km.create_key(&ctx(), name.clone(), Algorithm::Ed25519, vec![])
            .await?;
        names.push(name);
    }
    Ok(names)
}

pub fn run(seconds: f64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "custos-bench sign-path: {} cores, {seconds} s per phase",
            crate::cores()
        );
        // 1. Cache.
        let mut results = Vec::new();
        for cache in [0, custos_core::DEFAULT_CACHE_SIZE] {
            let rig = rig(cache, FailoverConfig::default()).await?;
            let name = keys(&rig.km, 1).await?.remove(0);
            let km = Arc::clone(&rig.km);
            let rate = throughput(16, seconds, move |_, _| {
                let (km, name) = (Arc::clone(&km), name.clone());
                async move {
                    km.sign(&ctx(), &name, &request(b"the same block", None))
                        .await
                        .map(drop)
                }
            })
            .await;
            results.push(rate);
        }
        let (uncached, cached) = (results[0], results[1]);
        println!("uncached sign (same message)          {uncached:>10.0} /s");
        println!("cache hit                             {cached:>10.0} /s");

        // 2. Guard.
        let mut guard = Vec::new();
        for (key_count, label) in [(16usize, "16 keys"), (1, "1 key")] {
            for guarded in [false, true] {
                let rig = rig(0, FailoverConfig::default()).await?;
                let names = Arc::new(keys(&rig.km, key_count).await?);
                let km = Arc::clone(&rig.km);
                // One sequential caller per key, as a sequencer signs its blocks in order.
                let rate = throughput(key_count, seconds, move |caller, n| {
                    let (km, names) = (Arc::clone(&km), Arc::clone(&names));
                    async move {
                        let message = n.to_be_bytes();
                        km.sign(
                            &ctx(),
                            &names[caller],
                            &request(&message, guarded.then_some(n)),
                        )
                        .await
                        .map(drop)
                    }
                })
                .await;
                println!(
                    "{label:<7} {:<9} sign                {rate:>10.0} /s",
                    if guarded { "guarded" } else { "unguarded" }
                );
                guard.push(rate);
            }
        }

        // 3. Failover: the primary hangs under load.
        let failover = FailoverConfig {
            provider_timeout_ms: 100,
            max_primary_retries: 1,
            primary_retry_interval_ms: 20,
            breaker_failures: 2,
            ..FailoverConfig::default()
        };
        let budget = failover.retry_budget(0);
        let rig = rig(0, failover).await?;
        let name = KeyName::new("chain")?;
        rig.km
            .create_key(
                &ctx(),
                name.clone(),
                Algorithm::Ed25519,
                vec![
                    ProviderName::new("primary")?,
                    ProviderName::new("secondary")?,
                ],
            )
            .await?;
        let hung_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let first_secondary = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let failed = Arc::new(AtomicU64::new(0));
        let km = Arc::clone(&rig.km);
        let (h, f, fail) = (
            Arc::clone(&hung_at),
            Arc::clone(&first_secondary),
            Arc::clone(&failed),
        );
        let load = tokio::spawn(throughput(8, seconds.max(2.0), move |_, n| {
            let (km, name, h, f, fail) = (
                Arc::clone(&km),
                name.clone(),
                Arc::clone(&h),
                Arc::clone(&f),
                Arc::clone(&fail),
            );
            async move {
                match km
                    .sign(&ctx(), &name, &request(&n.to_be_bytes(), None))
                    .await
                {
                    Ok(out) if out.provider.as_str() == "secondary" => {
                        let hung = *h.lock().unwrap_or_else(|p| p.into_inner());
                        if hung.is_some() {
                            f.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        fail.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            }
        }));
        tokio::time::sleep(Duration::from_secs_f64(seconds.max(2.0) / 3.0)).await;
        *hung_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        rig.primary.set(Fault::Hang);
        let _ = load.await;
        let hung = hung_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now);
        let switch = first_secondary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.duration_since(hung));
        let switch_ms = switch.map(|d| d.as_secs_f64() * 1000.0);
        let over_budget_ms = switch.map(|d| (d.as_secs_f64() - budget.as_secs_f64()) * 1000.0);
        println!(
            "failover: primary hangs; first secondary signature after {} ms; retry budget {} ms; \
             over budget {} ms; failed requests {}",
            switch_ms.map_or("never".into(), |v| format!("{v:.1}")),
            budget.as_millis(),
            over_budget_ms.map_or("-".into(), |v| format!("{v:.1}")),
            failed.load(Ordering::Relaxed)
        );
        println!(
            "{}",
            serde_json::json!({
                "mode": "sign-path",
                "uncached_per_s": uncached.round(),
                "cache_hit_per_s": cached.round(),
                "ratio_cache_hit_vs_uncached": cached / uncached,
                "guard_16_keys_ratio": guard[1] / guard[0],
                "guard_1_key_ratio": guard[3] / guard[2],
                "failover_switch_ms": switch_ms,
                "failover_retry_budget_ms": budget.as_millis() as u64,
                "failover_over_budget_ms": over_budget_ms,
                "failover_failed_requests": failed.load(Ordering::Relaxed),
            })
        );
        anyhow::Ok(())
    })
}

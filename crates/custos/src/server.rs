//! Opening a data directory and running the server: `custos serve`, `custos dev` and `custos init`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use custos_core::{
    Access, AuditConfig, AuditLog, AuditSink, KeyManager, Limits, Metrics, RequestContext, Scope,
};
use custos_provider::{KeyProvider, ProviderError};
use custos_provider_soft::SoftProvider;
use custos_server::{AppState, HttpOptions, TlsFiles};
use custos_store::{SqliteStore, Store};
use custos_types::ProviderName;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{Config, ProviderConfig};

/// Everything a running server needs, opened from the data directory.
pub struct Opened {
    pub keys: Arc<KeyManager>,
    pub access: Arc<Access>,
    pub store: Arc<dyn Store>,
}

/// Whether to create the data directory when it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

/// Opens the store, unlocks every provider and loads keys and tokens.
pub async fn open(
    config: &Config,
    password: &SecretString,
    create: Create,
) -> anyhow::Result<Opened> {
    let store = match create {
        Create::Yes => SqliteStore::create(&config.data_dir),
        Create::No => SqliteStore::open(&config.data_dir),
    }
    .with_context(|| {
        format!(
            "cannot open the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store: Arc<dyn Store> = Arc::new(store);
    let mut providers: Vec<Arc<dyn KeyProvider>> = Vec::new();
    for provider in &config.providers {
        let name = ProviderName::new(provider.name()).with_context(|| {
            format!("invalid provider name {:?} in the config", provider.name())
        })?;
        match provider {
            ProviderConfig::Soft { kdf, .. } => {
                let soft = SoftProvider::open(
                    name.clone(),
                    Arc::clone(&store),
                    password,
                    kdf.unwrap_or_default(),
                )
                .await
                .map_err(|e| match e {
                    ProviderError::Locked(_) => anyhow::anyhow!(
                        "{e}. Nothing was changed. Check CUSTOS_MASTER_PASSWORD (or the \
                             master_password reference in the config)."
                    ),
                    other => anyhow::anyhow!("cannot open provider {name}: {other}"),
                })?;
                providers.push(Arc::new(soft));
            }
            ProviderConfig::Pkcs11 {
                module,
                token_label,
                slot,
                pin,
                sessions,
                ..
            } => {
                providers.push(pkcs11(
                    name,
                    module,
                    token_label.as_deref(),
                    *slot,
                    pin,
                    *sessions,
                )?);
            }
            ProviderConfig::Yubihsm {
                connector,
                auth_key_id,
                password,
                domain,
                ..
            } => {
                providers.push(yubihsm(name, connector, *auth_key_id, password, *domain)?);
            }
            ProviderConfig::Awskms {
                region,
                endpoint,
                limits,
                ..
            } => {
                providers.push(awskms(name, region.as_deref(), endpoint.as_deref(), limits).await?);
            }
        }
    }
    let default =
        ProviderName::new(config.default_provider()).context("invalid default_provider")?;
    let limits = Limits {
        max_message_bytes: config.max_message_bytes,
        max_batch_items: config.max_batch_items,
    };
    let default_provider = providers
        .iter()
        .find(|p| *p.name() == default)
        .cloned()
        .with_context(|| {
            format!("default_provider {default} is not among the configured providers")
        })?;
    let metrics = Arc::new(Metrics::new());
    let audit_config = AuditConfig {
        checkpoint_every: config.audit.checkpoint_every,
        checkpoint_interval: std::time::Duration::from_secs(
            config.audit.checkpoint_interval_seconds,
        ),
        sink: match config.audit.sink.as_deref() {
            None | Some("none") => None,
            Some("stdout") => Some(AuditSink::Stdout),
            Some("syslog") => Some(AuditSink::Syslog),
            Some(other) => bail!("audit.sink must be stdout, syslog or none, not {other:?}"),
        },
    };
    let audit = AuditLog::open(
        Arc::clone(&store),
        default_provider,
        audit_config,
        Arc::clone(&metrics),
    )
    .await
    .context("cannot open the audit log")?;
    let webhooks = config
        .webhooks
        .iter()
        .map(|w| {
            Ok(custos_core::Webhook {
                url: w.url.clone(),
                events: w.events.clone(),
                secret: w
                    .secret
                    .as_ref()
                    .map(crate::config::SecretRef::read)
                    .transpose()?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = KeyManager::load(
        Arc::clone(&store),
        providers,
        default,
        limits,
        Arc::clone(&audit),
        metrics,
    )
    .await?
    .with_failover(
        config.failover.clone(),
        Arc::new(custos_provider_soft::MemoryProvider::new(
            ProviderName::new(custos_core::EMERGENCY_PROVIDER)?,
        )),
    )
    .with_cache(config.max_cache_size)
    .with_events(custos_core::Events::webhooks(webhooks));
    let access = Access::load(Arc::clone(&store), audit).await?;
    Ok(Opened {
        keys: Arc::new(keys),
        access: Arc::new(access),
        store,
    })
}

#[cfg(feature = "pkcs11")]
fn pkcs11(
    name: ProviderName,
    module: &Path,
    token_label: Option<&str>,
    slot: Option<u64>,
    pin: &crate::config::SecretRef,
    sessions: Option<usize>,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    use custos_provider_pkcs11::{Pkcs11Config, Pkcs11Provider, TokenRef};
    let token = match (token_label, slot) {
        (Some(label), None) => TokenRef::Label(label.to_owned()),
        (None, Some(slot)) => TokenRef::Slot(slot),
        _ => bail!("provider {name}: give exactly one of token_label and slot"),
    };
    let config = Pkcs11Config {
        module: module.to_path_buf(),
        token,
        pin: pin
            .read()
            .with_context(|| format!("provider {name}: cannot read the PIN"))?,
        sessions: sessions.unwrap_or(4),
    };
    let provider = Pkcs11Provider::new(name.clone(), config)
        .map_err(|e| anyhow::anyhow!("cannot open PKCS#11 provider {name}: {e}"))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11(
    name: ProviderName,
    _: &Path,
    _: Option<&str>,
    _: Option<u64>,
    _: &crate::config::SecretRef,
    _: Option<usize>,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    bail!("provider {name}: this build of custos has no PKCS#11 support (cargo feature `pkcs11`)")
}

#[cfg(feature = "yubihsm")]
fn yubihsm(
    name: ProviderName,
    connector: &str,
    auth_key_id: u16,
    password: &crate::config::SecretRef,
    domain: u8,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    use custos_provider_yubihsm::{YubiHsmConfig, YubiHsmProvider};
    let (addr, port) = connector
        .strip_prefix("http://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
        .with_context(|| format!("provider {name}: connector must look like http://HOST:PORT"))?;
    let http = yubihsm::HttpConfig {
        addr,
        port,
        timeout_ms: 5000,
    };
    let config = YubiHsmConfig {
        auth_key_id,
        password: password
            .read()
            .with_context(|| format!("provider {name}: cannot read the password"))?,
        domain,
    };
    let provider = YubiHsmProvider::new(name.clone(), yubihsm::Connector::http(&http), config)
        .map_err(|e| anyhow::anyhow!("cannot open YubiHSM provider {name}: {e}"))?;
    Ok(Arc::new(provider))
}

#[cfg(not(feature = "yubihsm"))]
fn yubihsm(
    name: ProviderName,
    _: &str,
    _: u16,
    _: &crate::config::SecretRef,
    _: u8,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    bail!("provider {name}: this build of custos has no YubiHSM support (cargo feature `yubihsm`)")
}

#[cfg(feature = "awskms")]
async fn awskms(
    name: ProviderName,
    region: Option<&str>,
    endpoint: Option<&str>,
    limits: &crate::config::KmsLimitsConfig,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    use custos_provider_awskms::{KmsLimits, KmsProvider};
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        bail!("provider {name}: no AWS region: set `region` in the config or AWS_REGION");
    }
    let defaults = KmsLimits::default();
    let limits = KmsLimits {
        requests_per_second: limits
            .requests_per_second
            .unwrap_or(defaults.requests_per_second),
        burst: limits.burst.unwrap_or(defaults.burst),
        max_concurrency: limits.max_concurrency.unwrap_or(defaults.max_concurrency),
        max_wait: limits
            .max_wait_ms
            .map_or(defaults.max_wait, std::time::Duration::from_millis),
        max_attempts: limits.max_attempts.unwrap_or(defaults.max_attempts),
    };
    Ok(Arc::new(KmsProvider::new(name, &sdk, limits)))
}

#[cfg(not(feature = "awskms"))]
async fn awskms(
    name: ProviderName,
    _: Option<&str>,
    _: Option<&str>,
    _: &crate::config::KmsLimitsConfig,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    bail!("provider {name}: this build of custos has no AWS KMS support (cargo feature `awskms`)")
}

/// Issues an admin token and returns it.
pub async fn issue_admin(access: &Access, name: &str) -> anyhow::Result<SecretString> {
    let ctx = RequestContext::system(&format!("issue-{name}-token"));
    Ok(access.issue(&ctx, name, &[Scope::Admin], None).await?.token)
}

/// `custos init`: creates the data directory and prints the root token once.
pub async fn init(config: &Config, password: &SecretString) -> anyhow::Result<()> {
    let opened = open(config, password, Create::Yes).await?;
    if opened.access.has_tokens() {
        bail!(
            "{} is initialised already; its root token was shown when it was created",
            config.data_dir.display()
        );
    }
    let token = issue_admin(&opened.access, "root").await?;
    out!("Initialised Custos in {}.", config.data_dir.display());
    out!("Root token (shown once; Custos keeps only its hash):");
    out!();
    out!("  {}", token.expose_secret());
    out!();
    out!("Start the server with `custos serve` and use the token as CUSTOS_TOKEN.");
    Ok(())
}

/// Binds the listener; a clear message when the address is taken.
pub fn bind(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr}: is another server using it? Choose another with --listen")
    })
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(
    opened: Opened,
    config: &Config,
    listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    // Token last-used times are kept in memory and written every 30 s and at shutdown.
    let access = Arc::clone(&opened.access);
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            if let Err(e) = access.flush_last_used().await {
                tracing::warn!(error = %e, "cannot record token last-used times");
            }
        }
    });
    // A rotation that a crash interrupted is finished before anything is served.
    let system = custos_core::RequestContext::system("rotation");
    let (resumed, pending) = opened
        .keys
        .resume_rotations(&system)
        .await
        .context("cannot read the recorded rotations")?;
    if resumed > 0 {
        out!("Finished {resumed} rotation(s) interrupted by a crash");
    }
    if pending > 0 {
        out!(
            "WARNING: {pending} interrupted rotation(s) cannot be finished yet (see the log); \
             they are retried by `custos key rotate` and by the scheduler"
        );
    }
    let scheduler = config.rotation.enabled.then(|| {
        let keys = Arc::clone(&opened.keys);
        let every = std::time::Duration::from_secs(config.rotation.check_interval_seconds.max(1));
        let mut id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let holder = format!("{}-{}", std::process::id(), hex::encode(id));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // The lease outlives a few missed checks, so a busy holder keeps it.
                match keys.run_scheduled(&system, &holder, every * 3).await {
                    Ok(rotated) if !rotated.is_empty() => {
                        tracing::info!(?rotated, "scheduled rotation done");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "rotation scheduler pass failed"),
                }
            }
        })
    });
    let kms = if config.kms_api.enabled {
        let sealer = Arc::clone(opened.keys.default_provider());
        let count = opened
            .access
            .load_aws(sealer.as_ref())
            .await
            .context("cannot unseal the AWS access keys of the KMS-compatible API")?;
        tracing::info!(access_keys = count, "KMS-compatible API on POST /");
        let api = custos_kms_api::KmsApi::new(
            Arc::clone(&opened.keys),
            Arc::clone(&opened.access),
            Arc::clone(&opened.store),
            sealer,
            config.kms_api.region.clone(),
            config.kms_api.account.clone(),
        );
        custos_kms_api::router(api)
    } else {
        Default::default()
    };
    let access = Arc::clone(&opened.access);
    let audit = Arc::clone(opened.keys.audit());
    let state = AppState::new(opened.keys, opened.access);
    let extra = if config.bitgo_api.enabled {
        let prefix = &config.bitgo_api.prefix;
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.starts_with("/v1")
        {
            anyhow::bail!(
                "bitgo_api.prefix {prefix:?} must start with '/', not end with '/', and not be under /v1"
            );
        }
        let mtls = config
            .tls
            .as_ref()
            .is_some_and(|t| t.client_allowlist_file.is_some());
        if config.bitgo_api.retrieve_needs_client_cert && !mtls {
            anyhow::bail!(
                "bitgo_api.retrieve_needs_client_cert needs mutual TLS: set tls.client_allowlist_file"
            );
        }
        tracing::info!(%prefix, "BitGo Key Provider API on");
        let api = custos_bitgo_api::BitgoApi::new(
            state.clone(),
            Arc::clone(&opened.store),
            config.bitgo_api.retrieve_needs_client_cert,
        );
        kms.nest(prefix, custos_bitgo_api::router(api))
    } else {
        kms
    };
    let app = custos_server::router_with(
        state,
        HttpOptions {
            max_body_bytes: config.max_body_bytes,
            max_concurrent_requests: config.max_concurrent_requests,
            request_timeout: std::time::Duration::from_millis(config.request_timeout_ms),
            auth_failure_rate: config.auth_failure_limit.as_ref().map_or((10, 20), |r| {
                (
                    r.requests_per_second,
                    r.burst.unwrap_or(r.requests_per_second),
                )
            }),
            per_token_rate: config.rate_limit.as_ref().map(|r| {
                (
                    r.requests_per_second,
                    r.burst.unwrap_or(r.requests_per_second),
                )
            }),
        },
        extra,
    );
    let tls = config.tls.as_ref().map(|t| TlsFiles {
        cert: t.cert_file.clone(),
        key: t.key_file.clone(),
        client_allowlist: t.client_allowlist_file.clone(),
        reload_interval: std::time::Duration::from_secs(t.reload_interval_seconds.max(1)),
        audit: Some(audit),
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = format!("{scheme}://{}", listener.local_addr()?);
    tracing::info!(%address, "serving");
    out!("Custos listening on {address}");
    let served = custos_server::serve(listener, app, tls, shutdown_signal())
        .await
        .context("the server stopped with an error");
    flusher.abort();
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    access.flush_last_used().await.ok();
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// The master password of a `custos dev` data directory, kept beside it (mode 0600): dev data only.
pub fn dev_password(dir: &Path) -> anyhow::Result<SecretString> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("dev-master-password");
    if path.exists() {
        return crate::config::SecretRef::File(path).read();
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 24];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let password = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(password.as_bytes())?;
    file.sync_all()?;
    Ok(SecretString::from(password))
}

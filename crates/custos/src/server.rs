//! Opening a data directory and running the server: `custos serve`, `custos dev` and `custos init`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use custos_core::{
    Access, AuditConfig, AuditLog, Events, KeyManager, Limits, Metrics, RequestContext, Scope,
    Scopes, Settings, SystemClock,
};
use custos_http::{AppState, HttpOptions, TlsFiles};
use custos_store::{SqliteStore, Store};
use custos_types::ProviderName;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::Config;
use crate::providers::{self, BuildEnv};
use crate::webhooks::{Webhook, WebhookSink};

/// Everything a running server needs, opened from the data directory.
pub struct Opened {
    pub keys: Arc<KeyManager>,
    pub access: Arc<Access>,
}

/// Whether to create the data directory when it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

/// The scopes tokens may carry here: the built-in ones and those of the surfaces the config turns on.
fn scopes(config: &Config) -> Scopes {
    let bitgo = config
        .bitgo_api
        .enabled
        .then_some(custos_bitgo_api::SCOPES)
        .into_iter()
        .flatten();
    Scopes::new(bitgo)
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
    let env = BuildEnv {
        store: &store,
        password,
    };
    let mut built = Vec::new();
    for provider in &config.providers {
        let name = ProviderName::new(provider.name()).with_context(|| {
            format!("invalid provider name {:?} in the config", provider.name())
        })?;
        built.push(providers::build(&provider.kind, name, &provider.settings, &env).await?);
    }
    let default =
        ProviderName::new(config.default_provider()).context("invalid default_provider")?;
    let default_provider = built
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
            Some("stdout") => Some(custos_core::AuditSink::Stdout),
            Some("syslog") => Some(custos_core::AuditSink::Syslog),
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
            Ok(Webhook {
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
    let events = if webhooks.is_empty() {
        Events::none()
    } else {
        Events::none().with(Arc::new(WebhookSink::start(webhooks)))
    };
    let settings = Settings {
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
            max_batch_items: config.max_batch_items,
            max_sequence_jump: config.max_sequence_jump,
        },
        failover: config.failover.clone(),
        emergency_provider: Some(Arc::new(custos_provider_soft::MemoryProvider::new(
            ProviderName::new(custos_core::EMERGENCY_PROVIDER)?,
        ))),
        cache_size: config.max_cache_size,
        events,
        // A test hook of debug builds only: stop at a rotation step so a test can kill -9 there.
        pause_at: if cfg!(debug_assertions) {
            std::env::var("CUSTOS_PAUSE_AT").ok()
        } else {
            None
        },
        ..Settings::default()
    };
    let keys = KeyManager::open(
        Arc::clone(&store),
        built,
        default,
        Arc::clone(&audit),
        metrics,
        settings,
    )
    .await?;
    let access = Access::load(store, audit, scopes(config), Arc::new(SystemClock)).await?;
    Ok(Opened {
        keys: Arc::new(keys),
        access: Arc::new(access),
    })
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
    let system = RequestContext::system("rotation");
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
        let every = std::time::Duration::from_secs(config.rotation.check_interval_seconds.max(1));
        opened.keys.spawn_scheduler(every)
    });
    let state = AppState::new(Arc::clone(&opened.keys), Arc::clone(&opened.access));
    let mut surfaces = vec![custos_server::routes(state.clone())];
    if config.kms_api.enabled {
        let count = opened
            .access
            .load_aws(opened.keys.default_provider().as_ref())
            .await
            .context("cannot unseal the AWS access keys of the KMS-compatible API")?;
        tracing::info!(access_keys = count, "KMS-compatible API on POST /");
        surfaces.push(custos_kms_api::router(custos_kms_api::KmsApi::new(
            Arc::clone(&opened.keys),
            Arc::clone(&opened.access),
            config.kms_api.region.clone(),
            config.kms_api.account.clone(),
        )));
    }
    if config.bitgo_api.enabled {
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
            config.bitgo_api.retrieve_needs_client_cert,
        );
        surfaces.push(axum::Router::new().nest(prefix, custos_bitgo_api::router(api)));
    }
    let options = HttpOptions {
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
    };
    let app = custos_http::app(state, options, surfaces);
    let tls = config.tls.as_ref().map(|t| TlsFiles {
        cert: t.cert_file.clone(),
        key: t.key_file.clone(),
        client_allowlist: t.client_allowlist_file.clone(),
        reload_interval: std::time::Duration::from_secs(t.reload_interval_seconds.max(1)),
        audit: Some(Arc::clone(opened.keys.audit())),
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = format!("{scheme}://{}", listener.local_addr()?);
    tracing::info!(%address, "serving");
    out!("Custos listening on {address}");
    let served = custos_http::serve(listener, app, tls, shutdown_signal())
        .await
        .context("the server stopped with an error");
    flusher.abort();
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    opened.access.flush_last_used().await.ok();
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

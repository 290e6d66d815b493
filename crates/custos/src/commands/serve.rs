//! `custos serve`, `custos dev` and `custos init`: open a data directory and serve it, or create one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use secrecy::ExposeSecret as _;

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::server;

/// Sets up logging for a server: `RUST_LOG` (default `info`), JSON lines with `CUSTOS_LOG_FORMAT=json`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CUSTOS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The config file with the command line's overrides.
pub fn load(path: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = Config::load(path.as_deref())?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    Ok(config)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let mut config = load(args.config, args.data_dir)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let password = config.master_password.read()?;
    let opened = server::open(&config, &password, server::Create::No).await?;
    if !opened.access.has_tokens() {
        anyhow::bail!(
            "{} has no tokens: run `custos init` first",
            config.data_dir.display()
        );
    }
    let listener = server::bind(config.listen)?;
    server::run(opened, &config, listener).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn init(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load(config, data_dir)?;
    let password = config.master_password.read()?;
    server::init(&config, &password).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn dev(listen: SocketAddr, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_logging();
    let temp;
    let dir = match data_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::Builder::new().prefix("custos-dev-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let password = server::dev_password(&dir)?;
    let config = Config {
        data_dir: dir.clone(),
        listen,
        ..Config::default()
    };
    let opened = server::open(&config, &password, server::Create::Yes).await?;
    let token = server::issue_admin(&opened.access, "dev").await?;
    let listener = server::bind(listen)?;
    let addr = format!("http://{}", listener.local_addr()?);
    let token = token.expose_secret();
    out!(
        "Custos dev server: data in {} (throw-away; not for real keys)",
        dir.display()
    );
    out!();
    out!("export CUSTOS_ADDR={addr}");
    out!("export CUSTOS_TOKEN={token}");
    out!();
    out!("Then, in another shell:");
    out!("  custos key create seq-1 --algorithm ed25519");
    out!("  printf 'block 1' > block.bin");
    out!("  custos sign seq-1 --message-file block.bin");
    out!("  custos verify seq-1 --message-file block.bin --signature <signature from above>");
    out!();
    out!("Or with curl:");
    out!(
        "  curl -s -H \"Authorization: Bearer $CUSTOS_TOKEN\" $CUSTOS_ADDR/v1/keys/seq-1/sign -d '{{\"message\":\"'$(base64 -w0 block.bin)'\"}}'"
    );
    out!();
    out!("Ctrl-C stops the server.");
    server::run(opened, &config, listener).await?;
    Ok(ExitCode::SUCCESS)
}

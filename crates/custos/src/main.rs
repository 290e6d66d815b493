//! `custos`: run the Custos server (`serve`, `dev`, `init`) and talk to one (keys, sign, verify, tokens).

/// Prints a line to standard output; a closed pipe (`custos key list | head -1`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod client;
mod config;
mod convert;
mod server;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use custos_api::{
    b64, CreateKeyRequest, CreateTokenRequest, CreateTokenResponse, KeyList, KeyView,
    SignRequestBody, SignResponse, TokenList, TokenView, VerifyRequestBody, VerifyResponse,
};
use reqwest::Method;
use secrecy::ExposeSecret as _;

use crate::client::Client;
use crate::config::Config;

/// Custos: a key manager and signing service. Keys stay in their provider; every signature is
/// authenticated, checked and verified before it is returned.
#[derive(Debug, Parser)]
#[command(name = "custos", version, about, long_about = None, after_help = "Start here: `custos dev`.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server from a config file (default: data in ./custos-data, listen on 127.0.0.1:8200).
    ///
    /// The master password comes from CUSTOS_MASTER_PASSWORD, or from the config's
    /// `master_password = { file = "..." }`. The data directory must exist: create it with `custos init`.
    Serve(ServeArgs),
    /// Run a throw-away server for development and print what to type next.
    ///
    /// Generates a master password and an admin token. Data goes to a temporary directory that is removed
    /// on exit, unless --data-dir is given. Not for real keys.
    Dev {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8200")]
        listen: SocketAddr,
        /// Keep data in this directory (the dev master password is stored beside it).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create a data directory and print its root token once.
    Init {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create, list, show and rotate keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign a message (or an ECDSA digest); prints the signature, the key version and the provider.
    Sign {
        /// The key.
        name: String,
        #[command(flatten)]
        input: InputArgs,
        #[command(flatten)]
        options: SignOptions,
        /// The equivocation guard: a sequence such as a block height; Custos refuses to sign another
        /// payload at this sequence or any payload below the highest signed.
        #[arg(long)]
        sequence: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify a signature; exits 0 when valid and 1 when not.
    Verify {
        /// The key.
        name: String,
        #[command(flatten)]
        input: InputArgs,
        /// The signature, base64.
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        options: SignOptions,
        #[command(flatten)]
        conn: Conn,
    },
    /// Issue, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Query, export and verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Work with configuration files: convert another key manager's configuration to Custos TOML.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// IBM Hyper Protect Virtual Servers: make a contract, decrypt hyper-protect-basic blobs.
    #[cfg(feature = "hpvs")]
    #[command(subcommand)]
    Hpvs(HpvsCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the Custos TOML equivalent of a sequencer key-manager JSON file.
    ///
    /// Reads the HSM integration guide's format: `{"keyManager": {...}}` or
    /// `{"sequencer": {"keyManager": {...}}}` with `type` aws-cloudhsm (becomes a pkcs11 provider on
    /// CloudHSM's PKCS#11 library), yubihsm (a yubihsm provider) or local (the soft provider), and the
    /// `failover`, `keyRotation` and `maxCacheSize` settings. The TOML goes to standard output; every
    /// field that cannot be mapped, and why, and the steps to take (the PIN or password to put in an
    /// environment variable, the `custos key create ... --adopt` and `custos key rotation` commands to run
    /// once the server is up) go to standard error. Passwords are never copied: the TOML holds secret
    /// references. Exits 2 when the file is unreadable, not JSON, names an unknown type, or lacks a
    /// required field (the message names the field).
    ///
    /// Example: custos config convert keymanager.json > custos.toml
    Convert {
        /// The key-manager JSON file.
        file: PathBuf,
    },
}

#[cfg(feature = "hpvs")]
#[derive(Debug, Subcommand)]
enum HpvsCommand {
    /// Make an HPVS contract: encrypt the workload and env sections for IBM's contract encryption
    /// certificate (hyper-protect-basic), add the signing public key to the env, and sign both.
    Contract {
        /// A prepared workload YAML (`type: workload`, with `compose:` or `play:`).
        #[arg(long, required_unless_present = "compose", conflicts_with = "compose")]
        workload: Option<PathBuf>,
        /// A compose file: Custos builds the workload (its archive) from it.
        #[arg(long)]
        compose: Option<PathBuf>,
        /// With --compose: a data volume as NAME:MOUNT:SEED (the workload's part of its passphrase).
        #[arg(long = "volume", requires = "compose")]
        volumes: Vec<String>,
        /// An env YAML (`type: env`, with `logging:`; volume seeds as HPVS expects).
        #[arg(long, required_unless_present = "syslog", conflicts_with = "syslog")]
        env: Option<PathBuf>,
        /// Instead of --env: the syslog target as HOST:PORT.
        #[arg(long)]
        syslog: Option<String>,
        /// With --syslog: the env's part of a volume's passphrase, as NAME:SEED.
        #[arg(long = "env-seed", requires = "syslog")]
        env_seeds: Vec<String>,
        /// IBM's contract encryption certificate (PEM), for the HPVS image version in use.
        #[arg(long)]
        cert: PathBuf,
        /// The deployer's RSA private key (PEM) that signs the contract.
        #[arg(long)]
        signing_key: PathBuf,
        /// Write the contract here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Decrypt a hyper-protect-basic blob (a contract section, or HPVS's encrypted attestation record).
    Decrypt {
        /// The RSA private key (PEM) the blob was encrypted for.
        #[arg(long)]
        key: PathBuf,
        /// The blob (default: standard input).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Download the whole log as JSON lines, sealed with a fresh signed checkpoint.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check an export offline: the hash chain, every checkpoint's signature, and the closing seal.
    /// Names the first bad record; exits 1 if the export was tampered with or truncated.
    Verify {
        /// The export (JSON lines).
        file: PathBuf,
        /// The audit public key: base64 of the raw Ed25519 key, or a PEM file (GET /v1/audit/key).
        #[arg(long)]
        public_key: String,
    },
    /// List records, newest filters first: by time, key, operation, actor and outcome.
    Query {
        /// Not before this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Not after this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only this operation (sign, sign_batch, verify, key_create, key_rotate, token_create, ...).
        #[arg(long)]
        operation: Option<String>,
        /// Only this actor (token id or name).
        #[arg(long)]
        actor: Option<String>,
        /// Only this outcome (ok, error, denied).
        #[arg(long)]
        outcome: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the audit public key that checkpoints verify under.
    Key {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address (overrides the config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The data directory (overrides the config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How the client reaches the server.
#[derive(Debug, Args)]
struct Conn {
    /// Server address.
    #[arg(
        long,
        env = "CUSTOS_ADDR",
        default_value = "http://127.0.0.1:8200",
        global = true
    )]
    addr: String,
    /// API token.
    #[arg(long, env = "CUSTOS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust, for a server with a private TLS certificate.
    #[arg(long, env = "CUSTOS_CACERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print the server's JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
}

/// What to sign or verify: exactly one source.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct InputArgs {
    /// Read the message from a file (`-` for standard input).
    #[arg(long)]
    message_file: Option<PathBuf>,
    /// The message as text.
    #[arg(long)]
    message: Option<String>,
    /// A 32-byte digest in hex (ECDSA keys only).
    #[arg(long)]
    digest_hex: Option<String>,
}

/// How to hash, which version, which encoding: shared by `sign` and `verify`.
#[derive(Debug, Args)]
struct SignOptions {
    /// The hash for an ECDSA message: sha256 (default) or keccak256.
    #[arg(long)]
    hash: Option<String>,
    /// The key version (default: the current one to sign; any usable one to verify).
    #[arg(long)]
    version: Option<u32>,
    /// Signature encoding: raw (default) or der (ECDSA).
    #[arg(long)]
    format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key.
    Create {
        /// The key name: letters, digits, '-', '_', '.'; at most 64.
        name: String,
        /// ed25519, secp256k1 or p256.
        #[arg(long, short)]
        algorithm: String,
        /// The provider to hold it (default: the server's default provider). Give it several times, or
        /// comma-separated, for a failover chain, primary first: every provider of the chain holds the
        /// same key (one that can export generates it; the others import it).
        #[arg(long, value_delimiter = ',')]
        provider: Vec<String>,
        /// Adopt a key that already exists in the provider instead of generating one
        /// (PKCS#11: label:<text> or id:<hex>).
        #[arg(long)]
        adopt: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one key with its versions and public keys.
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Rotate a key now: a new version becomes current; the old one stays enabled.
    Rotate {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show or set a key's rotation schedule. With no options, shows it. Rotation makes a new version
    /// current; the old one may still sign by explicit version for --overlap-days, then only verifies.
    Rotation {
        name: String,
        /// Rotate every N days.
        #[arg(long)]
        interval_days: Option<u32>,
        /// Days the previous version may still sign after a rotation.
        #[arg(long, default_value_t = 0)]
        overlap_days: u32,
        /// Local time of day to rotate at (HH:MM:SS).
        #[arg(long, default_value = "00:00:00")]
        rotation_time: String,
        /// IANA time zone of --rotation-time (for example Europe/Berlin).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Before each rotation, write the current key encrypted with age into this directory.
        #[arg(long, requires = "backup_recipient")]
        backup_dir: Option<std::path::PathBuf>,
        /// The age X25519 recipient (age1...) backups are encrypted to (`age-keygen` makes one).
        #[arg(long, requires = "backup_dir")]
        backup_recipient: Option<String>,
        /// Remove the schedule: the key then rotates only on demand.
        #[arg(long, conflicts_with = "interval_days")]
        clear: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// List tokens (never their secrets), with scopes, expiry, revocation and last use.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token's id (the part after `cst_`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Issue a token (needs an admin token). Prints it once.
    Create {
        /// A name for the token.
        name: String,
        /// A scope; repeat for several: admin, keys:create, keys:read, keys:rotate, sign:<pattern>,
        /// verify:<pattern> (patterns take * and ?).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Also issue an AWS access key id and secret for the KMS-compatible API (AWS Signature
        /// Version 4), with the same scopes: use them with the aws CLI, boto3 or an AWS SDK.
        #[arg(long)]
        aws: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

fn init_logging() {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let mut config = Config::load(args.config.as_deref())?;
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
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
        }
        Command::Dev { listen, data_dir } => {
            init_logging();
            dev(listen, data_dir).await?;
        }
        Command::Init { config, data_dir } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let password = config.master_password.read()?;
            server::init(&config, &password).await?;
        }
        Command::Key(command) => key(command).await?,
        Command::Audit(command) => return audit(command).await,
        Command::Config(ConfigCommand::Convert { file }) => return convert::run(&file),
        #[cfg(feature = "hpvs")]
        Command::Hpvs(command) => hpvs(command)?,
        Command::Token(TokenCommand::List { conn }) => {
            let list: TokenList = connect(&conn)?
                .call(Method::GET, "/v1/tokens", None::<&()>)
                .await?;
            if conn.json {
                print_json(&list)?;
            } else {
                for t in &list.tokens {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let used = t
                        .last_used_at
                        .map_or_else(|| "never".to_owned(), |t| t.to_string());
                    out!(
                        "{:<18} {:<16} {:<8} last used {:<32} {}",
                        t.id,
                        t.name,
                        state,
                        used,
                        t.scopes.join(" ")
                    );
                }
            }
        }
        Command::Token(TokenCommand::Revoke { id, conn }) => {
            let t: TokenView = connect(&conn)?
                .call(
                    Method::POST,
                    &format!("/v1/tokens/{id}/revoke"),
                    None::<&()>,
                )
                .await?;
            if conn.json {
                print_json(&t)?;
            } else {
                out!("revoked token {} ({})", t.id, t.name);
            }
        }
        Command::Sign {
            name,
            input,
            options,
            sequence,
            conn,
        } => {
            let body = SignRequestBody {
                sequence,
                ..sign_body(&input, options)?
            };
            let client = connect(&conn)?;
            let r: SignResponse = client
                .call(Method::POST, &format!("/v1/keys/{name}/sign"), Some(&body))
                .await?;
            if conn.json {
                print_json(&r)?;
            } else {
                out!("signature    {}", r.signature);
                out!("format       {}", r.format);
                out!("key          {} version {}", r.key, r.version);
                out!("provider     {}", r.provider);
                if let Some(id) = r.recovery_id {
                    out!("recovery_id  {id}");
                }
                if let Some(key) = &r.emergency_public_key {
                    out!("EMERGENCY    every provider failed; signed by an emergency key, NOT this key");
                    out!("emergency_public_key  {}", key.raw);
                }
            }
        }
        Command::Verify {
            name,
            input,
            signature,
            options,
            conn,
        } => {
            let signed = sign_body(&input, options)?;
            let body = VerifyRequestBody {
                message: signed.message,
                digest: signed.digest,
                hash: signed.hash,
                signature,
                format: signed.format,
                version: signed.version,
            };
            let client = connect(&conn)?;
            let r: VerifyResponse = client
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/verify"),
                    Some(&body),
                )
                .await?;
            if conn.json {
                print_json(&r)?;
            } else if let (true, Some(v)) = (r.valid, r.version) {
                out!("valid (key {name} version {v})");
            } else {
                out!("INVALID: the signature does not verify under any usable version of {name}");
            }
            if !r.valid {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Token(TokenCommand::Create {
            name,
            scopes,
            expires_in,
            aws,
            conn,
        }) => {
            let body = CreateTokenRequest {
                name,
                scopes,
                expires_in_seconds: expires_in,
                aws,
            };
            let client = connect(&conn)?;
            let r: CreateTokenResponse =
                client.call(Method::POST, "/v1/tokens", Some(&body)).await?;
            if conn.json {
                print_json(&r)?;
            } else {
                out!("token   {}", r.token);
                out!("id      {}", r.id);
                out!("scopes  {}", r.scopes.join(" "));
                if let Some(at) = r.expires_at {
                    out!("expires {at}");
                }
                out!("(shown once: Custos keeps only a hash)");
                if let (Some(id), Some(secret)) = (&r.aws_access_key_id, &r.aws_secret_access_key) {
                    out!();
                    out!(
                        "For the KMS-compatible API (shown once; kept sealed by the key provider):"
                    );
                    out!("  export AWS_ACCESS_KEY_ID={id}");
                    out!("  export AWS_SECRET_ACCESS_KEY={secret}");
                    out!("  aws kms list-keys --endpoint-url <the Custos address> --region <kms_api.region>");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "hpvs")]
fn hpvs(command: HpvsCommand) -> anyhow::Result<()> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    match command {
        HpvsCommand::Contract {
            workload,
            compose,
            volumes,
            env,
            syslog,
            env_seeds,
            cert,
            signing_key,
            output,
        } => {
            let cert = custos_hpvs::certificate_public_key(&read(&cert)?).context("--cert")?;
            let signing =
                custos_hpvs::private_key(&read(&signing_key)?).context("--signing-key")?;
            let workload = match (workload, compose) {
                (Some(path), _) => read(&path)?,
                (None, Some(path)) => {
                    let compose = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let volumes = volumes
                        .iter()
                        .map(|v| match v.splitn(3, ':').collect::<Vec<_>>()[..] {
                            [name, mount, seed] => Ok(custos_hpvs::Volume {
                                name: name.into(),
                                mount: mount.into(),
                                seed: seed.into(),
                            }),
                            _ => Err(anyhow::anyhow!(
                                "--volume must be NAME:MOUNT:SEED, not {v:?}"
                            )),
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    custos_hpvs::compose_workload(&compose, &volumes)?
                }
                (None, None) => anyhow::bail!("give --workload or --compose"),
            };
            let env = match (env, syslog) {
                (Some(path), _) => read(&path)?,
                (None, Some(syslog)) => {
                    let seeds = env_seeds
                        .iter()
                        .map(|s| {
                            s.split_once(':')
                                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                                .ok_or_else(|| {
                                    anyhow::anyhow!("--env-seed must be NAME:SEED, not {s:?}")
                                })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    custos_hpvs::env_section(&syslog, &seeds)?
                }
                (None, None) => anyhow::bail!("give --env or --syslog"),
            };
            let contract = custos_hpvs::build_contract(&workload, &env, &cert, &signing)?;
            match output {
                Some(path) => {
                    std::fs::write(&path, contract.to_yaml())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote the contract to {}", path.display());
                }
                None => out!("{}", contract.to_yaml().trim_end()),
            }
        }
        HpvsCommand::Decrypt { key, file } => {
            let key = custos_hpvs::private_key(&read(&key)?).context("--key")?;
            let blob = match file {
                Some(path) => read(&path)?,
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text
                }
            };
            let plaintext = custos_hpvs::decrypt_section(&blob, &key)?;
            use std::io::Write as _;
            std::io::stdout().write_all(&plaintext)?;
        }
    }
    Ok(())
}

async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export { output, conn } => {
            let text = connect(&conn)?
                .text(Method::GET, "/v1/audit/export")
                .await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {} lines to {}", text.lines().count(), path.display());
                }
                None => out!("{}", text.trim_end()),
            }
        }
        AuditCommand::Verify { file, public_key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let key = audit_public_key(&public_key)?;
            match custos_audit::verify_export(&text, &key) {
                Ok(report) => out!(
                    "OK: {} records and {} checkpoints; the chain is intact and sealed up to record {}",
                    report.records,
                    report.checkpoints,
                    report.last_seq
                ),
                Err(failure) => {
                    out!("TAMPERED: {failure}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        AuditCommand::Query {
            from,
            to,
            key,
            operation,
            actor,
            outcome,
            limit,
            conn,
        } => {
            let params = custos_api::AuditQueryParams {
                from,
                to,
                key,
                operation,
                actor,
                outcome,
                after: None,
                limit: Some(limit),
            };
            let query = serde_urlencoded_query(&params);
            let page: custos_api::AuditPage = connect(&conn)?
                .call(Method::GET, &format!("/v1/audit?{query}"), None::<&()>)
                .await?;
            if conn.json {
                print_json(&page)?;
            } else {
                for r in &page.records {
                    let actor = r
                        .entry
                        .actor
                        .as_ref()
                        .and_then(|a| a.token_name.clone())
                        .unwrap_or_else(|| "-".into());
                    out!(
                        "{:>6} {} {:<12} {:<8} {:<16} key={} v={} {}",
                        r.seq,
                        r.time,
                        r.entry.operation,
                        r.entry.outcome.as_str(),
                        actor,
                        r.entry.key.as_deref().unwrap_or("-"),
                        r.entry
                            .version
                            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                        r.entry.error_code.as_deref().unwrap_or("")
                    );
                }
            }
        }
        AuditCommand::Key { conn } => {
            let key: custos_api::AuditKeyResponse = connect(&conn)?
                .call(Method::GET, "/v1/audit/key", None::<&()>)
                .await?;
            if conn.json {
                print_json(&key)?;
            } else {
                out!("{}", key.public_key);
                out!("{}", key.pem.trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit public key from base64 (raw Ed25519), PEM text, or a PEM file.
fn audit_public_key(text: &str) -> anyhow::Result<custos_types::PublicKey> {
    use custos_types::{Algorithm, PublicKey};
    if let Some(bytes) = b64::decode(text.trim()) {
        return PublicKey::from_bytes(Algorithm::Ed25519, &bytes)
            .context("--public-key is not an Ed25519 public key");
    }
    let pem = if text.contains("-----BEGIN") {
        text.to_owned()
    } else {
        std::fs::read_to_string(text).with_context(|| {
            format!("--public-key: not base64 and not a readable PEM file: {text}")
        })?
    };
    PublicKey::from_spki_pem(Algorithm::Ed25519, &pem)
        .context("--public-key is not an Ed25519 PEM public key")
}

/// Encodes the set query parameters (values are percent-encoded).
fn serde_urlencoded_query(params: &custos_api::AuditQueryParams) -> String {
    let value = serde_json::to_value(params).unwrap_or_default();
    let mut pairs = Vec::new();
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let encoded: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            pairs.push(format!("{k}={encoded}"));
        }
    }
    pairs.join("&")
}

fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Client::new(conn.addr.clone(), conn.token.clone(), conn.ca_cert.clone())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The request body for what the user gave: the input (base64-encoded) and the options.
fn sign_body(input: &InputArgs, options: SignOptions) -> anyhow::Result<SignRequestBody> {
    let mut body = SignRequestBody {
        hash: options.hash,
        version: options.version,
        format: options.format,
        ..SignRequestBody::default()
    };
    if let Some(path) = &input.message_file {
        let mut bytes = Vec::new();
        if path.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut bytes)?;
        } else {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        body.message = Some(b64::encode(bytes));
    } else if let Some(text) = &input.message {
        body.message = Some(b64::encode(text.as_bytes()));
    } else if let Some(hex_digest) = &input.digest_hex {
        let bytes =
            hex::decode(hex_digest.trim_start_matches("0x")).context("--digest-hex is not hex")?;
        body.digest = Some(b64::encode(bytes));
    }
    Ok(body)
}

async fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            name,
            algorithm,
            provider,
            adopt,
            conn,
        } => {
            let (provider, providers) = match provider.len() {
                0 => (None, None),
                1 => (provider.into_iter().next(), None),
                _ => (None, Some(provider)),
            };
            let body = CreateKeyRequest {
                name,
                algorithm,
                provider,
                providers,
                adopt,
            };
            let key: KeyView = connect(&conn)?
                .call(Method::POST, "/v1/keys", Some(&body))
                .await?;
            show(&key, conn.json)
        }
        KeyCommand::List { conn } => {
            let list: KeyList = connect(&conn)?
                .call(Method::GET, "/v1/keys", None::<&()>)
                .await?;
            if conn.json {
                return print_json(&list);
            }
            if list.keys.is_empty() {
                out!("no keys yet: custos key create NAME --algorithm ed25519");
            }
            for k in &list.keys {
                out!(
                    "{:<32} {:<10} v{:<4} {}",
                    k.name,
                    k.algorithm,
                    k.current_version,
                    k.providers.join(",")
                );
            }
            Ok(())
        }
        KeyCommand::Show { name, conn } => {
            let key: KeyView = connect(&conn)?
                .call(Method::GET, &format!("/v1/keys/{name}"), None::<&()>)
                .await?;
            show(&key, conn.json)
        }
        KeyCommand::Rotate { name, conn } => {
            let key: KeyView = connect(&conn)?
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/rotate"),
                    None::<&()>,
                )
                .await?;
            show(&key, conn.json)
        }
        KeyCommand::Rotation {
            name,
            interval_days,
            overlap_days,
            rotation_time,
            time_zone,
            backup_dir,
            backup_recipient,
            clear,
            conn,
        } => {
            let path = format!("/v1/keys/{name}/rotation");
            let client = connect(&conn)?;
            let view: custos_api::RotationView = match (clear, interval_days) {
                (true, _) => client.call(Method::DELETE, &path, None::<&()>).await?,
                (false, Some(interval_days)) => {
                    let body = serde_json::json!({
                        "interval_days": interval_days,
                        "overlap_days": overlap_days,
                        "rotation_time": rotation_time,
                        "time_zone": time_zone,
                        "backup_enabled": backup_dir.is_some(),
                        "backup_location": backup_dir,
                        "backup_recipient": backup_recipient,
                    });
                    client.call(Method::PUT, &path, Some(&body)).await?
                }
                (false, None) => client.call(Method::GET, &path, None::<&()>).await?,
            };
            if conn.json {
                return print_json(&view);
            }
            match &view.policy {
                None => out!("{}: no schedule (rotates only on demand)", view.key),
                Some(policy) => {
                    out!("{}: {}", view.key, policy);
                    if let Some(next) = view.next_rotation {
                        out!("next rotation  {next}");
                    }
                }
            }
            Ok(())
        }
    }
}

fn show(key: &KeyView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(key);
    }
    out!("key        {} ({})", key.name, key.algorithm);
    out!("current    version {}", key.current_version);
    out!("providers  {}", key.providers.join(", "));
    for v in &key.versions {
        out!();
        out!(
            "version {} [{}] created {}",
            v.version,
            v.state,
            v.created_at
        );
        out!("  public key  {}", v.public_key.raw);
        if let Some(address) = &v.public_key.address {
            out!("  address     {address}");
        }
        for l in &v.locations {
            let export = if l.exportable {
                "exportable"
            } else {
                "non-exportable"
            };
            out!(
                "  held by     {} ({}, {export}) handle {}",
                l.provider,
                l.kind,
                l.handle
            );
        }
        for line in v.public_key.pem.lines() {
            out!("  {line}");
        }
    }
    Ok(())
}

async fn dev(listen: SocketAddr, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
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
    server::run(opened, &config, listener).await
}

//! The command line: every subcommand, its arguments and its `--help` text (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Custos: a key manager and signing service. Keys stay in their provider; every signature is
/// authenticated, checked and verified before it is returned.
#[derive(Debug, Parser)]
#[command(name = "custos", version, about, long_about = None, after_help = "Start here: `custos dev`.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
pub enum ConfigCommand {
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
pub enum HpvsCommand {
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
pub enum AuditCommand {
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
pub struct ServeArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address (overrides the config).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The data directory (overrides the config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// How the client reaches the server.
#[derive(Debug, Args)]
pub struct Conn {
    /// Server address.
    #[arg(
        long,
        env = "CUSTOS_ADDR",
        default_value = "http://127.0.0.1:8200",
        global = true
    )]
    pub addr: String,
    /// API token.
    #[arg(long, env = "CUSTOS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust, for a server with a private TLS certificate.
    #[arg(long, env = "CUSTOS_CACERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print the server's JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to sign or verify: exactly one source.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct InputArgs {
    /// Read the message from a file (`-` for standard input).
    #[arg(long)]
    pub message_file: Option<PathBuf>,
    /// The message as text.
    #[arg(long)]
    pub message: Option<String>,
    /// A 32-byte digest in hex (ECDSA keys only).
    #[arg(long)]
    pub digest_hex: Option<String>,
}

/// How to hash, which version, which encoding: shared by `sign` and `verify`.
#[derive(Debug, Args)]
pub struct SignOptions {
    /// The hash for an ECDSA message: sha256 (default) or keccak256.
    #[arg(long)]
    pub hash: Option<String>,
    /// The key version (default: the current one to sign; any usable one to verify).
    #[arg(long)]
    pub version: Option<u32>,
    /// Signature encoding: raw (default) or der (ECDSA).
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
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
    /// Disable a key: it neither signs nor verifies until enabled (needs keys:rotate).
    Disable {
        /// The key.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Enable a disabled key again (needs keys:rotate).
    Enable {
        /// The key.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Schedule a key's destruction after a waiting period; until then it neither signs nor verifies,
    /// and `cancel-deletion` keeps it (needs admin).
    ScheduleDeletion {
        /// The key.
        name: String,
        /// Days until the key is destroyed (7 to 30).
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a scheduled deletion; the key stays disabled until enabled (needs admin).
    CancelDeletion {
        /// The key.
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
pub enum TokenCommand {
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
    /// Issue a new admin token offline, on the data directory itself, when no admin token is left.
    ///
    /// Needs the host and the master password (CUSTOS_MASTER_PASSWORD or the config's reference);
    /// the issue is an audit record (`token_recover`). A running server sees the new token after a
    /// restart.
    Recover {
        /// The config file (for the data directory and the master password).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A name for the new token.
        #[arg(long, default_value = "recovered-admin")]
        name: String,
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

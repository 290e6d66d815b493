//! The server configuration file (TOML) and its defaults; secrets are references, never values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use secrecy::SecretString;
use serde::Deserialize;

/// Where a secret comes from: `{ env = "NAME" }` or `{ file = "/run/secrets/x" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file; one trailing newline is removed.
    File(PathBuf),
}

impl SecretRef {
    /// Reads the secret.
    pub fn read(&self) -> anyhow::Result<SecretString> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name).with_context(|| {
                format!("the environment variable {name} is not set (it should hold the secret)")
            })?,
            SecretRef::File(path) => {
                let mut text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the secret file {}", path.display()))?;
                if text.ends_with('\n') {
                    text.pop();
                }
                text
            }
        };
        if value.is_empty() {
            bail!("the secret from {self:?} is empty");
        }
        Ok(SecretString::from(value))
    }
}

/// One configured key provider: its `type` (which provider factory builds it), its `name`, and the rest
/// of its table, which that factory reads (each refuses fields it does not know; see `providers`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The provider family (`soft`, `pkcs11`, `yubihsm`, `awskms`).
    pub kind: String,
    /// The instance name.
    pub name: String,
    /// Everything else in its table.
    pub settings: toml::Table,
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut settings = toml::Table::deserialize(deserializer)?;
        let mut take = |field: &str| match settings.remove(field) {
            Some(toml::Value::String(text)) => Ok(text),
            Some(_) => Err(D::Error::custom(format!(
                "a provider's `{field}` is a string"
            ))),
            None => Err(D::Error::custom(format!("a provider needs `{field}`"))),
        };
        let kind = take("type")?;
        let name = take("name")?;
        crate::providers::check(&kind, &settings)
            .map_err(|e| D::Error::custom(format!("provider {name:?} (type {kind:?}): {e:#}")))?;
        Ok(ProviderConfig {
            kind,
            name,
            settings,
        })
    }
}

impl ProviderConfig {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// TLS certificate and key files (PEM), and optional client certificates (mutual TLS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Require client certificates whose SHA-256 fingerprint is in this file (one per line).
    #[serde(default)]
    pub client_allowlist_file: Option<PathBuf>,
    /// How often the certificate, key and allowlist files are checked for changes (default 5).
    #[serde(default = "default_reload_seconds")]
    pub reload_interval_seconds: u64,
}

fn default_reload_seconds() -> u64 {
    5
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_password")]
    pub master_password: SecretRef,
    #[serde(default)]
    pub default_provider: Option<String>,
    #[serde(default = "default_providers")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "default_max_batch")]
    pub max_batch_items: usize,
    /// How far above a key's last signed sequence one request may go (the equivocation guard);
    /// larger jumps get 409 `sequence_too_far`.
    #[serde(default = "default_max_sequence_jump")]
    pub max_sequence_jump: u64,
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Failed authentications allowed per source address (each is audited; default 10/s, burst 20).
    #[serde(default)]
    pub auth_failure_limit: Option<RateLimit>,
    #[serde(default)]
    pub audit: AuditSettings,
    /// Failover along provider chains, and emergency mode (`[failover]`, `[failover.emergency]`).
    #[serde(default)]
    pub failover: custos_core::FailoverConfig,
    /// Signatures kept for repeated requests (0 turns the cache off).
    #[serde(default = "default_cache_size", alias = "maxCacheSize")]
    pub max_cache_size: usize,
    /// Where events (provider switches, emergency signatures, rotations) are POSTed.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Scheduled rotation (`[rotation]`).
    #[serde(default)]
    pub rotation: RotationSettings,
    /// The AWS KMS-compatible API on `POST /` (`[kms_api]`); off unless enabled.
    #[serde(default)]
    pub kms_api: KmsApiSettings,
    /// The BitGo Key Provider API under a path prefix (`[bitgo_api]`); off unless enabled.
    #[serde(default)]
    pub bitgo_api: BitgoApiSettings,
}

/// The `[bitgo_api]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BitgoApiSettings {
    /// Serve the API (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The path prefix its routes live under (default `/bitgo`: `/bitgo/key`, `/bitgo/sign`, ...).
    #[serde(default = "default_bitgo_prefix")]
    pub prefix: String,
    /// Retrieving a private key (`GET /key/{pub}`) also needs a client certificate on the mTLS allowlist.
    #[serde(default)]
    pub retrieve_needs_client_cert: bool,
}

impl Default for BitgoApiSettings {
    fn default() -> Self {
        BitgoApiSettings {
            enabled: false,
            prefix: default_bitgo_prefix(),
            retrieve_needs_client_cert: false,
        }
    }
}

fn default_bitgo_prefix() -> String {
    "/bitgo".into()
}

/// The `[kms_api]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KmsApiSettings {
    /// Serve `POST /` with `X-Amz-Target: TrentService.*` (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The region in ARNs, and the one clients sign for (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// The 12-digit account in ARNs (default `000000000000`).
    #[serde(default = "default_account")]
    pub account: String,
}

impl Default for KmsApiSettings {
    fn default() -> Self {
        KmsApiSettings {
            enabled: false,
            region: default_region(),
            account: default_account(),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_account() -> String {
    "000000000000".into()
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST the event JSON.
    pub url: String,
    /// Event types to send (`provider_switch`, `emergency_signature`, `key_rotated`,
    /// `rotation_failed`); empty or absent: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC-SHA256 key for the `X-Custos-Signature` header, as a secret reference.
    #[serde(default)]
    pub secret: Option<SecretRef>,
}

/// The `[rotation]` section: how scheduled rotation runs (each key's schedule is its rotation policy).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotationSettings {
    /// Whether this process runs scheduled rotations (one process per store does, by lease).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often policies are checked, in seconds.
    #[serde(default = "default_rotation_check")]
    pub check_interval_seconds: u64,
}

impl Default for RotationSettings {
    fn default() -> Self {
        RotationSettings {
            enabled: true,
            check_interval_seconds: default_rotation_check(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_rotation_check() -> u64 {
    60
}
fn default_cache_size() -> usize {
    custos_core::DEFAULT_CACHE_SIZE
}

/// Requests each API token may make (`rate_limit = { requests_per_second = 100, burst = 200 }`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second per token.
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate (default: the rate).
    #[serde(default)]
    pub burst: Option<u32>,
}

fn default_max_concurrent() -> usize {
    1024
}
fn default_request_timeout() -> u64 {
    30_000
}

/// The `[audit]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Sign a checkpoint after this many records.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Sign a checkpoint at least this often (seconds) while records arrive.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    /// A second copy of every record: `stdout` (JSON lines) or `syslog` (`/dev/log`).
    #[serde(default)]
    pub sink: Option<String>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_seconds: default_checkpoint_interval(),
            sink: None,
        }
    }
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> u64 {
    60
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./custos-data")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}
fn default_password() -> SecretRef {
    SecretRef::Env("CUSTOS_MASTER_PASSWORD".into())
}
fn default_providers() -> Vec<ProviderConfig> {
    vec![ProviderConfig {
        kind: "soft".into(),
        name: "soft".into(),
        settings: toml::Table::new(),
    }]
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_message() -> usize {
    64 * 1024
}
fn default_max_batch() -> usize {
    1000
}
fn default_max_sequence_jump() -> u64 {
    custos_core::DEFAULT_MAX_SEQUENCE_JUMP
}

impl Default for Config {
    #[expect(
        clippy::expect_used,
        reason = "the empty document takes every default, which parse"
    )]
    fn default() -> Self {
        toml::from_str("").expect("the empty config parses")
    }
}

impl Config {
    /// Reads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        if config.providers.is_empty() {
            bail!("the config names no providers");
        }
        Ok(config)
    }

    /// The provider that takes keys created without one.
    pub fn default_provider(&self) -> &str {
        self.default_provider
            .as_deref()
            .unwrap_or_else(|| self.providers[0].name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8200");
        assert_eq!(config.data_dir, PathBuf::from("./custos-data"));
        assert_eq!(config.default_provider(), "soft");
        let text = r#"
            data_dir = "/var/lib/custos"
            listen = "0.0.0.0:8443"
            master_password = { file = "/run/secrets/custos" }
            tls = { cert_file = "c.pem", key_file = "k.pem" }
            [[providers]]
            type = "soft"
            name = "soft-a"
            kdf = { memory_kib = 65536, iterations = 3, parallelism = 1 }
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(
            config.master_password,
            SecretRef::File("/run/secrets/custos".into())
        );
        assert_eq!(config.default_provider(), "soft-a");
        let text = r#"
            [[providers]]
            type = "pkcs11"
            name = "hsm"
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "custos"
            pin = { env = "CUSTOS_HSM_PIN" }
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.providers[0].name(), "hsm");
        let text = r#"
            [[providers]]
            type = "yubihsm"
            name = "yubi"
            auth_key_id = 1
            password = { file = "/run/secrets/yubihsm" }
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.providers[0].kind, "yubihsm");
        assert_eq!(
            config.providers[0].settings["auth_key_id"].as_integer(),
            Some(1)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        for text in [
            "listen_addr = \"x\"",
            "[[providers]]\ntype = \"soft\"\nname = \"s\"\npin = \"1234\"",
            "[[providers]]\ntype = \"hsm\"\nname = \"s\"",
            "[[providers]]\ntype = \"pkcs11\"\nname = \"h\"\nmodule = \"m.so\"\npin = \"1234\"",
            "master_password = \"plain text\"",
        ] {
            assert!(toml::from_str::<Config>(text).is_err(), "{text}");
        }
    }
}

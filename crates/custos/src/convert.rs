//! `custos config convert`: turns the sequencer key-manager JSON of the HSM integration guide (`keyManager`
//! of type `aws-cloudhsm`, `yubihsm` or `local`, with `failover` and `keyRotation`) into Custos TOML, with a
//! note for every field Custos cannot map and the commands to run once the server is up.
//!
//! [`convert`] is pure (text in, text and notes out); [`run`] reads the file and prints: the TOML on
//! standard output, the notes on standard error (the follow-up commands are repeated as TOML comments).
//! Secrets are never copied: passwords become secret references (`{ env = "..." }`).

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Map, Value};

/// The key name the follow-up commands use.
const KEY_NAME: &str = "sequencer";
/// CloudHSM Client SDK 5's PKCS#11 library.
const CLOUDHSM_MODULE: &str = "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so";
/// The token CloudHSM's PKCS#11 library (SDK 5) shows in its one slot.
const CLOUDHSM_TOKEN: &str = "hsm1";
const CLOUDHSM_PROVIDER: &str = "cloudhsm";
const CLOUDHSM_PIN_ENV: &str = "CUSTOS_CLOUDHSM_PIN";
const YUBIHSM_PROVIDER: &str = "yubihsm";
const YUBIHSM_PASSWORD_ENV: &str = "CUSTOS_YUBIHSM_PASSWORD";
const YUBIHSM_CONNECTOR: &str = "http://127.0.0.1:12345";
const SOFT_PROVIDER: &str = "soft";
/// The key manager types this converter knows, as the error for another one lists them.
const TYPES: &str = "aws-cloudhsm, yubihsm, local, software";

/// What a conversion produced: the TOML and what the operator must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The Custos configuration (parses as `crate::config::Config`).
    pub toml: String,
    /// Steps to take (those before `custos serve` first), fields that did not map, and mapped fields
    /// whose meaning differs.
    pub notes: Vec<Note>,
}

/// One note about the conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The JSON field it is about, as a dotted path (`keyManager.config.region`); empty for the whole file.
    pub field: String,
    /// What kind of note.
    pub kind: NoteKind,
    /// The explanation.
    pub text: String,
    /// A command to run, when there is one.
    pub command: Option<String>,
}

impl Note {
    fn is_step(&self) -> bool {
        matches!(self.kind, NoteKind::Before | NoteKind::After)
    }
}

/// The kinds of [`Note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Something to do before `custos serve`: set a secret, bootstrap the HSM client.
    Before,
    /// Something to do once the server runs: adopt or create the key, set its rotation schedule.
    After,
    /// The field has no Custos equivalent and is not in the TOML; the text says why.
    Unmapped,
    /// The field is mapped, but Custos's meaning differs in a way that matters.
    Differs,
}

/// Why the JSON could not be converted. Each names the field (a dotted path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// The file is not JSON.
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A required field is absent.
    Missing { field: String, why: String },
    /// A field has a value of the wrong kind or out of range.
    Invalid { field: String, why: String },
    /// `type` names a key manager this converter does not know.
    UnknownType { field: String, found: String },
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Json {
                line,
                column,
                message,
            } => write!(
                f,
                "not valid JSON (line {line}, column {column}): {message}"
            ),
            ConvertError::Missing { field, why } => write!(f, "{field} is missing: {why}"),
            ConvertError::Invalid { field, why } => write!(f, "{field}: {why}"),
            ConvertError::UnknownType { field, found } => write!(
                f,
                "{field} is {found:?}, not a key manager type this converter knows ({TYPES})"
            ),
        }
    }
}

impl std::error::Error for ConvertError {}

/// Reads `path`, prints the TOML on standard output and the notes on standard error. Exit code 2 when
/// the file cannot be read or converted.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let conversion = match convert(&text) {
        Ok(conversion) => conversion,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(conversion.toml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    eprint!("{}", render_notes(&conversion.notes));
    Ok(ExitCode::SUCCESS)
}

/// The notes as the operator reads them: numbered steps, then what did not map, then differences.
fn render_notes(notes: &[Note]) -> String {
    // A blank line apart from the TOML when both go to one terminal.
    let mut out = String::from("\n");
    let sections = [
        (
            NoteKind::Before,
            "Before starting Custos (the TOML holds no secrets and names no keys):",
        ),
        (
            NoteKind::After,
            "Once `custos serve` runs (in another shell, with CUSTOS_ADDR and CUSTOS_TOKEN set to the \
             root token `custos init` printed):",
        ),
        (
            NoteKind::Unmapped,
            "Not mapped (no Custos equivalent; not in the TOML):",
        ),
        (NoteKind::Differs, "Mapped, with a difference in meaning:"),
    ];
    let mut step = 0;
    for (kind, title) in sections {
        let mut n = 0;
        for note in notes.iter().filter(|n| n.kind == kind) {
            if n == 0 {
                out.push_str(title);
                out.push('\n');
            }
            n += 1;
            let bullet = if note.is_step() {
                step += 1;
                format!("{step:>3}.")
            } else {
                "  -".to_owned()
            };
            if note.field.is_empty() {
                out.push_str(&format!("{bullet} {}\n", note.text));
            } else {
                out.push_str(&format!("{bullet} [{}] {}\n", note.field, note.text));
            }
            if let Some(command) = &note.command {
                out.push_str(&format!("       $ {command}\n"));
            }
        }
        if n > 0 {
            out.push('\n');
        }
    }
    out
}

/// Converts the key-manager JSON to Custos TOML. The input is `{"keyManager": {...}}`,
/// `{"sequencer": {"keyManager": {...}}}`, or the `keyManager` object itself (with a `type`).
pub fn convert(json: &str) -> Result<Conversion, ConvertError> {
    let root: Value = serde_json::from_str(json).map_err(|e| {
        let mut message = e.to_string();
        // The position is in the error's own fields.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        ConvertError::Json {
            line: e.line(),
            column: e.column(),
            message,
        }
    })?;
    let mut c = Converter::default();
    let Value::Object(root) = &root else {
        return Err(invalid(
            "(top level)",
            "must be a JSON object holding keyManager",
        ));
    };
    let (km, base) = if let Some(sequencer) = root.get("sequencer") {
        c.others(root, "", &["sequencer"], "is not part of the key manager");
        let Value::Object(sequencer) = sequencer else {
            return Err(invalid("sequencer", "must be an object"));
        };
        c.others(
            sequencer,
            "sequencer",
            &["keyManager"],
            "is sequencer configuration, not key manager configuration",
        );
        let km = object(sequencer, "sequencer", "keyManager")?.ok_or_else(|| {
            missing(
                "sequencer.keyManager",
                "the key manager's configuration is what is converted",
            )
        })?;
        (km, "sequencer.keyManager".to_owned())
    } else if root.contains_key("keyManager") {
        c.others(root, "", &["keyManager"], "is not part of the key manager");
        let km = object(root, "", "keyManager")?
            .ok_or_else(|| invalid("keyManager", "must be an object"))?;
        (km, "keyManager".to_owned())
    } else if root.contains_key("type") {
        (root, String::new())
    } else {
        return Err(missing(
            "keyManager",
            "expected {\"keyManager\": {...}} or {\"sequencer\": {\"keyManager\": {...}}}",
        ));
    };
    c.key_manager(km, &base)?;
    Ok(c.finish())
}

/// Which provider the key manager became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CloudHsm,
    YubiHsm,
    Soft,
}

#[derive(Debug, Default)]
struct Converter {
    notes: Vec<Note>,
    /// Top-level `key = value` lines (before any table).
    top: Vec<String>,
    /// `[[providers]]` and later tables, in order.
    tables: Vec<String>,
    kind: Option<Kind>,
}

impl Converter {
    fn note(&mut self, field: &str, kind: NoteKind, text: impl Into<String>) {
        self.notes.push(Note {
            field: field.to_owned(),
            kind,
            text: text.into(),
            command: None,
        });
    }

    fn step(&mut self, kind: NoteKind, field: &str, text: impl Into<String>, command: String) {
        self.notes.push(Note {
            field: field.to_owned(),
            kind,
            text: text.into(),
            command: Some(command),
        });
    }

    fn before(&mut self, field: &str, text: impl Into<String>, command: String) {
        self.step(NoteKind::Before, field, text, command);
    }

    fn after(&mut self, field: &str, text: impl Into<String>, command: String) {
        self.step(NoteKind::After, field, text, command);
    }

    /// Notes every field of `map` not in `known`.
    fn others(&mut self, map: &Map<String, Value>, base: &str, known: &[&str], why: &str) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.note(&join(base, key), NoteKind::Unmapped, why.to_owned());
        }
    }

    /// Notes the fields this converter does not recognise.
    fn unrecognised(&mut self, map: &Map<String, Value>, base: &str, known: &[&str]) {
        self.others(
            map,
            base,
            known,
            "not a field of the guide's key manager configuration that Custos knows; not converted",
        );
    }

    fn key_manager(&mut self, km: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        const KNOWN: &[&str] = &[
            "type",
            "config",
            "failover",
            "keyRotation",
            "maxCacheSize",
            "cacheEnabled",
            "maxBatchSize",
            "auditLogFile",
            "cloudWatchLogs",
        ];
        self.before(
            "",
            "Custos needs its own master password (it seals its data directory); save the TOML as \
             custos.toml",
            "export CUSTOS_MASTER_PASSWORD='<a long passphrase>'".to_owned(),
        );
        let type_field = join(base, "type");
        let config_field = join(base, "config");
        let empty = Map::new();
        let config = object(km, base, "config")?;
        match str_field(km, base, "type")? {
            None if config.is_some() => return Err(missing(
                &type_field,
                "it says which key manager the config block is for (aws-cloudhsm, yubihsm, local)",
            )),
            None => self.note(
                &type_field,
                NoteKind::Unmapped,
                "absent: no [[providers]] is written, so Custos's default provider (the software \
                 keystore `soft`) applies",
            ),
            Some("aws-cloudhsm" | "cloudhsm" | "aws_cloudhsm") => {
                let config = config.ok_or_else(|| {
                    missing(
                        &config_field,
                        "aws-cloudhsm needs username and keyHandle from it",
                    )
                })?;
                self.cloudhsm(config, &config_field)?;
            }
            Some("yubihsm" | "yubi-hsm" | "yubihsm2") => {
                let config = config
                    .ok_or_else(|| missing(&config_field, "yubihsm needs authKeyId from it"))?;
                self.yubihsm(config, &config_field)?;
            }
            Some("local" | "software" | "soft") => {
                self.soft(config.unwrap_or(&empty), &config_field)?;
            }
            Some(other) => {
                return Err(ConvertError::UnknownType {
                    field: type_field,
                    found: other.to_owned(),
                })
            }
        }
        self.cache_and_batch(km, base, config.unwrap_or(&empty), &config_field)?;
        self.audit(km, base)?;
        if let Some(failover) = object(km, base, "failover")? {
            self.failover(failover, &join(base, "failover"))?;
        }
        if let Some(rotation) = object(km, base, "keyRotation")? {
            self.rotation(rotation, &join(base, "keyRotation"))?;
        }
        self.unrecognised(km, base, KNOWN);
        Ok(())
    }

    fn cloudhsm(&mut self, config: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        const KNOWN: &[&str] = &[
            "clusterEndpoint",
            "username",
            "password",
            "keyHandle",
            "region",
            "maxCacheSize",
        ];
        let user_field = join(base, "username");
        let username = str_field(config, base, "username")?.ok_or_else(|| {
            missing(
                &user_field,
                "CloudHSM's PKCS#11 PIN is <crypto user name>:<password>, so the PIN needs the user",
            )
        })?;
        if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
            return Err(invalid(
                &user_field,
                "must be a crypto user name: not empty, no ':' and no control characters",
            ));
        }
        let handle_field = join(base, "keyHandle");
        let handle = match config.get("keyHandle") {
            None | Some(Value::Null) => {
                return Err(missing(
                    &handle_field,
                    "it names the CloudHSM key Custos is to adopt",
                ))
            }
            Some(value) => Handle::parse(value, &handle_field)?,
        };
        self.kind = Some(Kind::CloudHsm);
        self.tables.push(format!(
            "[[providers]]\n\
             type = \"pkcs11\"\n\
             name = {}\n\
             module = {}   # AWS CloudHSM Client SDK 5's PKCS#11 library\n\
             token_label = {}   # the one token CloudHSM shows (Client SDK 3 called it \"cavium\")\n\
             pin = {{ env = {} }}   # holds <username>:<password>, never the password itself in this file\n\
             sessions = 4   # concurrent HSM operations\n",
            toml_str(CLOUDHSM_PROVIDER),
            toml_str(CLOUDHSM_MODULE),
            toml_str(CLOUDHSM_TOKEN),
            toml_str(CLOUDHSM_PIN_ENV),
        ));

        let password_field = join(base, "password");
        let password_text = if config.get("password").is_some_and(|v| !v.is_null()) {
            if !config.get("password").is_some_and(Value::is_string) {
                return Err(invalid(&password_field, "must be a string"));
            }
            format!(
                " The password in {password_field} was not copied into the output; remove it from the \
                 JSON once the sequencer no longer reads it."
            )
        } else {
            String::new()
        };
        self.before(
            &password_field,
            format!(
                "put the CloudHSM PIN in {CLOUDHSM_PIN_ENV}: CloudHSM's PKCS#11 PIN \
                 is {username}:<password> (crypto user and password joined by ':'). Or use \
                 pin = {{ file = \"/run/secrets/cloudhsm-pin\" }} with that text in the file.{password_text}"
            ),
            format!(
                "export {CLOUDHSM_PIN_ENV}={}",
                shell_quote(&format!("{username}:<password>"))
            ),
        );

        let endpoint_field = join(base, "clusterEndpoint");
        let endpoint = str_field(config, base, "clusterEndpoint")?;
        let endpoint_arg = match endpoint {
            Some(e) if !e.is_empty() && !is_placeholder(e) => shell_quote(e),
            _ => "<HSM IP address>".to_owned(),
        };
        self.before(
            &endpoint_field,
            "no Custos field: Custos loads CloudHSM's PKCS#11 library, and that library, not Custos, \
             connects to the cluster. Bootstrap it once per host with an HSM's IP address, and put the \
             cluster's issuing certificate at /opt/cloudhsm/etc/customerCA.crt",
            format!("sudo /opt/cloudhsm/bin/configure-pkcs11 -a {endpoint_arg}"),
        );
        if config.contains_key("region") {
            str_field(config, base, "region")?;
            self.note(
                &join(base, "region"),
                NoteKind::Unmapped,
                "no Custos field: the PKCS#11 library reaches the HSMs by the IP addresses in its own \
                 configuration (configure-pkcs11) and never needs the region; the region matters only to \
                 the AWS API that manages the cluster, which Custos does not call",
            );
        }
        self.note(
            &handle_field,
            NoteKind::Differs,
            "Solana signs with Ed25519: CloudHSM has Ed25519 keys only on hsm2m.medium clusters in \
             non-FIPS mode. Custos signs with CKM_EDDSA through the PKCS#11 library; it is tested \
             against SoftHSM2 here, not against CloudHSM",
        );
        self.adopt_cloudhsm(&handle, &handle_field);
        self.unrecognised(config, base, KNOWN);
        Ok(())
    }

    /// The step that adopts the CloudHSM key, with the handle mapped as well as it can be.
    fn adopt_cloudhsm(&mut self, handle: &Handle, field: &str) {
        let adopt = |reference: &str| {
            format!(
                "custos key create {KEY_NAME} --algorithm ed25519 --provider {CLOUDHSM_PROVIDER} --adopt {}",
                shell_quote(reference)
            )
        };
        let id_rule = "Custos addresses a PKCS#11 key by its CKA_ID: the private and the public key \
                       object must share a non-empty CKA_ID. CloudHSM's `id` attribute is empty unless \
                       it was set when the key was made, and cannot be changed afterwards; if it is \
                       empty Custos cannot adopt this key, and `custos key create sequencer --algorithm \
                       ed25519 --provider cloudhsm` makes a new one instead (a new public key: the \
                       sequencer's identity changes)";
        let (text, command) = match handle {
            Handle::Id(hex) => (
                format!(
                    "after `custos serve` is up, adopt the key by its CKA_ID (with an admin token: \
                     CUSTOS_TOKEN from `custos init`). {id_rule}"
                ),
                adopt(&format!("id:{hex}")),
            ),
            Handle::Label(label) => (
                format!(
                    "taken as the key's label (CKA_LABEL); after `custos serve` is up, adopt it (with an \
                     admin token). If it is not the label, look the key up in CloudHSM CLI with `key list \
                     --filter attr.label={} --verbose`. {id_rule}",
                    shell_quote(label)
                ),
                adopt(&format!("label:{label}")),
            ),
            Handle::Object { number, hex } => {
                let (what, lookup) = if *hex {
                    (
                        format!("0x{number:016x} is a CloudHSM key reference (CloudHSM CLI, Client SDK 5)"),
                        format!(
                            "in CloudHSM CLI (logged in as the crypto user) `key list --filter \
                             key-reference=0x{number:016x} --verbose` shows attributes.id (hex; give it \
                             without 0x) and attributes.label"
                        ),
                    )
                } else {
                    (
                        format!("{number} is a CloudHSM key handle (key_mgmt_util, Client SDK 3)"),
                        format!(
                            "in key_mgmt_util `getAttribute -o {number} -a 512 -out attrs.txt` writes \
                             every attribute, OBJ_ATTR_ID (258) and OBJ_ATTR_LABEL (3) among them; with \
                             Client SDK 5, CloudHSM CLI's `key list --verbose` lists the keys with their \
                             key-reference, id and label"
                        ),
                    )
                };
                (
                    format!(
                        "{what}: the HSM's number for the object, which is neither its CKA_ID nor its \
                         CKA_LABEL (PKCS#11 object handles are not stable names), so Custos cannot adopt \
                         by it. Find the key's id and label: {lookup}. Then adopt by id (or \
                         --adopt label:<label>). {id_rule}"
                    ),
                    adopt("id:<CKA_ID in hex>"),
                )
            }
            Handle::Placeholder(text) => (
                format!(
                    "{text} is a placeholder: fill in the key's CKA_ID (CloudHSM CLI: `key list \
                     --filter attr.label=<label> --verbose` shows attributes.id) or use \
                     --adopt label:<label>. {id_rule}"
                ),
                adopt("id:<CKA_ID in hex>"),
            ),
        };
        self.after(field, text, command);
    }

    fn yubihsm(&mut self, config: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        const KNOWN: &[&str] = &[
            "connector",
            "connectorUrl",
            "url",
            "authKeyId",
            "password",
            "keyId",
            "keyHandle",
            "domain",
            "domains",
            "maxCacheSize",
        ];
        let mut connector = None;
        for key in ["connector", "connectorUrl", "url"] {
            if let Some(url) = str_field(config, base, key)? {
                let field = join(base, key);
                if connector.is_some() {
                    return Err(invalid(
                        &field,
                        "give the connector once (connector, connectorUrl or url)",
                    ));
                }
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.chars().any(char::is_control)
                {
                    return Err(invalid(
                        &field,
                        "must be yubihsm-connector's http:// or https:// URL (Custos talks to the \
                         YubiHSM2 through yubihsm-connector only)",
                    ));
                }
                connector = Some(url.to_owned());
            }
        }
        let auth_field = join(base, "authKeyId");
        let auth_key_id = match config.get("authKeyId") {
            None | Some(Value::Null) => {
                return Err(missing(
                    &auth_field,
                    "the object id of the authentication key Custos opens its session with",
                ))
            }
            Some(value) => object_id(value, &auth_field)?,
        };
        let domain = self.yubihsm_domain(config, base)?;
        self.kind = Some(Kind::YubiHsm);
        let connector_line = match &connector {
            Some(url) => format!("connector = {}\n", toml_str(url)),
            None => format!(
                "connector = {}   # Custos's default; the JSON gives none\n",
                toml_str(YUBIHSM_CONNECTOR)
            ),
        };
        self.tables.push(format!(
            "[[providers]]\n\
             type = \"yubihsm\"\n\
             name = {}\n\
             {connector_line}\
             auth_key_id = {auth_key_id}\n\
             password = {{ env = {} }}   # the authentication key's password, never in this file\n\
             domain = {domain}\n",
            toml_str(YUBIHSM_PROVIDER),
            toml_str(YUBIHSM_PASSWORD_ENV),
        ));
        let password_field = join(base, "password");
        if config
            .get("password")
            .is_some_and(|v| !v.is_null() && !v.is_string())
        {
            return Err(invalid(&password_field, "must be a string"));
        }
        self.before(
            &password_field,
            format!(
                "put authentication key {auth_key_id}'s password in {YUBIHSM_PASSWORD_ENV} \
                 (or use password = {{ file = \"/run/secrets/yubihsm\" }}); the password \
                 from the JSON was not copied into the output"
            ),
            format!("export {YUBIHSM_PASSWORD_ENV}='<password>'"),
        );
        let key_field = ["keyId", "keyHandle"]
            .into_iter()
            .find(|k| config.get(*k).is_some_and(|v| !v.is_null()));
        let create = format!(
            "custos key create {KEY_NAME} --algorithm ed25519 --provider {YUBIHSM_PROVIDER}"
        );
        match key_field {
            Some(key) => self.after(
                &join(base, key),
                "Custos cannot adopt a key that already exists in a YubiHSM2 (its yubihsm provider only \
                 generates keys, without exportable-under-wrap); create a new key there. It has a new public key: the sequencer's identity changes",
                create,
            ),
            None => self.after(
                base,
                "create the sequencer's key in the YubiHSM2",
                create,
            ),
        }
        self.unrecognised(config, base, KNOWN);
        Ok(())
    }

    /// The YubiHSM domain: `domain` (1-16), or `domains` with one entry.
    fn yubihsm_domain(
        &mut self,
        config: &Map<String, Value>,
        base: &str,
    ) -> Result<u64, ConvertError> {
        let check = |value: &Value, field: &str| match value.as_u64() {
            Some(d @ 1..=16) => Ok(d),
            _ => Err(invalid(field, "a YubiHSM domain is a number from 1 to 16")),
        };
        if let Some(value) = config.get("domain").filter(|v| !v.is_null()) {
            return check(value, &join(base, "domain"));
        }
        let field = join(base, "domains");
        match config.get("domains") {
            None | Some(Value::Null) => Ok(1),
            Some(Value::Array(list)) if !list.is_empty() => {
                let first = check(&list[0], &format!("{field}[0]"))?;
                for (i, value) in list.iter().enumerate().skip(1) {
                    check(value, &format!("{field}[{i}]"))?;
                }
                if list.len() > 1 {
                    self.note(
                        &field,
                        NoteKind::Differs,
                        format!(
                            "Custos puts the keys it generates in one domain: {first}, the first listed"
                        ),
                    );
                }
                Ok(first)
            }
            Some(Value::Array(_)) => Err(invalid(&field, "must list at least one domain")),
            Some(value) => check(value, &field),
        }
    }

    fn soft(&mut self, config: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        const KNOWN: &[&str] = &[
            "keypairPath",
            "keyPath",
            "keyFile",
            "privateKey",
            "secretKey",
            "maxCacheSize",
        ];
        self.kind = Some(Kind::Soft);
        self.tables.push(format!(
            "[[providers]]\ntype = \"soft\"\nname = {}   # keys sealed under the master password\n",
            toml_str(SOFT_PROVIDER)
        ));
        let create =
            format!("custos key create {KEY_NAME} --algorithm ed25519 --provider {SOFT_PROVIDER}");
        let key_field = KNOWN[..5]
            .iter()
            .find(|k| config.get(**k).is_some_and(|v| !v.is_null()));
        match key_field {
            Some(key) => self.after(
                &join(base, key),
                "Custos's software keystore holds keys it generated, sealed under the master password \
                 in its database; its CLI has no command to import an existing keypair (its value was \
                 not copied into the output). Create a new key: it has a \
                 new public key, so the sequencer's identity changes",
                create,
            ),
            None => self.after(
                base,
                "create the sequencer's key",
                create,
            ),
        }
        self.unrecognised(config, base, KNOWN);
        Ok(())
    }

    fn cache_and_batch(
        &mut self,
        km: &Map<String, Value>,
        base: &str,
        config: &Map<String, Value>,
        config_base: &str,
    ) -> Result<(), ConvertError> {
        let mut size = None;
        for (map, at) in [(km, base), (config, config_base)] {
            if let Some(n) = uint(map, at, "maxCacheSize", "entries")? {
                if size.is_some_and(|s| s != n) {
                    return Err(invalid(
                        &join(at, "maxCacheSize"),
                        "differs from the other maxCacheSize; give one",
                    ));
                }
                size = Some(n);
            }
        }
        if bool_field(km, base, "cacheEnabled")? == Some(false) {
            size = Some(0);
            self.note(
                &join(base, "cacheEnabled"),
                NoteKind::Differs,
                "false: max_cache_size = 0 turns Custos's signature cache off",
            );
        }
        if let Some(size) = size {
            self.top.push(format!(
                "max_cache_size = {size}   # signatures kept for repeated identical sign requests (LRU; \
                 from maxCacheSize)"
            ));
        }
        if let Some(n) = uint(km, base, "maxBatchSize", "items")? {
            if n == 0 {
                return Err(invalid(&join(base, "maxBatchSize"), "must be at least 1"));
            }
            self.top.push(format!(
                "max_batch_items = {n}   # most items per sign-batch request (from maxBatchSize)"
            ));
        }
        Ok(())
    }

    fn audit(&mut self, km: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        let file = str_field(km, base, "auditLogFile")?;
        let cloudwatch = km.get("cloudWatchLogs").filter(|v| !v.is_null());
        if file.is_none() && cloudwatch.is_none() {
            return Ok(());
        }
        self.tables.push(
            "[audit]\nsink = \"stdout\"   # every audit record as a JSON line on standard output\n"
                .to_owned(),
        );
        if let Some(file) = file {
            self.note(
                &join(base, "auditLogFile"),
                NoteKind::Differs,
                format!(
                    "Custos keeps its tamper-evident audit log in its database (custos audit export); \
                     for a file copy it writes each record to standard output (sink = \"stdout\"; its \
                     own logs go to standard error): `custos serve --config custos.toml >> {}`",
                    shell_quote(file)
                ),
            );
        }
        if cloudwatch.is_some() {
            self.note(
                &join(base, "cloudWatchLogs"),
                NoteKind::Unmapped,
                "Custos does not call CloudWatch; ship the stdout sink's JSON lines (or the exported \
                 log) with the CloudWatch agent",
            );
        }
        Ok(())
    }

    fn failover(&mut self, fo: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        let mut known: Vec<String> = [
            "enabled",
            "maxPrimaryRetries",
            "maxSecondaryRetries",
            "breakerFailures",
            "emergencyModeEnabled",
            "emergencyModeRestrictions",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut config = custos_core::FailoverConfig::default();
        // (TOML line value, where it came from) for each field, in FailoverConfig's order.
        let mut lines: Vec<(String, String, Option<String>)> = Vec::new();
        let mut put = |name: &str, value: String, from: Option<String>| {
            lines.push((name.to_owned(), value, from));
        };
        let primary_interval = duration(fo, base, "primaryRetryInterval", Unit::Ms, &mut known)?;
        if let Some(d) = &primary_interval {
            config.primary_retry_interval_ms = d.value;
        }
        put(
            "primary_retry_interval_ms",
            config.primary_retry_interval_ms.to_string(),
            primary_interval.as_ref().map(Duration::source),
        );
        let max_primary = u32_field(fo, base, "maxPrimaryRetries", "retries")?;
        if let Some(n) = max_primary {
            config.max_primary_retries = n;
        }
        put(
            "max_primary_retries",
            config.max_primary_retries.to_string(),
            max_primary.map(|_| "maxPrimaryRetries".to_owned()),
        );
        let secondary_interval =
            duration(fo, base, "secondaryRetryInterval", Unit::Ms, &mut known)?;
        if let Some(d) = &secondary_interval {
            config.secondary_retry_interval_ms = d.value;
        }
        put(
            "secondary_retry_interval_ms",
            config.secondary_retry_interval_ms.to_string(),
            secondary_interval.as_ref().map(Duration::source),
        );
        let max_secondary = u32_field(fo, base, "maxSecondaryRetries", "retries")?;
        if let Some(n) = max_secondary {
            config.max_secondary_retries = n;
        }
        put(
            "max_secondary_retries",
            config.max_secondary_retries.to_string(),
            max_secondary.map(|_| "maxSecondaryRetries".to_owned()),
        );
        let mut timeout = None;
        for stem in ["providerTimeout", "timeout"] {
            if let Some(d) = duration(fo, base, stem, Unit::Ms, &mut known)? {
                if timeout.is_some() {
                    return Err(invalid(
                        &d.field,
                        "give the provider timeout once (providerTimeoutMs or timeoutMs)",
                    ));
                }
                timeout = Some(d);
            }
        }
        if let Some(d) = &timeout {
            if d.value == 0 {
                return Err(invalid(&d.field, "a timeout of 0 would fail every call"));
            }
            config.provider_timeout_ms = d.value;
        }
        put(
            "provider_timeout_ms",
            config.provider_timeout_ms.to_string(),
            timeout.as_ref().map(Duration::source),
        );
        let breaker = u32_field(fo, base, "breakerFailures", "failures")?;
        if let Some(n) = breaker {
            config.breaker_failures = n;
        }
        put(
            "breaker_failures",
            config.breaker_failures.to_string(),
            breaker.map(|_| "breakerFailures".to_owned()),
        );
        let open = duration(fo, base, "breakerOpen", Unit::Ms, &mut known)?;
        if let Some(d) = &open {
            config.breaker_open_ms = d.value;
        }
        put(
            "breaker_open_ms",
            config.breaker_open_ms.to_string(),
            open.as_ref().map(Duration::source),
        );

        let mut text = String::from(
            "[failover]   # retries along each key's provider chain (custos-core failover.rs)\n",
        );
        for (name, value, from) in &lines {
            let comment = match from {
                Some(from) => format!("from {from}"),
                None => "Custos's default; the JSON sets no equivalent".to_owned(),
            };
            text.push_str(&format!("{name} = {value}   # {comment}\n"));
        }
        self.tables.push(text);

        let enabled_field = join(base, "enabled");
        if let Some(enabled) = bool_field(fo, base, "enabled")? {
            let text = if enabled {
                "no Custos field: failover happens for keys whose provider chain has more than one \
                 provider (`custos key create NAME --provider A --provider B`); the retries above apply \
                 to every chain"
            } else {
                "false has no Custos field: a key created with a single provider never fails over \
                 (the primary's retries above still apply)"
            };
            self.note(&enabled_field, NoteKind::Unmapped, text);
        }
        self.note(
            base,
            NoteKind::Differs,
            format!(
                "the retry counts and pauses mean the same in both (retries after the first attempt; \
                 the pause between attempts; the secondary values apply to every later provider of a \
                 chain). Custos adds a per-call timeout and a circuit breaker: after {} failures in a \
                 row a provider is skipped at once for {} ms, so only the first requests after an outage \
                 pay the retry budget ({} ms on the primary with these values). The seed's providers \
                 come from its code, not this file: in Custos a key's chain is chosen at `custos key \
                 create` and every provider of it must hold the same key, which one provider that can \
                 export (soft) generates and the others import, so an adopted HSM key has a chain of \
                 one. CloudHSM's own failover between HSMs in several availability zones happens inside \
                 the CloudHSM client: add HSMs to the cluster",
                config.breaker_failures.max(1),
                config.breaker_open_ms,
                config.retry_budget(0).as_millis(),
            ),
        );

        let emergency = self.emergency(fo, base)?;
        self.tables.push(emergency);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        self.unrecognised(fo, base, &known);
        Ok(())
    }

    fn emergency(&mut self, fo: &Map<String, Value>, base: &str) -> Result<String, ConvertError> {
        let mut config = custos_core::EmergencyConfig::default();
        let enabled = bool_field(fo, base, "emergencyModeEnabled")?;
        if let Some(enabled) = enabled {
            config.enabled = enabled;
        }
        let enabled_comment = match enabled {
            Some(_) => "from emergencyModeEnabled".to_owned(),
            None => "Custos's default (off); the JSON sets no emergencyModeEnabled".to_owned(),
        };
        let restrictions_base = join(base, "emergencyModeRestrictions");
        let empty = Map::new();
        let restrictions = object(fo, base, "emergencyModeRestrictions")?.unwrap_or(&empty);
        let mut known: Vec<String> = ["maxTransactions", "allowedOperations"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let max_tx = uint(
            restrictions,
            &restrictions_base,
            "maxTransactions",
            "signatures",
        )?;
        if let Some(n) = max_tx {
            config.max_transactions = n;
        }
        let max_time = duration(
            restrictions,
            &restrictions_base,
            "maxTime",
            Unit::Seconds,
            &mut known,
        )?;
        if let Some(d) = &max_time {
            config.max_time_seconds = d.value;
            if d.rounded {
                self.note(
                    &d.field,
                    NoteKind::Differs,
                    format!(
                        "Custos counts this window in whole seconds: rounded up to {} s",
                        d.value
                    ),
                );
            }
        }
        let ops_field = join(&restrictions_base, "allowedOperations");
        let ops = match restrictions.get("allowedOperations") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => {
                let mut ops: Vec<String> = Vec::new();
                for (i, op) in list.iter().enumerate() {
                    let Some(op) = op.as_str() else {
                        return Err(invalid(
                            &format!("{ops_field}[{i}]"),
                            "must be an operation name (a string)",
                        ));
                    };
                    let mapped = match op {
                        "sign" => Some("sign"),
                        "signBatch" | "sign_batch" | "sign-batch" | "batchSign" => {
                            Some("sign_batch")
                        }
                        "verify" => {
                            self.note(
                                &format!("{ops_field}[{i}]"),
                                NoteKind::Unmapped,
                                "\"verify\" needs no emergency permission in Custos: it verifies \
                                 against the key's stored public key without asking a provider",
                            );
                            None
                        }
                        other => {
                            self.note(
                                &format!("{ops_field}[{i}]"),
                                NoteKind::Unmapped,
                                format!(
                                    "{other:?} has no Custos equivalent: emergency mode covers only \
                                     sign and sign_batch"
                                ),
                            );
                            None
                        }
                    };
                    if let Some(m) = mapped {
                        if !ops.iter().any(|o| o == m) {
                            ops.push(m.to_owned());
                        }
                    }
                }
                Some(ops)
            }
            Some(_) => return Err(invalid(&ops_field, "must be a list of operation names")),
        };
        if let Some(ops) = &ops {
            if ops.is_empty() && config.enabled {
                self.note(
                    &ops_field,
                    NoteKind::Differs,
                    "no operation Custos knows is allowed: emergency mode is on but refuses everything",
                );
            }
            config.allowed_operations.clone_from(ops);
        }
        if config.enabled {
            self.note(
                &join(base, "emergencyModeEnabled"),
                NoteKind::Differs,
                "as in the seed, an ephemeral in-memory key signs when every provider has failed: a \
                 different key (a different sequencer identity), never persisted; Custos marks those \
                 answers \"emergency\": true with emergency_public_key. Its limits count per key and \
                 survive restarts (the seed counts in memory for the whole process), and the time \
                 window starts at the key's first emergency signature",
            );
        }
        let default = |set: bool, name: &str| {
            if set {
                format!("from {name}")
            } else {
                "Custos's default; the JSON sets none".to_owned()
            }
        };
        let list = config
            .allowed_operations
            .iter()
            .map(|o| toml_str(o))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[failover.emergency]\n\
             enabled = {}   # {enabled_comment}\n\
             max_transactions = {}   # {}\n\
             max_time_seconds = {}   # {}\n\
             allowed_operations = [{list}]   # {}\n",
            config.enabled,
            config.max_transactions,
            default(max_tx.is_some(), "maxTransactions"),
            config.max_time_seconds,
            max_time
                .as_ref()
                .map_or_else(|| default(false, ""), Duration::source_comment),
            default(ops.is_some(), "allowedOperations"),
        );
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        self.unrecognised(restrictions, &restrictions_base, &known);
        Ok(text)
    }

    fn rotation(&mut self, rot: &Map<String, Value>, base: &str) -> Result<(), ConvertError> {
        const KNOWN: &[&str] = &[
            "enabled",
            "intervalDays",
            "overlapDays",
            "rotationTime",
            "timeZone",
            "backupEnabled",
            "backupLocation",
            "backupRecipient",
        ];
        self.unrecognised(rot, base, KNOWN);
        let enabled = bool_field(rot, base, "enabled")?;
        let interval = u32_field(rot, base, "intervalDays", "days")?;
        let overlap = u32_field(rot, base, "overlapDays", "days")?.unwrap_or(0);
        let time = str_field(rot, base, "rotationTime")?.unwrap_or("00:00:00");
        let zone = str_field(rot, base, "timeZone")?.unwrap_or("UTC");
        let backup = bool_field(rot, base, "backupEnabled")?.unwrap_or(false);
        let location = str_field(rot, base, "backupLocation")?;
        let recipient = str_field(rot, base, "backupRecipient")?;
        if enabled == Some(false) || (enabled.is_none() && interval.is_none()) {
            self.note(
                base,
                NoteKind::Unmapped,
                "rotation is off: a Custos key rotates on a schedule only when it has a rotation \
                 policy (`custos key rotation`), so there is nothing to set",
            );
            return Ok(());
        }
        let interval_field = join(base, "intervalDays");
        let interval = interval
            .ok_or_else(|| missing(&interval_field, "a rotation schedule needs its interval"))?;
        let policy = custos_core::RotationPolicy {
            interval_days: interval,
            overlap_days: overlap,
            rotation_time: time.to_owned(),
            time_zone: zone.to_owned(),
            backup_enabled: false,
            backup_location: None,
            backup_recipient: None,
        };
        policy
            .validate()
            .map_err(|e| invalid(base, &e.to_string()))?;
        let mut command = format!(
            "custos key rotation {KEY_NAME} --interval-days {interval} --overlap-days {overlap} \
             --rotation-time {} --time-zone {}",
            shell_quote(time),
            shell_quote(zone)
        );
        let backup_field = join(base, "backupEnabled");
        if backup {
            match self.kind {
                Some(Kind::CloudHsm) => self.note(
                    &backup_field,
                    NoteKind::Unmapped,
                    "Custos writes backup files only of keys that may leave their provider; a CloudHSM \
                     key never does. AWS CloudHSM backs the cluster up itself (automatic backups, \
                     which restore into a new cluster); backupLocation is not used",
                ),
                Some(Kind::YubiHsm) => self.note(
                    &backup_field,
                    NoteKind::Unmapped,
                    "Custos writes backup files only of keys that may leave their provider; the keys \
                     it makes in a YubiHSM2 are not exportable, so there is no backup to write; \
                     backupLocation is not used",
                ),
                Some(Kind::Soft) | None => {
                    let dir = match location {
                        Some(l) if l.contains("://") => {
                            self.note(
                                &join(base, "backupLocation"),
                                NoteKind::Differs,
                                format!(
                                    "Custos writes backups (PKCS#8 encrypted with age) to a local \
                                     directory, not to {l}: give a directory and copy it there \
                                     (for S3, `aws s3 sync /var/backups/custos {}`)",
                                    shell_quote(l)
                                ),
                            );
                            "/var/backups/custos".to_owned()
                        }
                        Some(l) if !l.is_empty() => l.to_owned(),
                        _ => "/var/backups/custos".to_owned(),
                    };
                    let recipient = match recipient {
                        Some(r) => r.to_owned(),
                        None => {
                            self.note(
                                &backup_field,
                                NoteKind::Differs,
                                "Custos encrypts each backup to an age recipient whose identity \
                                 stays offline: make one with `age-keygen -o backup-identity.txt` \
                                 and put its age1... recipient in the command",
                            );
                            "<age1... recipient>".to_owned()
                        }
                    };
                    command.push_str(&format!(
                        " --backup-dir {} --backup-recipient {}",
                        shell_quote(&dir),
                        shell_quote(&recipient)
                    ));
                }
            }
        }
        self.after(
            base,
            "Custos keeps a rotation schedule per key (there is no rotation block for it in the \
             config); set it once the key exists. After the overlap the old version only verifies \
             (the seed deactivates it); during the overlap it signs only when asked by --version",
            command,
        );
        Ok(())
    }

    fn finish(mut self) -> Conversion {
        self.before(
            "",
            "create the data directory (it prints the root token once), then start the server",
            "custos init --config custos.toml && custos serve --config custos.toml".to_owned(),
        );
        // Steps before the server starts come first; otherwise file order (the sort is stable).
        self.notes.sort_by_key(|n| match n.kind {
            NoteKind::Before => 0,
            NoteKind::After => 1,
            NoteKind::Unmapped | NoteKind::Differs => 2,
        });
        let mut toml = String::from(
            "# Custos configuration converted by `custos config convert` from a sequencer keyManager JSON.\n\
             # It holds no secrets: passwords and PINs are references. Notes on every field that did not\n\
             # map were printed on standard error; the steps are repeated at the end of this file.\n\
             # master_password = { env = \"CUSTOS_MASTER_PASSWORD\" }   # the default\n",
        );
        for line in &self.top {
            toml.push_str(line);
            toml.push('\n');
        }
        for table in &self.tables {
            toml.push('\n');
            toml.push_str(table);
        }
        let steps: Vec<&Note> = self.notes.iter().filter(|n| n.is_step()).collect();
        if !steps.is_empty() {
            toml.push_str("\n# Steps:\n");
            for (i, note) in steps.iter().enumerate() {
                if let Some(command) = &note.command {
                    toml.push_str(&format!("# {}. {}\n", i + 1, comment_safe(command)));
                }
            }
        }
        Conversion {
            toml,
            notes: self.notes,
        }
    }
}

/// What `keyHandle` turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handle {
    /// `id:<hex>`: a CKA_ID (hex, lower case, no 0x).
    Id(String),
    /// `label:<text>`, or text that is taken as the label.
    Label(String),
    /// A number: a CloudHSM key handle (SDK 3, decimal) or key reference (SDK 5, `0x...` hex).
    Object { number: u64, hex: bool },
    /// `<key-handle>` as in the guide: not filled in.
    Placeholder(String),
}

impl Handle {
    fn parse(value: &Value, field: &str) -> Result<Handle, ConvertError> {
        let text = match value {
            Value::Number(n) => {
                return n
                    .as_u64()
                    .map(|number| Handle::Object { number, hex: false })
                    .ok_or_else(|| {
                        invalid(
                            field,
                            "a numeric key handle must be a whole number, 0 or more",
                        )
                    })
            }
            Value::String(s) => s.trim(),
            _ => {
                return Err(invalid(
                    field,
                    "must be a string (a key handle, label:<text> or id:<hex>) or a number",
                ))
            }
        };
        if text.is_empty() || text.chars().any(char::is_control) {
            return Err(invalid(
                field,
                "must not be empty or hold control characters",
            ));
        }
        if is_placeholder(text) {
            return Ok(Handle::Placeholder(text.to_owned()));
        }
        if let Some(label) = text.strip_prefix("label:") {
            if label.is_empty() {
                return Err(invalid(field, "label: needs the label after it"));
            }
            return Ok(Handle::Label(label.to_owned()));
        }
        if let Some(id) = text.strip_prefix("id:") {
            let id = id.strip_prefix("0x").unwrap_or(id);
            if id.is_empty() || id.len() % 2 != 0 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    field,
                    "id: needs the CKA_ID as an even number of hex digits",
                ));
            }
            return Ok(Handle::Id(id.to_ascii_lowercase()));
        }
        if text.chars().all(|c| c.is_ascii_digit()) {
            return text
                .parse()
                .map(|number| Handle::Object { number, hex: false })
                .map_err(|_| invalid(field, "the key handle is too large"));
        }
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return u64::from_str_radix(hex, 16)
                    .map(|number| Handle::Object { number, hex: true })
                    .map_err(|_| invalid(field, "the key reference is too large (over 64 bits)"));
            }
        }
        Ok(Handle::Label(text.to_owned()))
    }
}

/// The unit a Custos duration field counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ms,
    Seconds,
}

/// A duration read from the JSON, converted to the Custos field's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Duration {
    /// In the Custos field's unit.
    value: u64,
    /// The JSON field (full path).
    field: String,
    /// The JSON key it came from.
    key: String,
    /// The source unit differed from the target's.
    converted: bool,
    /// Milliseconds that did not make a whole second were rounded up.
    rounded: bool,
}

impl Duration {
    fn source(&self) -> String {
        if self.converted {
            format!("{}, converted", self.key)
        } else {
            self.key.clone()
        }
    }

    fn source_comment(&self) -> String {
        format!("from {}", self.source())
    }
}

/// The unit suffixes a duration field may carry, with their length in milliseconds.
const UNITS: &[(&str, u64, &str)] = &[
    ("Ms", 1, "milliseconds"),
    ("Millis", 1, "milliseconds"),
    ("Milliseconds", 1, "milliseconds"),
    ("Seconds", 1_000, "seconds"),
    ("Secs", 1_000, "seconds"),
    ("Minutes", 60_000, "minutes"),
    ("Hours", 3_600_000, "hours"),
];

/// Reads `<stem><Unit>` (at most one of the unit suffixes), converted to `target`. Adds every accepted
/// key to `known`.
fn duration(
    map: &Map<String, Value>,
    base: &str,
    stem: &str,
    target: Unit,
    known: &mut Vec<String>,
) -> Result<Option<Duration>, ConvertError> {
    let mut found: Option<Duration> = None;
    for (suffix, ms_per_unit, unit) in UNITS {
        let key = format!("{stem}{suffix}");
        known.push(key.clone());
        let field = join(base, &key);
        let Some(amount) = uint(map, base, &key, unit)? else {
            continue;
        };
        if found.is_some() {
            return Err(invalid(
                &field,
                &format!("gives {stem} a second time; keep one of the unit spellings"),
            ));
        }
        let ms = amount
            .checked_mul(*ms_per_unit)
            .ok_or_else(|| invalid(&field, "is too large"))?;
        let (value, converted, rounded) = match target {
            Unit::Ms => (ms, *ms_per_unit != 1, false),
            Unit::Seconds => (ms.div_ceil(1000), *ms_per_unit != 1_000, ms % 1000 != 0),
        };
        found = Some(Duration {
            value,
            field,
            key,
            converted,
            rounded,
        });
    }
    Ok(found)
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

fn missing(field: &str, why: &str) -> ConvertError {
    ConvertError::Missing {
        field: field.to_owned(),
        why: why.to_owned(),
    }
}

fn invalid(field: &str, why: &str) -> ConvertError {
    ConvertError::Invalid {
        field: field.to_owned(),
        why: why.to_owned(),
    }
}

/// `map[key]` as an object; absent and null are `None`.
fn object<'a>(
    map: &'a Map<String, Value>,
    base: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, ConvertError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid(&join(base, key), "must be an object")),
    }
}

fn str_field<'a>(
    map: &'a Map<String, Value>,
    base: &str,
    key: &str,
) -> Result<Option<&'a str>, ConvertError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&join(base, key), "must be a string")),
    }
}

fn bool_field(
    map: &Map<String, Value>,
    base: &str,
    key: &str,
) -> Result<Option<bool>, ConvertError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(&join(base, key), "must be true or false")),
    }
}

/// A whole number, 0 or more (`5000.0` counts as whole); `what` names the unit for the error.
fn uint(
    map: &Map<String, Value>,
    base: &str,
    key: &str,
    what: &str,
) -> Result<Option<u64>, ConvertError> {
    let value = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let bad = || {
        invalid(
            &join(base, key),
            &format!("must be a whole number of {what}, 0 or more (not {value})"),
        )
    };
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Ok(Some(n)),
            // A float that is a whole number within u64's exact range.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => {
                format!("{f:.0}").parse().map(Some).map_err(|_| bad())
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn u32_field(
    map: &Map<String, Value>,
    base: &str,
    key: &str,
    what: &str,
) -> Result<Option<u32>, ConvertError> {
    uint(map, base, key, what)?
        .map(|n| {
            u32::try_from(n).map_err(|_| invalid(&join(base, key), &format!("{n} is too large")))
        })
        .transpose()
}

/// A YubiHSM object id: a number or a string (`"1"`, `"0x0001"`) from 1 to 65535.
fn object_id(value: &Value, field: &str) -> Result<u16, ConvertError> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| invalid(field, "must be an object id from 1 to 65535"))
}

/// The guide's placeholders look like `<cluster-ip>`.
fn is_placeholder(text: &str) -> bool {
    text.starts_with('<') && text.ends_with('>')
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Quotes a shell word when it needs it. Placeholders (`<...>`) are left bare for the reader to replace.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain || is_placeholder(s) || s.starts_with("id:<") || s.starts_with("label:<") {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Text that can sit in a TOML comment: no line breaks or other control characters.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SecretRef};

    /// The guide's sequencer configuration, as printed in its "Integration with Sequencer" section.
    const SEED_SEQUENCER: &str = r#"{
  "sequencer": {
    "keyManager": {
      "type": "aws-cloudhsm",
      "config": {
        "clusterEndpoint": "<cluster-ip>",
        "username": "sequencer-user",
        "password": "password",
        "keyHandle": "<key-handle>",
        "region": "us-east-1"
      }
    }
  }
}"#;

    /// The guide's failover configuration ("Failover System").
    const SEED_FAILOVER: &str = r#"{
  "keyManager": {
    "failover": {
      "enabled": true,
      "primaryRetryIntervalMs": 5000,
      "maxPrimaryRetries": 3,
      "secondaryRetryIntervalMs": 10000,
      "maxSecondaryRetries": 3,
      "emergencyModeEnabled": true,
      "emergencyModeRestrictions": {
        "maxTransactions": 1000,
        "maxTimeSeconds": 3600,
        "allowedOperations": ["sign"]
      }
    }
  }
}"#;

    /// The guide's rotation configuration ("Key Rotation System").
    const SEED_ROTATION: &str = r#"{
  "keyManager": {
    "keyRotation": {
      "enabled": true,
      "intervalDays": 30,
      "overlapDays": 2,
      "rotationTime": "00:00:00",
      "timeZone": "UTC",
      "backupEnabled": true,
      "backupLocation": "s3://layer2-key-backups"
    }
  }
}"#;

    /// The three sections in one file, as a team would have it, with a distinctive password.
    const COMBINED: &str = r#"{
  "sequencer": {
    "port": 8899,
    "keyManager": {
      "type": "aws-cloudhsm",
      "config": {
        "clusterEndpoint": "10.0.1.23",
        "username": "sequencer-user",
        "password": "Zq7-unique-Pa55word!",
        "keyHandle": 262150,
        "region": "us-east-1"
      },
      "maxCacheSize": 5000,
      "failover": {
        "enabled": true,
        "primaryRetryIntervalMs": 5000,
        "maxPrimaryRetries": 3,
        "secondaryRetryIntervalMs": 10000,
        "maxSecondaryRetries": 3,
        "emergencyModeEnabled": true,
        "emergencyModeRestrictions": {
          "maxTransactions": 1000,
          "maxTimeSeconds": 3600,
          "allowedOperations": ["sign", "verify"]
        }
      },
      "keyRotation": {
        "enabled": true,
        "intervalDays": 30,
        "overlapDays": 2,
        "rotationTime": "00:00:00",
        "timeZone": "UTC",
        "backupEnabled": true,
        "backupLocation": "s3://layer2-key-backups"
      }
    }
  }
}"#;

    fn parse(toml: &str) -> Config {
        toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n---\n{toml}"))
    }

    fn note<'a>(c: &'a Conversion, field: &str, kind: NoteKind) -> &'a Note {
        c.notes
            .iter()
            .find(|n| n.field == field && n.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} note for {field}: {:#?}", c.notes))
    }

    fn everything(c: &Conversion) -> String {
        format!("{}\n{}", c.toml, render_notes(&c.notes))
    }

    #[test]
    fn the_seed_sequencer_example_becomes_a_pkcs11_provider() {
        let c = convert(SEED_SEQUENCER).unwrap();
        let config = parse(&c.toml);
        assert_eq!(config.providers.len(), 1);
        let provider = &config.providers[0];
        assert_eq!(
            (provider.kind.as_str(), provider.name.as_str()),
            ("pkcs11", "cloudhsm")
        );
        let settings = &provider.settings;
        assert_eq!(settings["module"].as_str(), Some(CLOUDHSM_MODULE));
        assert_eq!(settings["token_label"].as_str(), Some("hsm1"));
        assert!(settings.get("slot").is_none());
        let pin: SecretRef = settings["pin"].clone().try_into().unwrap();
        assert_eq!(pin, SecretRef::Env(CLOUDHSM_PIN_ENV.into()));
        // The literal password never appears as a value.
        assert!(!c.toml.contains("\"password\""), "{}", c.toml);
        let pin_step = note(&c, "sequencer.keyManager.config.password", NoteKind::Before);
        assert_eq!(
            pin_step.command.as_deref(),
            Some("export CUSTOS_CLOUDHSM_PIN='sequencer-user:<password>'")
        );
        let endpoint = note(
            &c,
            "sequencer.keyManager.config.clusterEndpoint",
            NoteKind::Before,
        );
        assert_eq!(
            endpoint.command.as_deref(),
            Some("sudo /opt/cloudhsm/bin/configure-pkcs11 -a <HSM IP address>")
        );
        note(&c, "sequencer.keyManager.config.region", NoteKind::Unmapped);
        let adopt = note(&c, "sequencer.keyManager.config.keyHandle", NoteKind::After);
        assert!(adopt.text.contains("placeholder"), "{}", adopt.text);
        assert_eq!(
            adopt.command.as_deref(),
            Some(
                "custos key create sequencer --algorithm ed25519 --provider cloudhsm --adopt id:<CKA_ID in hex>"
            )
        );
        // The default failover and emergency settings stay Custos's.
        assert_eq!(config.failover, custos_core::FailoverConfig::default());
    }

    #[test]
    fn the_seed_failover_example_maps_field_for_field() {
        let c = convert(SEED_FAILOVER).unwrap();
        let config = parse(&c.toml);
        let f = &config.failover;
        assert_eq!(f.primary_retry_interval_ms, 5000);
        assert_eq!(f.max_primary_retries, 3);
        assert_eq!(f.secondary_retry_interval_ms, 10000);
        assert_eq!(f.max_secondary_retries, 3);
        let defaults = custos_core::FailoverConfig::default();
        assert_eq!(f.provider_timeout_ms, defaults.provider_timeout_ms);
        assert_eq!(f.breaker_failures, defaults.breaker_failures);
        assert!(f.emergency.enabled);
        assert_eq!(f.emergency.max_transactions, 1000);
        assert_eq!(f.emergency.max_time_seconds, 3600);
        assert_eq!(f.emergency.allowed_operations, vec!["sign".to_owned()]);
        // No type: no provider is written, Custos's default soft provider applies.
        assert_eq!(config.providers, Config::default().providers);
        note(&c, "keyManager.type", NoteKind::Unmapped);
        note(&c, "keyManager.failover.enabled", NoteKind::Unmapped);
        let differs = note(&c, "keyManager.failover", NoteKind::Differs);
        // 4 attempts of up to 2000 ms and 3 pauses of 5000 ms.
        assert!(differs.text.contains("23000 ms"), "{}", differs.text);
    }

    #[test]
    fn the_seed_rotation_example_becomes_a_rotation_command() {
        let c = convert(SEED_ROTATION).unwrap();
        parse(&c.toml);
        let step = note(&c, "keyManager.keyRotation", NoteKind::After);
        assert_eq!(
            step.command.as_deref(),
            Some(
                "custos key rotation sequencer --interval-days 30 --overlap-days 2 --rotation-time \
                 00:00:00 --time-zone UTC --backup-dir /var/backups/custos --backup-recipient \
                 <age1... recipient>"
            )
        );
        let s3 = note(
            &c,
            "keyManager.keyRotation.backupLocation",
            NoteKind::Differs,
        );
        assert!(s3.text.contains("aws s3 sync"), "{}", s3.text);
    }

    #[test]
    fn a_combined_file_converts_and_never_leaks_the_password() {
        let c = convert(COMBINED).unwrap();
        let config = parse(&c.toml);
        assert_eq!(config.max_cache_size, 5000);
        assert_eq!(config.failover.primary_retry_interval_ms, 5000);
        assert_eq!(
            config.failover.emergency.allowed_operations,
            vec!["sign".to_owned()]
        );
        assert!(!everything(&c).contains("Zq7-unique-Pa55word!"));
        note(&c, "sequencer.port", NoteKind::Unmapped);
        note(
            &c,
            "sequencer.keyManager.failover.emergencyModeRestrictions.allowedOperations[1]",
            NoteKind::Unmapped,
        );
        let adopt = note(&c, "sequencer.keyManager.config.keyHandle", NoteKind::After);
        assert!(
            adopt.text.contains("getAttribute -o 262150"),
            "{}",
            adopt.text
        );
        let endpoint = note(
            &c,
            "sequencer.keyManager.config.clusterEndpoint",
            NoteKind::Before,
        );
        assert_eq!(
            endpoint.command.as_deref(),
            Some("sudo /opt/cloudhsm/bin/configure-pkcs11 -a 10.0.1.23")
        );
        // An HSM key is backed up by CloudHSM, not by Custos: no backup flags.
        let rotation = note(&c, "sequencer.keyManager.keyRotation", NoteKind::After);
        assert!(
            !rotation.command.as_deref().unwrap().contains("--backup"),
            "{rotation:?}"
        );
        note(
            &c,
            "sequencer.keyManager.keyRotation.backupEnabled",
            NoteKind::Unmapped,
        );
        // The steps are repeated as comments.
        assert!(
            c.toml.contains("# 5. custos key create sequencer"),
            "{}",
            c.toml
        );
    }

    #[test]
    fn key_handles_map_to_labels_and_ids() {
        let with = |handle: &str| {
            let json = format!(
                r#"{{"keyManager": {{"type": "aws-cloudhsm", "config": {{"username": "u", "keyHandle": {handle}}}}}}}"#
            );
            let c = convert(&json).unwrap();
            parse(&c.toml);
            note(&c, "keyManager.config.keyHandle", NoteKind::After)
                .command
                .clone()
                .unwrap()
        };
        let adopt = "custos key create sequencer --algorithm ed25519 --provider cloudhsm --adopt";
        assert_eq!(with(r#""seq key""#), format!("{adopt} 'label:seq key'"));
        assert_eq!(with(r#""label:seq-1""#), format!("{adopt} label:seq-1"));
        assert_eq!(with(r#""id:0xA1B2""#), format!("{adopt} id:a1b2"));
        assert_eq!(
            with(r#""0x00000000001c0686""#),
            format!("{adopt} id:<CKA_ID in hex>")
        );
        assert_eq!(with("262150"), format!("{adopt} id:<CKA_ID in hex>"));
        let json = r#"{"keyManager": {"type": "aws-cloudhsm", "config": {"username": "u", "keyHandle": "0x1c0686"}}}"#;
        let c = convert(json).unwrap();
        let text = &note(&c, "keyManager.config.keyHandle", NoteKind::After).text;
        assert!(
            text.contains("key list --filter key-reference=0x00000000001c0686 --verbose"),
            "{text}"
        );
    }

    #[test]
    fn yubihsm_becomes_a_yubihsm_provider_with_a_password_reference() {
        let json = r#"{"keyManager": {"type": "yubihsm", "config": {
            "connectorUrl": "http://10.0.0.5:12345", "authKeyId": "0x0002",
            "password": "yubi-Secret-77", "keyId": 100, "domains": [3]}}}"#;
        let c = convert(json).unwrap();
        let config = parse(&c.toml);
        let provider = &config.providers[0];
        assert_eq!(
            (provider.kind.as_str(), provider.name.as_str()),
            ("yubihsm", "yubihsm")
        );
        let settings = &provider.settings;
        assert_eq!(
            settings["connector"].as_str(),
            Some("http://10.0.0.5:12345")
        );
        assert_eq!(settings["auth_key_id"].as_integer(), Some(2));
        assert_eq!(settings["domain"].as_integer(), Some(3));
        let password: SecretRef = settings["password"].clone().try_into().unwrap();
        assert_eq!(password, SecretRef::Env(YUBIHSM_PASSWORD_ENV.into()));
        assert!(!everything(&c).contains("yubi-Secret-77"));
        let create = note(&c, "keyManager.config.keyId", NoteKind::After);
        assert!(create.text.contains("cannot adopt"), "{}", create.text);
        // The default connector when none is given.
        let c =
            convert(r#"{"keyManager": {"type": "yubihsm", "config": {"authKeyId": 1}}}"#).unwrap();
        let provider = &parse(&c.toml).providers[0];
        assert_eq!(provider.kind, "yubihsm");
        let connector = provider.settings.get("connector").and_then(|c| c.as_str());
        assert!(
            connector.is_none_or(|c| c == YUBIHSM_CONNECTOR),
            "the default connector: {connector:?}"
        );
    }

    #[test]
    fn a_local_key_manager_becomes_the_soft_provider() {
        let json =
            r#"{"keyManager": {"type": "local", "config": {"keypairPath": "/etc/seq/id.json"}}}"#;
        let c = convert(json).unwrap();
        let config = parse(&c.toml);
        assert_eq!(config.providers[0].name(), "soft");
        assert!(!everything(&c).contains("/etc/seq/id.json"));
        note(&c, "keyManager.config.keypairPath", NoteKind::After);
    }

    #[test]
    fn failover_units_are_converted() {
        let json = r#"{"keyManager": {"failover": {
            "primaryRetryIntervalSeconds": 2,
            "secondaryRetryIntervalMs": 250.0,
            "timeoutSeconds": 3,
            "emergencyModeRestrictions": {"maxTimeMinutes": 90}
        }}}"#;
        let c = convert(json).unwrap();
        let f = parse(&c.toml).failover;
        assert_eq!(f.primary_retry_interval_ms, 2000);
        assert_eq!(f.secondary_retry_interval_ms, 250);
        assert_eq!(f.provider_timeout_ms, 3000);
        assert_eq!(f.emergency.max_time_seconds, 5400);
        assert!(c.toml.contains(
            "primary_retry_interval_ms = 2000   # from primaryRetryIntervalSeconds, converted"
        ));
        // Milliseconds into a seconds field: rounded up, and said so.
        let c = convert(
            r#"{"keyManager": {"failover": {"emergencyModeRestrictions": {"maxTimeMs": 1500}}}}"#,
        )
        .unwrap();
        assert_eq!(parse(&c.toml).failover.emergency.max_time_seconds, 2);
        note(
            &c,
            "keyManager.failover.emergencyModeRestrictions.maxTimeMs",
            NoteKind::Differs,
        );
        // Unknown fields are noted, not dropped silently.
        let c =
            convert(r#"{"keyManager": {"failover": {"healthCheckIntervalMs": 1000}}}"#).unwrap();
        note(
            &c,
            "keyManager.failover.healthCheckIntervalMs",
            NoteKind::Unmapped,
        );
    }

    #[test]
    fn cache_batch_and_audit_settings_map() {
        let json = r#"{"keyManager": {"type": "local", "maxBatchSize": 64, "cacheEnabled": false,
            "maxCacheSize": 100, "auditLogFile": "/var/log/seq-audit.jsonl"}}"#;
        let c = convert(json).unwrap();
        let config = parse(&c.toml);
        assert_eq!(config.max_cache_size, 0);
        assert_eq!(config.max_batch_items, 64);
        assert_eq!(config.audit.sink.as_deref(), Some("stdout"));
        note(&c, "keyManager.auditLogFile", NoteKind::Differs);
        note(&c, "keyManager.cacheEnabled", NoteKind::Differs);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |json: &str| {
            let e = convert(json).unwrap_err();
            let f = match &e {
                ConvertError::Json { .. } => None,
                ConvertError::Missing { field, .. }
                | ConvertError::Invalid { field, .. }
                | ConvertError::UnknownType { field, .. } => Some(field.clone()),
            };
            (f, e.to_string())
        };
        let e = convert("{\"keyManager\": ").unwrap_err();
        assert!(matches!(e, ConvertError::Json { line: 1, .. }), "{e}");
        let (f, msg) = field(r#"{"keyManager": {"type": "thales-luna", "config": {}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.type"));
        assert!(
            msg.contains("thales-luna") && msg.contains("aws-cloudhsm"),
            "{msg}"
        );
        let (f, msg) = field(
            r#"{"keyManager": {"type": "aws-cloudhsm", "config": {"keyHandle": "k", "password": "p"}}}"#,
        );
        assert_eq!(f.as_deref(), Some("keyManager.config.username"));
        assert!(msg.contains("is missing"), "{msg}");
        let (f, _) =
            field(r#"{"keyManager": {"type": "aws-cloudhsm", "config": {"username": "u"}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.config.keyHandle"));
        let (f, _) = field(r#"{"keyManager": {"type": "aws-cloudhsm"}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.config"));
        let (f, _) = field(r#"{"keyManager": {"config": {"username": "u"}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.type"));
        let (f, _) = field(r#"{"keyManager": {"type": "yubihsm", "config": {}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.config.authKeyId"));
        let (f, msg) = field(r#"{"keyManager": {"failover": {"primaryRetryIntervalMs": -5}}}"#);
        assert_eq!(
            f.as_deref(),
            Some("keyManager.failover.primaryRetryIntervalMs")
        );
        assert!(msg.contains("-5"), "{msg}");
        let (f, _) = field(r#"{"keyManager": {"failover": {"maxPrimaryRetries": "3"}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.failover.maxPrimaryRetries"));
        let (f, _) = field(
            r#"{"keyManager": {"failover": {"primaryRetryIntervalMs": 1, "primaryRetryIntervalSeconds": 1}}}"#,
        );
        assert_eq!(
            f.as_deref(),
            Some("keyManager.failover.primaryRetryIntervalSeconds")
        );
        let (f, _) = field(r#"{"keyManager": {"keyRotation": {"enabled": true}}}"#);
        assert_eq!(f.as_deref(), Some("keyManager.keyRotation.intervalDays"));
        let (f, msg) = field(
            r#"{"keyManager": {"keyRotation": {"intervalDays": 30, "timeZone": "Mars/Olympus"}}}"#,
        );
        assert_eq!(f.as_deref(), Some("keyManager.keyRotation"));
        assert!(msg.contains("Mars/Olympus"), "{msg}");
        let (f, _) = field(r#"{"sequencer": {"port": 1}}"#);
        assert_eq!(f.as_deref(), Some("sequencer.keyManager"));
        let (f, _) = field("[1, 2]");
        assert_eq!(f.as_deref(), Some("(top level)"));
    }

    #[test]
    fn strings_are_escaped_for_toml_and_the_shell() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("UTC"), "UTC");
        let json = r#"{"keyManager": {"type": "yubihsm", "config": {"authKeyId": 1, "connector": "http://h:1/\"x"}}}"#;
        parse(&convert(json).unwrap().toml);
    }
}

//! Scopes (what a token may do) and operations (what a request asks to do), with the scopes each surface
//! adds declared by that surface rather than listed here.

use std::fmt;

use custos_types::ErrorCode;
use wildmatch::WildMatch;

use crate::CoreError;

/// A scope a surface adds to the built-in ones (the BitGo API adds `bitgo` and `bitgo:retrieve`).
#[derive(Debug, PartialEq, Eq)]
pub struct ScopeSpec {
    /// The scope as written on a token.
    pub name: &'static str,
    /// What it allows, for `--help` and the documentation.
    pub description: &'static str,
    /// Whether `admin` covers it. A scope that hands out private keys is not covered.
    pub implied_by_admin: bool,
}

/// The built-in scopes and what they allow.
pub const BUILTIN_SCOPES: &[(&str, &str)] = &[
    ("admin", "everything (except scopes that say admin does not imply them), including tokens, key deletion and backup settings"),
    ("keys:create", "create, adopt and import keys"),
    ("keys:read", "list and show keys, providers and rotation policies"),
    ("keys:rotate", "rotate keys, set rotation schedules, enable and disable keys, tags, descriptions and aliases"),
    ("audit:read", "query, export and verify the audit log"),
    ("sign:<pattern>", "sign with keys whose name matches the pattern (`*` and `?` wildcards; `sign` alone is `sign:*`)"),
    ("verify:<pattern>", "verify with keys whose name matches the pattern (`verify` alone is `verify:*`)"),
];

/// What a token may do.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Everything but the extension scopes admin does not imply.
    Admin,
    /// Create keys.
    KeysCreate,
    /// List and show keys.
    KeysRead,
    /// Rotate keys and manage their state and names.
    KeysRotate,
    /// Read and export the audit log.
    AuditRead,
    /// Sign with keys whose name matches the pattern (`*` and `?` wildcards).
    Sign(String),
    /// Verify with keys whose name matches the pattern.
    Verify(String),
    /// A scope a surface declared.
    Extension(&'static ScopeSpec),
}

/// An operation a caller is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// Create, adopt or import a key.
    CreateKey,
    /// List or show keys.
    ReadKeys,
    /// Rotate a key or set its rotation schedule.
    RotateKey(&'a str),
    /// Enable or disable a key, change its description, tags or aliases.
    ManageKey(&'a str),
    /// Schedule (or cancel) the deletion of a key: admin only.
    DeleteKey(&'a str),
    /// Change a key's custody settings (backup recipients and locations): admin only.
    Custody(&'a str),
    /// Sign with a key (or encrypt with a sealing key).
    Sign(&'a str),
    /// Verify with a key.
    Verify(&'a str),
    /// Issue, list and revoke tokens: admin only.
    ManageTokens,
    /// Read or export the audit log.
    ReadAudit,
    /// What a surface's own scope allows.
    Extension(&'static ScopeSpec),
}

impl Operation<'_> {
    /// The key the operation acts on, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Operation::RotateKey(k)
            | Operation::ManageKey(k)
            | Operation::DeleteKey(k)
            | Operation::Custody(k)
            | Operation::Sign(k)
            | Operation::Verify(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for Operation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::CreateKey => f.write_str("create keys"),
            Operation::ReadKeys => f.write_str("read keys"),
            Operation::RotateKey(k) => write!(f, "rotate key {k}"),
            Operation::ManageKey(k) => write!(f, "manage key {k}"),
            Operation::DeleteKey(k) => write!(f, "schedule the deletion of key {k} (admin only)"),
            Operation::Custody(k) => {
                write!(f, "change the backup settings of key {k} (admin only)")
            }
            Operation::Sign(k) => write!(f, "sign with key {k}"),
            Operation::Verify(k) => write!(f, "verify with key {k}"),
            Operation::ManageTokens => f.write_str("manage tokens (admin only)"),
            Operation::ReadAudit => f.write_str("read the audit log"),
            Operation::Extension(spec) => write!(f, "{} (scope {})", spec.description, spec.name),
        }
    }
}

impl Scope {
    /// Whether this scope allows `op`.
    pub(crate) fn allows(&self, op: &Operation<'_>) -> bool {
        let matches = |pattern: &str, key: &str| WildMatch::new(pattern).matches(key);
        match (self, op) {
            (Scope::Extension(mine), Operation::Extension(wanted)) => {
                std::ptr::eq(*mine, *wanted) || mine == wanted
            }
            (Scope::Admin, Operation::Extension(wanted)) => wanted.implied_by_admin,
            (Scope::Admin, _) => true,
            (Scope::KeysCreate, Operation::CreateKey) => true,
            (Scope::KeysRead, Operation::ReadKeys) => true,
            (Scope::KeysRotate, Operation::RotateKey(_) | Operation::ManageKey(_)) => true,
            (Scope::AuditRead, Operation::ReadAudit) => true,
            (Scope::Sign(p), Operation::Sign(key)) => matches(p, key),
            (Scope::Verify(p), Operation::Verify(key)) => matches(p, key),
            _ => false,
        }
    }

    /// Whether this is `admin`.
    pub fn is_admin(&self) -> bool {
        matches!(self, Scope::Admin)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::KeysCreate => f.write_str("keys:create"),
            Scope::KeysRead => f.write_str("keys:read"),
            Scope::KeysRotate => f.write_str("keys:rotate"),
            Scope::AuditRead => f.write_str("audit:read"),
            Scope::Sign(p) => write!(f, "sign:{p}"),
            Scope::Verify(p) => write!(f, "verify:{p}"),
            Scope::Extension(spec) => f.write_str(spec.name),
        }
    }
}

/// The scopes tokens may carry: the built-in ones and those the configured surfaces declared.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    extensions: Vec<&'static ScopeSpec>,
}

impl Scopes {
    /// The built-in scopes and `extensions`.
    pub fn new(extensions: impl IntoIterator<Item = &'static ScopeSpec>) -> Scopes {
        Scopes {
            extensions: extensions.into_iter().collect(),
        }
    }

    /// Every scope and what it allows, for help texts.
    pub fn describe(&self) -> Vec<(&'static str, &'static str)> {
        BUILTIN_SCOPES
            .iter()
            .copied()
            .chain(self.extensions.iter().map(|s| (s.name, s.description)))
            .collect()
    }

    /// Parses `admin`, `keys:create`, `keys:read`, `keys:rotate`, `audit:read`, `sign:<pattern>`,
    /// `verify:<pattern>` and the declared extension scopes; `sign` and `verify` alone mean every key.
    pub fn parse(&self, text: &str) -> Result<Scope, CoreError> {
        let bad = |why: &str| {
            CoreError::bad(
                ErrorCode::InvalidScope,
                format!(
                    "invalid scope {:?}: {why}; expected one of {}",
                    text.chars().take(80).collect::<String>(),
                    self.describe()
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        let pattern = |p: &str| -> Result<String, CoreError> {
            let ok = !p.is_empty()
                && p.len() <= 64
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c));
            if ok {
                Ok(p.to_owned())
            } else {
                Err(bad(
                    "a key pattern uses letters, digits, '-', '_', '.', '*' and '?'",
                ))
            }
        };
        if let Some(spec) = self.extensions.iter().find(|s| s.name == text) {
            return Ok(Scope::Extension(spec));
        }
        Ok(match text {
            "admin" => Scope::Admin,
            "keys:create" => Scope::KeysCreate,
            "keys:read" => Scope::KeysRead,
            "keys:rotate" => Scope::KeysRotate,
            "audit:read" => Scope::AuditRead,
            "sign" => Scope::Sign("*".into()),
            "verify" => Scope::Verify("*".into()),
            other => match other.split_once(':') {
                Some(("sign", p)) => Scope::Sign(pattern(p)?),
                Some(("verify", p)) => Scope::Verify(pattern(p)?),
                _ => return Err(bad("unknown scope")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static RETRIEVE: ScopeSpec = ScopeSpec {
        name: "vault:retrieve",
        description: "retrieve stored private keys",
        implied_by_admin: false,
    };
    static USE: ScopeSpec = ScopeSpec {
        name: "vault",
        description: "use the vault API",
        implied_by_admin: true,
    };

    #[test]
    fn scopes_parse_and_match() {
        let scopes = Scopes::new([&RETRIEVE, &USE]);
        let sign = scopes.parse("sign:seq-*").unwrap();
        assert!(sign.allows(&Operation::Sign("seq-1")));
        assert!(!sign.allows(&Operation::Sign("treasury")));
        assert!(!sign.allows(&Operation::Verify("seq-1")));
        assert!(!sign.allows(&Operation::CreateKey));
        let admin = scopes.parse("admin").unwrap();
        assert!(admin.allows(&Operation::ManageTokens));
        assert!(admin.allows(&Operation::Extension(&USE)));
        assert!(
            !admin.allows(&Operation::Extension(&RETRIEVE)),
            "admin does not imply retrieval"
        );
        assert!(scopes
            .parse("vault:retrieve")
            .unwrap()
            .allows(&Operation::Extension(&RETRIEVE)));
        let rotate = scopes.parse("keys:rotate").unwrap();
        assert!(rotate.allows(&Operation::RotateKey("k")));
        assert!(
            !rotate.allows(&Operation::Custody("k")),
            "backup settings are admin's"
        );
        assert!(!rotate.allows(&Operation::DeleteKey("k")));
        assert!(!scopes
            .parse("keys:create")
            .unwrap()
            .allows(&Operation::ManageTokens));
        for bad in ["root", "sign:", "sign:a/b", "keys:delete", "", "bitgo"] {
            assert_eq!(
                scopes.parse(bad).unwrap_err().code(),
                ErrorCode::InvalidScope,
                "{bad}"
            );
        }
        for text in [
            "admin",
            "keys:create",
            "keys:read",
            "keys:rotate",
            "sign:a*",
            "verify:?b",
            "vault",
        ] {
            assert_eq!(scopes.parse(text).unwrap().to_string(), text);
        }
        assert!(scopes
            .describe()
            .iter()
            .any(|(name, _)| *name == "vault:retrieve"));
    }
}

//! Access control: API tokens (stored as SHA-256 hashes, compared in constant time) and their scopes.
//!
//! A token reads `cst_<id>_<secret>`. The id finds the record; the SHA-256 of the whole token must match
//! the stored hash. Tokens are random 256-bit values, so a fast hash is enough (no password hashing).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use custos_store::{Store, TokenRecord};
use custos_types::{KeyName, Timestamp};
use rand_core::{OsRng, RngCore as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use wildmatch::WildMatch;

use crate::{AuditLog, CoreError, RequestContext};
use custos_audit::Outcome;

const TOKEN_PREFIX: &str = "cst_";

/// What a token may do.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Everything, including issuing tokens.
    Admin,
    /// Create keys.
    KeysCreate,
    /// List and show keys.
    KeysRead,
    /// Rotate keys.
    KeysRotate,
    /// Read and export the audit log.
    AuditRead,
    /// Sign with keys whose name matches the pattern (`*` and `?` wildcards).
    Sign(String),
    /// Verify with keys whose name matches the pattern.
    Verify(String),
    /// Use the BitGo Key Provider API: store and generate keys, sign, data keys (`bitgo`).
    Bitgo,
    /// Retrieve stored private keys through the BitGo API (`bitgo:retrieve`); never implied by `admin`.
    BitgoRetrieve,
}

impl Scope {
    /// Parses `admin`, `keys:create`, `keys:read`, `keys:rotate`, `sign:<pattern>`, `verify:<pattern>`;
    /// `sign` and `verify` alone mean every key.
    pub fn parse(text: &str) -> Result<Scope, CoreError> {
        let bad = |why: &str| {
            CoreError::bad(
                "invalid_scope",
                format!(
                    "invalid scope {:?}: {why}; expected admin, keys:create, keys:read, keys:rotate, \
                     audit:read, sign:<pattern>, verify:<pattern>, bitgo or bitgo:retrieve",
                    text.chars().take(80).collect::<String>()
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
        Ok(match text {
            "admin" => Scope::Admin,
            "keys:create" => Scope::KeysCreate,
            "keys:read" => Scope::KeysRead,
            "keys:rotate" => Scope::KeysRotate,
            "audit:read" => Scope::AuditRead,
            "bitgo" => Scope::Bitgo,
            "bitgo:retrieve" => Scope::BitgoRetrieve,
            "sign" => Scope::Sign("*".into()),
            "verify" => Scope::Verify("*".into()),
            other => match other.split_once(':') {
                Some(("sign", p)) => Scope::Sign(pattern(p)?),
                Some(("verify", p)) => Scope::Verify(pattern(p)?),
                _ => return Err(bad("unknown scope")),
            },
        })
    }

    fn allows(&self, op: &Operation<'_>) -> bool {
        let matches = |pattern: &str, key: &KeyName| WildMatch::new(pattern).matches(key.as_str());
        match (self, op) {
            // Handing out a private key needs its own scope, which even admin does not imply.
            (Scope::BitgoRetrieve, Operation::BitgoRetrieve) => true,
            (_, Operation::BitgoRetrieve) => false,
            (Scope::Admin, _) => true,
            (Scope::Bitgo, Operation::Bitgo) => true,
            (Scope::KeysCreate, Operation::CreateKey) => true,
            (Scope::KeysRead, Operation::ReadKeys) => true,
            (Scope::KeysRotate, Operation::RotateKey(_)) => true,
            (Scope::AuditRead, Operation::ReadAudit) => true,
            (Scope::Sign(p), Operation::Sign(key)) => matches(p, key),
            (Scope::Verify(p), Operation::Verify(key)) => matches(p, key),
            _ => false,
        }
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
            Scope::Bitgo => f.write_str("bitgo"),
            Scope::BitgoRetrieve => f.write_str("bitgo:retrieve"),
        }
    }
}

/// An operation a token is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// Create a key.
    CreateKey,
    /// List or show keys.
    ReadKeys,
    /// Rotate a key.
    RotateKey(&'a KeyName),
    /// Sign with a key.
    Sign(&'a KeyName),
    /// Verify with a key.
    Verify(&'a KeyName),
    /// Issue, list and revoke tokens (admin only).
    ManageTokens,
    /// Read or export the audit log.
    ReadAudit,
    /// Store or generate keys, sign, or make data keys through the BitGo API.
    Bitgo,
    /// Retrieve a stored private key through the BitGo API.
    BitgoRetrieve,
}

impl fmt::Display for Operation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::CreateKey => f.write_str("create keys"),
            Operation::ReadKeys => f.write_str("read keys"),
            Operation::RotateKey(k) => write!(f, "rotate key {k}"),
            Operation::Sign(k) => write!(f, "sign with key {k}"),
            Operation::Verify(k) => write!(f, "verify with key {k}"),
            Operation::ManageTokens => f.write_str("manage tokens"),
            Operation::ReadAudit => f.write_str("read the audit log"),
            Operation::Bitgo => f.write_str("use the BitGo key provider API"),
            Operation::BitgoRetrieve => f.write_str("retrieve private keys through the BitGo API"),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's public id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    scopes: Arc<[Scope]>,
}

impl Principal {
    /// Allows `op` or returns [`CoreError::Forbidden`].
    pub fn authorize(&self, op: Operation<'_>) -> Result<(), CoreError> {
        if self.scopes.iter().any(|s| s.allows(&op)) {
            Ok(())
        } else {
            Err(CoreError::Forbidden(op.to_string()))
        }
    }
}

/// A token just issued. The secret is shown once and never stored.
#[derive(Debug)]
pub struct IssuedToken {
    /// The full token to give to the client (`cst_<id>_<secret>`).
    pub token: SecretString,
    /// The stored record (hash only).
    pub record: TokenRecord,
}

struct Entry {
    record: TokenRecord,
    scopes: Arc<[Scope]>,
    /// Microseconds since the epoch of the last successful use (0: never), and of the last flush.
    last_used_us: AtomicI64,
    flushed_us: AtomicI64,
}

/// Token issuing and checking, backed by the store and cached in memory.
pub struct Access {
    store: Arc<dyn Store>,
    tokens: RwLock<HashMap<String, Arc<Entry>>>,
    audit: Arc<AuditLog>,
    /// AWS access key id → (token id, secret access key), unsealed at start.
    aws: RwLock<HashMap<String, (String, SecretString)>>,
}

/// An AWS-style credential for the KMS-compatible API: an access key id and a secret access key for
/// Signature Version 4, bound to a token whose scopes and life it shares.
pub struct AwsCredential {
    /// The access key id (`CSTS` and the token id in capitals).
    pub access_key_id: String,
    /// The secret access key (shown once).
    pub secret_access_key: SecretString,
    /// The token it is bound to (also usable as a bearer token).
    pub token: IssuedToken,
}

impl fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredential")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where an AWS credential's sealed secret is kept.
const AWS_PREFIX: &str = "aws_credential:";

/// The stored form of an AWS credential: the sealed secret, never the secret.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAwsCredential {
    token_id: String,
    /// Hex of what the provider's `seal` returned.
    sealed: String,
}

fn aws_context(access_key_id: &str) -> Vec<u8> {
    format!("custos-aws-credential-v1\0{access_key_id}").into_bytes()
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn entry(record: TokenRecord) -> Result<Entry, CoreError> {
    let scopes = record
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CoreError::Internal(format!("stored token {}: {e}", record.id)))?;
    let used = record.last_used_at.map_or(0, |t| t.as_microsecond());
    Ok(Entry {
        record,
        scopes: scopes.into(),
        last_used_us: AtomicI64::new(used),
        flushed_us: AtomicI64::new(used),
    })
}

impl Access {
    /// Loads the token records from the store.
    pub async fn load(store: Arc<dyn Store>, audit: Arc<AuditLog>) -> Result<Access, CoreError> {
        let mut tokens = HashMap::new();
        for record in store.list_tokens().await? {
            tokens.insert(record.id.clone(), Arc::new(entry(record)?));
        }
        Ok(Access {
            store,
            tokens: RwLock::new(tokens),
            audit,
            aws: RwLock::new(HashMap::new()),
        })
    }

    /// Unseals every stored AWS credential with `sealer` (the provider that sealed them); run at start
    /// when the KMS-compatible API is on. Returns how many there are.
    pub async fn load_aws(
        &self,
        sealer: &dyn custos_provider::KeyProvider,
    ) -> Result<usize, CoreError> {
        let mut loaded = HashMap::new();
        for (name, value) in self.store.list_settings(AWS_PREFIX).await? {
            let access_key_id = name.trim_start_matches(AWS_PREFIX).to_owned();
            let stored: StoredAwsCredential = serde_json::from_slice(&value)
                .map_err(|e| CoreError::Internal(format!("AWS credential {access_key_id}: {e}")))?;
            let sealed = hex::decode(&stored.sealed)
                .map_err(|e| CoreError::Internal(format!("AWS credential {access_key_id}: {e}")))?;
            let secret = sealer.unseal(&sealed, &aws_context(&access_key_id)).await?;
            let secret = String::from_utf8(secret.to_vec())
                .map_err(|_| CoreError::Internal("an AWS secret is not text".into()))?;
            loaded.insert(access_key_id, (stored.token_id, SecretString::from(secret)));
        }
        let count = loaded.len();
        *self
            .aws
            .write()
            .map_err(|_| CoreError::Internal("credential map lock poisoned".into()))? = loaded;
        Ok(count)
    }

    /// Issues a token with `scopes` together with an AWS access key for it; the secret access key is
    /// sealed by `sealer` in the store (Signature Version 4 needs it in the clear to check a request, so
    /// unlike a token it cannot be kept as a hash). Audited like a token.
    pub async fn issue_aws(
        &self,
        ctx: &RequestContext,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<Timestamp>,
        sealer: &dyn custos_provider::KeyProvider,
    ) -> Result<AwsCredential, CoreError> {
        let issued = self.issue(ctx, name, scopes, expires_at).await?;
        let access_key_id = format!("CSTS{}", issued.record.id.to_uppercase());
        let mut secret = [0u8; 30];
        OsRng.fill_bytes(&mut secret);
        let secret = zeroize::Zeroizing::new(base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            secret,
        ));
        let sealed = sealer
            .seal(secret.as_bytes(), &aws_context(&access_key_id))
            .await?;
        let stored = serde_json::to_vec(&StoredAwsCredential {
            token_id: issued.record.id.clone(),
            sealed: hex::encode(sealed),
        })
        .map_err(|e| CoreError::Internal(e.to_string()))?;
        self.store
            .put_setting(&format!("{AWS_PREFIX}{access_key_id}"), &stored)
            .await?;
        let secret = SecretString::from(secret.to_string());
        self.aws
            .write()
            .map_err(|_| CoreError::Internal("credential map lock poisoned".into()))?
            .insert(
                access_key_id.clone(),
                (issued.record.id.clone(), secret.clone()),
            );
        Ok(AwsCredential {
            access_key_id,
            secret_access_key: secret,
            token: issued,
        })
    }

    /// For Signature Version 4: the principal and secret behind an access key id, if its token is valid.
    pub fn aws_secret(&self, access_key_id: &str) -> Result<(Principal, SecretString), CoreError> {
        let (token_id, secret) = self
            .aws
            .read()
            .map_err(|_| CoreError::Internal("credential map lock poisoned".into()))?
            .get(access_key_id)
            .cloned()
            .ok_or(CoreError::Unauthenticated)?;
        let entry = self
            .tokens
            .read()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?
            .get(&token_id)
            .cloned()
            .ok_or(CoreError::Unauthenticated)?;
        Ok((Self::principal(&entry)?, secret))
    }

    /// The principal of a token entry, unless it is revoked or expired; records the use.
    fn principal(entry: &Entry) -> Result<Principal, CoreError> {
        let record = &entry.record;
        let now = Timestamp::now();
        if record.revoked_at.is_some() || record.expires_at.is_some_and(|t| t <= now) {
            return Err(CoreError::Unauthenticated);
        }
        entry
            .last_used_us
            .store(now.as_microsecond(), Ordering::Relaxed);
        Ok(Principal {
            token_id: record.id.clone(),
            name: record.name.clone(),
            scopes: Arc::clone(&entry.scopes),
        })
    }

    /// Whether any token exists (a data directory with none has not been initialised).
    pub fn has_tokens(&self) -> bool {
        self.tokens.read().map(|t| !t.is_empty()).unwrap_or(false)
    }

    /// Checks a bearer token: known id, matching hash (constant time), not expired, not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Principal, CoreError> {
        let id = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(CoreError::Unauthenticated)?;
        let entry = self
            .tokens
            .read()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?
            .get(id)
            .cloned();
        let presented = hash(token);
        let Some(entry) = entry else {
            // Spend the same comparison on a miss so timing does not reveal which ids exist.
            let _ = presented.ct_eq(&[0u8; 32]);
            return Err(CoreError::Unauthenticated);
        };
        if !bool::from(presented.ct_eq(&entry.record.secret_hash)) {
            return Err(CoreError::Unauthenticated);
        }
        Self::principal(&entry)
    }

    /// Issues a token with `scopes`, valid until `expires_at` (or forever). Audited.
    pub async fn issue(
        &self,
        ctx: &RequestContext,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<Timestamp>,
    ) -> Result<IssuedToken, CoreError> {
        let result = self.issue_unaudited(name, scopes, expires_at).await;
        let mut entry = ctx.entry("token_create");
        match &result {
            Ok(issued) => {
                entry.subject = Some(format!(
                    "token {} ({})",
                    issued.record.id, issued.record.name
                ))
            }
            Err(err) => {
                entry.outcome = Outcome::Error;
                entry.error_code = Some(err.code().to_owned());
            }
        }
        self.audit.append(entry).await?;
        result
    }

    /// Revokes a token; it stops working at once. Audited.
    pub async fn revoke(&self, ctx: &RequestContext, id: &str) -> Result<TokenRecord, CoreError> {
        let result = self.revoke_unaudited(id).await;
        let mut entry = ctx.entry("token_revoke");
        entry.subject = Some(format!("token {}", id.chars().take(64).collect::<String>()));
        if let Err(err) = &result {
            entry.outcome = Outcome::Error;
            entry.error_code = Some(err.code().to_owned());
        }
        self.audit.append(entry).await?;
        result
    }

    async fn revoke_unaudited(&self, id: &str) -> Result<TokenRecord, CoreError> {
        let current = self
            .tokens
            .read()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::bad("token_not_found", format!("no token with id {id}")))?;
        let now = Timestamp::now();
        self.store.revoke_token(id, now).await?;
        let mut record = current.record.clone();
        record.revoked_at.get_or_insert(now);
        let replacement = Arc::new(entry(record.clone())?);
        replacement.last_used_us.store(
            current.last_used_us.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.tokens
            .write()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?
            .insert(id.to_owned(), replacement);
        Ok(record)
    }

    /// Every token record (hashes only), with the last-used time as of now.
    pub fn list(&self) -> Result<Vec<TokenRecord>, CoreError> {
        let tokens = self
            .tokens
            .read()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?;
        let mut out: Vec<TokenRecord> = tokens
            .values()
            .map(|e| {
                let mut record = e.record.clone();
                let used = e.last_used_us.load(Ordering::Relaxed);
                record.last_used_at = (used != 0)
                    .then(|| Timestamp::from_microsecond(used).ok())
                    .flatten();
                record
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Writes last-used times that changed since the last flush to the store.
    pub async fn flush_last_used(&self) -> Result<(), CoreError> {
        let changed: Vec<(String, Timestamp)> = {
            let tokens = self
                .tokens
                .read()
                .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?;
            tokens
                .values()
                .filter_map(|e| {
                    let used = e.last_used_us.load(Ordering::Relaxed);
                    let flushed = e.flushed_us.swap(used, Ordering::Relaxed);
                    (used != flushed).then(|| {
                        Timestamp::from_microsecond(used)
                            .ok()
                            .map(|t| (e.record.id.clone(), t))
                    })?
                })
                .collect()
        };
        if !changed.is_empty() {
            self.store.touch_tokens(&changed).await?;
        }
        Ok(())
    }

    async fn issue_unaudited(
        &self,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<Timestamp>,
    ) -> Result<IssuedToken, CoreError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(CoreError::bad(
                "invalid_name",
                "a token name must be 1-128 printable characters",
            ));
        }
        if scopes.is_empty() {
            return Err(CoreError::bad(
                "invalid_scope",
                "a token needs at least one scope",
            ));
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        OsRng.fill_bytes(&mut secret);
        let id = hex::encode(id);
        let token = zeroize::Zeroizing::new(format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret)));
        let record = TokenRecord {
            id: id.clone(),
            name: name.to_owned(),
            secret_hash: hash(&token),
            scopes: scopes.iter().map(Scope::to_string).collect(),
            created_at: Timestamp::now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.store.create_token(&record).await?;
        self.tokens
            .write()
            .map_err(|_| CoreError::Internal("token map lock poisoned".into()))?
            .insert(id, Arc::new(entry(record.clone())?));
        Ok(IssuedToken {
            token: SecretString::from(token.as_str().to_owned()),
            record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_store::SqliteStore;
    use secrecy::ExposeSecret as _;

    fn key(name: &str) -> KeyName {
        KeyName::new(name).unwrap()
    }

    #[test]
    fn scopes_parse_and_match() {
        let sign = Scope::parse("sign:seq-*").unwrap();
        assert!(sign.allows(&Operation::Sign(&key("seq-1"))));
        assert!(!sign.allows(&Operation::Sign(&key("treasury"))));
        assert!(!sign.allows(&Operation::Verify(&key("seq-1"))));
        assert!(!sign.allows(&Operation::CreateKey));
        assert!(Scope::parse("admin")
            .unwrap()
            .allows(&Operation::ManageTokens));
        assert!(!Scope::parse("keys:create")
            .unwrap()
            .allows(&Operation::ManageTokens));
        for bad in ["root", "sign:", "sign:a/b", "keys:delete", ""] {
            assert_eq!(
                Scope::parse(bad).unwrap_err().code(),
                "invalid_scope",
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
        ] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::create(dir.path()).unwrap());
        let soft: Arc<dyn custos_provider::KeyProvider> = Arc::new(
            custos_provider_soft::SoftProvider::open(
                custos_types::ProviderName::new("soft").unwrap(),
                Arc::clone(&store),
                &SecretString::from("pw".to_owned()),
                custos_provider_soft::KdfParams::default(),
            )
            .await
            .unwrap(),
        );
        let audit = AuditLog::open(
            Arc::clone(&store),
            soft,
            crate::AuditConfig::default(),
            Arc::new(crate::Metrics::new()),
        )
        .await
        .unwrap();
        let access = Access::load(Arc::clone(&store), Arc::clone(&audit))
            .await
            .unwrap();
        let ctx = RequestContext::system("test");
        assert!(!access.has_tokens());
        let issued = access
            .issue(&ctx, "ci", &[Scope::parse("sign:seq-*").unwrap()], None)
            .await
            .unwrap();
        let token = issued.token.expose_secret().to_owned();
        let principal = access.authenticate(&token).unwrap();
        assert_eq!(principal.name, "ci");
        principal.authorize(Operation::Sign(&key("seq-9"))).unwrap();
        let denied = principal.authorize(Operation::CreateKey).unwrap_err();
        assert_eq!(denied.code(), "forbidden");
        // The store holds a hash, never the token.
        let stored = store.list_tokens().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(
            stored[0].secret_hash.to_vec(),
            token.as_bytes()[..32].to_vec()
        );
        assert!(!format!("{stored:?}").contains(&token[20..]));
        // A changed secret, an unknown id, garbage: all unauthenticated.
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('0') { '1' } else { '0' });
        for bad in [
            tampered.as_str(),
            "cst_0000000000000000_00",
            "",
            "Bearer x",
            "cst_",
        ] {
            assert!(
                matches!(access.authenticate(bad), Err(CoreError::Unauthenticated)),
                "{bad}"
            );
        }
        // Expired tokens stop working; a reload sees the same tokens.
        let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
        let expired = access
            .issue(&ctx, "old", &[Scope::Admin], Some(past))
            .await
            .unwrap();
        assert!(access.authenticate(expired.token.expose_secret()).is_err());
        // Last use is kept in memory and flushed; revocation takes effect at once, and survives a reload.
        access.flush_last_used().await.unwrap();
        let listed = access.list().unwrap();
        assert!(listed
            .iter()
            .find(|t| t.name == "ci")
            .unwrap()
            .last_used_at
            .is_some());
        let reloaded = Access::load(Arc::clone(&store), Arc::clone(&audit))
            .await
            .unwrap();
        assert!(reloaded.authenticate(&token).is_ok());
        assert!(store
            .list_tokens()
            .await
            .unwrap()
            .iter()
            .find(|t| t.name == "ci")
            .unwrap()
            .last_used_at
            .is_some());
        access.revoke(&ctx, &issued.record.id).await.unwrap();
        assert!(matches!(
            access.authenticate(&token),
            Err(CoreError::Unauthenticated)
        ));
        assert_eq!(
            access.revoke(&ctx, "nope").await.unwrap_err().code(),
            "token_not_found"
        );
        let reloaded = Access::load(store, audit).await.unwrap();
        assert!(reloaded.authenticate(&token).is_err());
    }
}

//! API tokens: issued with scopes, stored as SHA-256 hashes, compared in constant time, revoked at once.
//!
//! A token reads `cst_<id>_<secret>`. The id finds the record; the SHA-256 of the whole token must match
//! the stored hash. Tokens are random 256-bit values, so a fast hash is enough (no password hashing).
//! The last live admin token cannot be revoked; a person with the host and the master password can issue
//! a new one offline ([`Access::recover`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use custos_types::{ErrorCode, Timestamp, TokenRecord};
use rand_core::{OsRng, RngCore as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Operation, Scope, Scopes};
use crate::{audited, AuditLog, Clock, CoreError, RequestContext};
use custos_store::Store;

const TOKEN_PREFIX: &str = "cst_";

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

    /// The token's scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
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
    scopes: Scopes,
    clock: Arc<dyn Clock>,
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

fn poisoned() -> CoreError {
    CoreError::Internal("token map lock poisoned".into())
}

impl Access {
    /// Loads the token records from the store. `scopes` are the scopes tokens may carry (the built-in
    /// ones and those of the configured surfaces).
    pub async fn load(
        store: Arc<dyn Store>,
        audit: Arc<AuditLog>,
        scopes: Scopes,
        clock: Arc<dyn Clock>,
    ) -> Result<Access, CoreError> {
        let access = Access {
            store: Arc::clone(&store),
            tokens: RwLock::new(HashMap::new()),
            audit,
            scopes,
            clock,
            aws: RwLock::new(HashMap::new()),
        };
        let mut tokens = HashMap::new();
        for record in store.list_tokens().await? {
            tokens.insert(record.id.clone(), Arc::new(access.entry(record)));
        }
        *access.tokens.write().map_err(|_| poisoned())? = tokens;
        Ok(access)
    }

    /// The scopes tokens may carry.
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }

    /// A cached entry for a record. A stored scope this server does not know (a surface that is turned
    /// off) grants nothing here; the record keeps it.
    fn entry(&self, record: TokenRecord) -> Entry {
        let scopes: Vec<Scope> = record
            .scopes
            .iter()
            .filter_map(|text| match self.scopes.parse(text) {
                Ok(scope) => Some(scope),
                Err(_) => {
                    tracing::warn!(token = %record.id, scope = %text,
                        "a token's scope is not served by this configuration; it grants nothing");
                    None
                }
            })
            .collect();
        let used = record.last_used_at.map_or(0, |t| t.as_microsecond());
        Entry {
            record,
            scopes: scopes.into(),
            last_used_us: AtomicI64::new(used),
            flushed_us: AtomicI64::new(used),
        }
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
        *self.aws.write().map_err(|_| poisoned())? = loaded;
        Ok(count)
    }

    /// Issues a token with `scopes` together with an AWS access key for it; the secret access key is
    /// sealed by `sealer` in the store (Signature Version 4 needs it in the clear to check a request, so
    /// unlike a token it cannot be kept as a hash). Admin only; audited like a token.
    pub async fn issue_aws(
        &self,
        ctx: &RequestContext,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<Timestamp>,
        sealer: &dyn custos_provider::KeyProvider,
    ) -> Result<AwsCredential, CoreError> {
        let work = async {
            let issued = self.issue_unaudited(name, scopes, expires_at).await?;
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
            self.aws.write().map_err(|_| poisoned())?.insert(
                access_key_id.clone(),
                (issued.record.id.clone(), secret.clone()),
            );
            Ok(AwsCredential {
                access_key_id,
                secret_access_key: secret,
                token: issued,
            })
        };
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageTokens,
            ctx.entry("token_create"),
            work,
            |c, e| {
                e.subject = Some(format!(
                    "token {} ({}) with AWS access key {}",
                    c.token.record.id, c.token.record.name, c.access_key_id
                ))
            },
        )
        .await
    }

    /// For Signature Version 4: the principal and secret behind an access key id, if its token is valid.
    pub fn aws_secret(&self, access_key_id: &str) -> Result<(Principal, SecretString), CoreError> {
        let (token_id, secret) = self
            .aws
            .read()
            .map_err(|_| poisoned())?
            .get(access_key_id)
            .cloned()
            .ok_or(CoreError::Unauthenticated)?;
        let entry = self
            .tokens
            .read()
            .map_err(|_| poisoned())?
            .get(&token_id)
            .cloned()
            .ok_or(CoreError::Unauthenticated)?;
        Ok((self.principal(&entry)?, secret))
    }

    /// The principal of a token entry, unless it is revoked or expired; records the use.
    fn principal(&self, entry: &Entry) -> Result<Principal, CoreError> {
        let now = self.clock.now();
        if !entry.record.is_live(now) {
            return Err(CoreError::Unauthenticated);
        }
        entry
            .last_used_us
            .store(now.as_microsecond(), Ordering::Relaxed);
        Ok(Principal {
            token_id: entry.record.id.clone(),
            name: entry.record.name.clone(),
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
        let entry = self.tokens.read().map_err(|_| poisoned())?.get(id).cloned();
        let presented = hash(token);
        let Some(entry) = entry else {
            // Spend the same comparison on a miss so timing does not reveal which ids exist.
            let _ = presented.ct_eq(&[0u8; 32]);
            return Err(CoreError::Unauthenticated);
        };
        if !bool::from(presented.ct_eq(&entry.record.secret_hash)) {
            return Err(CoreError::Unauthenticated);
        }
        self.principal(&entry)
    }

    /// Issues a token with `scopes`, valid until `expires_at` (or forever). Admin only; audited.
    pub async fn issue(
        &self,
        ctx: &RequestContext,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<Timestamp>,
    ) -> Result<IssuedToken, CoreError> {
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageTokens,
            ctx.entry("token_create"),
            self.issue_unaudited(name, scopes, expires_at),
            |issued, e| {
                e.subject = Some(format!(
                    "token {} ({})",
                    issued.record.id, issued.record.name
                ))
            },
        )
        .await
    }

    /// Offline recovery when no admin token is left: issues a new admin token `name`, recorded as
    /// `token_recover`. Only Custos itself (a system context, which needs the data directory and the
    /// master password to exist) can do this; no request can.
    pub async fn recover(
        &self,
        ctx: &RequestContext,
        name: &str,
    ) -> Result<IssuedToken, CoreError> {
        if !ctx.system {
            return Err(CoreError::Forbidden(
                "recover admin access (offline only: `custos token recover`)".into(),
            ));
        }
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageTokens,
            ctx.entry("token_recover"),
            self.issue_unaudited(name, &[Scope::Admin], None),
            |issued, e| {
                e.subject = Some(format!(
                    "admin token {} ({}) issued offline",
                    issued.record.id, issued.record.name
                ))
            },
        )
        .await
    }

    /// Revokes a token; it stops working at once. The last live admin token is not revoked. Admin only;
    /// audited.
    pub async fn revoke(&self, ctx: &RequestContext, id: &str) -> Result<TokenRecord, CoreError> {
        let mut entry = ctx.entry("token_revoke");
        entry.subject = Some(format!("token {}", id.chars().take(64).collect::<String>()));
        audited::run(
            &self.audit,
            ctx,
            Operation::ManageTokens,
            entry,
            self.revoke_unaudited(id),
            |_, _| {},
        )
        .await
    }

    async fn revoke_unaudited(&self, id: &str) -> Result<TokenRecord, CoreError> {
        let now = self.clock.now();
        let current = {
            let tokens = self.tokens.read().map_err(|_| poisoned())?;
            let current = tokens.get(id).cloned().ok_or_else(|| {
                CoreError::bad(
                    ErrorCode::TokenNotFound,
                    format!(
                        "no token with id {}; `custos token list` shows them",
                        id.chars().take(64).collect::<String>()
                    ),
                )
            })?;
            let is_live_admin =
                |e: &Entry| e.record.is_live(now) && e.scopes.iter().any(Scope::is_admin);
            if is_live_admin(&current)
                && !tokens
                    .values()
                    .any(|other| other.record.id != id && is_live_admin(other))
            {
                return Err(CoreError::bad(
                    ErrorCode::LastAdminToken,
                    "this is the last admin token that works: issue another admin token first \
                     (or, with the host and the master password, `custos token recover`)",
                ));
            }
            current
        };
        self.store.revoke_token(id, now).await?;
        let mut record = current.record.clone();
        record.revoked_at.get_or_insert(now);
        let replacement = Arc::new(self.entry(record.clone()));
        replacement.last_used_us.store(
            current.last_used_us.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.tokens
            .write()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), replacement);
        Ok(record)
    }

    /// Every token record (hashes only), with the last-used time as of now. Admin only.
    pub async fn list(&self, ctx: &RequestContext) -> Result<Vec<TokenRecord>, CoreError> {
        audited::authorize(&self.audit, ctx, Operation::ManageTokens, || {
            ctx.entry("token_list")
        })
        .await?;
        let tokens = self.tokens.read().map_err(|_| poisoned())?;
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
            let tokens = self.tokens.read().map_err(|_| poisoned())?;
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
                ErrorCode::InvalidName,
                "a token name must be 1-128 printable characters",
            ));
        }
        if scopes.is_empty() {
            return Err(CoreError::bad(
                ErrorCode::InvalidScope,
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
            created_at: self.clock.now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.store.create_token(&record).await?;
        self.tokens
            .write()
            .map_err(|_| poisoned())?
            .insert(id, Arc::new(self.entry(record.clone())));
        Ok(IssuedToken {
            token: SecretString::from(token.as_str().to_owned()),
            record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use custos_store::SqliteStore;
    use secrecy::ExposeSecret as _;

    struct Fixture {
        access: Access,
        store: Arc<dyn Store>,
        audit: Arc<AuditLog>,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
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
        let clock = Arc::new(ManualClock::new("2026-12-01T00:00:00Z".parse().unwrap()));
        let access = Access::load(
            Arc::clone(&store),
            Arc::clone(&audit),
            Scopes::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        Fixture {
            access,
            store,
            audit,
            clock,
            _dir: dir,
        }
    }

    fn system() -> RequestContext {
        RequestContext::system("test")
    }

    fn scope(text: &str) -> Scope {
        Scopes::default().parse(text).unwrap()
    }

    #[tokio::test]
    async fn tokens_are_stored_as_hashes_only() {
        let f = fixture().await;
        let issued = f
            .access
            .issue(&system(), "ci", &[scope("sign:seq-*")], None)
            .await
            .unwrap();
        let token = issued.token.expose_secret().to_owned();
        let stored = f.store.list_tokens().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].secret_hash, hash(&token));
        assert!(!format!("{stored:?}").contains(&token[20..]));
    }

    #[tokio::test]
    async fn a_token_authenticates_and_is_held_to_its_scopes() {
        let f = fixture().await;
        let issued = f
            .access
            .issue(&system(), "ci", &[scope("sign:seq-*")], None)
            .await
            .unwrap();
        let principal = f.access.authenticate(issued.token.expose_secret()).unwrap();
        assert_eq!(principal.name, "ci");
        principal.authorize(Operation::Sign("seq-9")).unwrap();
        assert_eq!(
            principal
                .authorize(Operation::CreateKey)
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
    }

    #[tokio::test]
    async fn changed_unknown_or_garbage_tokens_are_unauthenticated() {
        let f = fixture().await;
        let issued = f
            .access
            .issue(&system(), "ci", &[Scope::Admin], None)
            .await
            .unwrap();
        let token = issued.token.expose_secret().to_owned();
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
                matches!(f.access.authenticate(bad), Err(CoreError::Unauthenticated)),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_stops_working_when_it_expires_by_the_clock() {
        let f = fixture().await;
        let until = f.clock.now() + jiff::SignedDuration::from_secs(60);
        let issued = f
            .access
            .issue(&system(), "short", &[Scope::Admin], Some(until))
            .await
            .unwrap();
        assert!(f.access.authenticate(issued.token.expose_secret()).is_ok());
        f.clock.advance(jiff::SignedDuration::from_secs(61));
        assert!(f.access.authenticate(issued.token.expose_secret()).is_err());
    }

    #[tokio::test]
    async fn last_use_is_flushed_and_revocation_is_immediate_and_durable() {
        let f = fixture().await;
        f.access
            .issue(&system(), "root", &[Scope::Admin], None)
            .await
            .unwrap();
        let issued = f
            .access
            .issue(&system(), "ci", &[Scope::KeysRead], None)
            .await
            .unwrap();
        let token = issued.token.expose_secret().to_owned();
        f.access.authenticate(&token).unwrap();
        f.access.flush_last_used().await.unwrap();
        let stored = f.store.list_tokens().await.unwrap();
        assert!(stored
            .iter()
            .find(|t| t.name == "ci")
            .unwrap()
            .last_used_at
            .is_some());
        f.access.revoke(&system(), &issued.record.id).await.unwrap();
        assert!(matches!(
            f.access.authenticate(&token),
            Err(CoreError::Unauthenticated)
        ));
        assert_eq!(
            f.access.revoke(&system(), "nope").await.unwrap_err().code(),
            ErrorCode::TokenNotFound
        );
        let reloaded = Access::load(
            Arc::clone(&f.store),
            Arc::clone(&f.audit),
            Scopes::default(),
            f.clock.clone(),
        )
        .await
        .unwrap();
        assert!(reloaded.authenticate(&token).is_err());
    }

    #[tokio::test]
    async fn the_last_admin_token_cannot_be_revoked_and_recovery_issues_a_new_one() {
        let f = fixture().await;
        let root = f
            .access
            .issue(&system(), "root", &[Scope::Admin], None)
            .await
            .unwrap();
        let second = f
            .access
            .issue(&system(), "ops", &[Scope::Admin], None)
            .await
            .unwrap();
        f.access.revoke(&system(), &second.record.id).await.unwrap();
        assert_eq!(
            f.access
                .revoke(&system(), &root.record.id)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::LastAdminToken
        );
        assert!(f.access.authenticate(root.token.expose_secret()).is_ok());
        // A request (not a system context) cannot recover.
        let caller = RequestContext {
            principal: Some(f.access.authenticate(root.token.expose_secret()).unwrap()),
            ..RequestContext::default()
        };
        assert!(f.access.recover(&caller, "again").await.is_err());
        let recovered = f.access.recover(&system(), "recovered").await.unwrap();
        assert!(f
            .access
            .authenticate(recovered.token.expose_secret())
            .unwrap()
            .scopes()
            .iter()
            .any(Scope::is_admin));
        f.access.revoke(&system(), &root.record.id).await.unwrap();
        let records = f
            .audit
            .query(&custos_audit::AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(records.iter().any(|r| r.entry.operation == "token_recover"));
        assert!(records.iter().any(|r| r.entry.operation == "token_revoke"
            && r.entry.error_code.as_deref() == Some("last_admin_token")));
    }

    #[tokio::test]
    async fn managing_tokens_needs_admin_and_a_refusal_is_audited() {
        let f = fixture().await;
        f.access
            .issue(&system(), "root", &[Scope::Admin], None)
            .await
            .unwrap();
        let reader = f
            .access
            .issue(&system(), "reader", &[Scope::KeysRead], None)
            .await
            .unwrap();
        let ctx = RequestContext {
            principal: Some(f.access.authenticate(reader.token.expose_secret()).unwrap()),
            ..RequestContext::default()
        };
        assert_eq!(
            f.access
                .issue(&ctx, "mine", &[Scope::Admin], None)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
        assert!(f.access.list(&ctx).await.is_err());
        let records = f
            .audit
            .query(&custos_audit::AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let denied: Vec<_> = records
            .iter()
            .filter(|r| r.entry.outcome == custos_audit::Outcome::Denied)
            .map(|r| r.entry.operation.as_str())
            .collect();
        assert_eq!(denied, ["token_create", "token_list"]);
    }
}

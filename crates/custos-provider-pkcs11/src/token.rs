//! One PKCS#11 token: the shared module context, finding the slot, login, and the session pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use custos_provider::ProviderError;
use custos_types::KeyHandle;

use crate::Pkcs11Config;

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    /// The token with this label (the slot is found at run time; SoftHSM2 assigns random slot ids).
    Label(String),
    /// A fixed slot id.
    Slot(u64),
}

impl std::fmt::Display for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRef::Label(l) => write!(f, "token {l:?}"),
            TokenRef::Slot(s) => write!(f, "slot {s}"),
        }
    }
}

/// One initialised context per module for the whole process: a second `C_Initialize` of the same
/// module is refused, and finalising one context would end every session opened through another.
fn context(module: &Path) -> Result<Pkcs11, ProviderError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| ProviderError::Unavailable("PKCS#11 context lock poisoned".into()))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        ProviderError::Refused(format!(
            "cannot load the PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ProviderError::Refused(format!("C_Initialize failed: {e}"))),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Maps a PKCS#11 failure to a provider error: lost tokens and sessions are retryable; PIN problems,
/// missing objects and refused mechanisms are not.
pub fn map_error(err: Error) -> ProviderError {
    match err {
        Error::Pkcs11(rv, function) => match rv {
            RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SessionCount
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized => {
                ProviderError::Unavailable(format!("{function}: {rv}"))
            }
            RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinExpired
            | RvError::PinLocked => ProviderError::Refused(format!("login failed: {rv}")),
            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => {
                ProviderError::UnknownKey(KeyHandle::new("stale object handle"))
            }
            RvError::DataLenRange | RvError::DataInvalid => {
                ProviderError::InvalidPayload("the token refused the data length")
            }
            other => ProviderError::Refused(format!("{function}: {other}")),
        },
        other => ProviderError::Refused(other.to_string()),
    }
}

/// Whether an error means the session or token is gone, so the pool must be rebuilt.
fn is_lost(err: &ProviderError) -> bool {
    matches!(err, ProviderError::Unavailable(_))
}

/// Whether the session is still logged in as the user.
fn logged_in(session: &Session) -> bool {
    use cryptoki::session::SessionState;
    session
        .get_session_info()
        .map(|info| {
            matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            )
        })
        .unwrap_or(false)
}

#[derive(Debug, Default)]
struct Pool {
    slot: Option<Slot>,
    idle: Vec<Session>,
}

/// A token and its pool of logged-in sessions.
pub struct Token {
    config: Pkcs11Config,
    ctx: Pkcs11,
    pool: Mutex<Pool>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.config.module)
            .field("token", &self.config.token)
            .field("pin", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn new(config: Pkcs11Config) -> Result<Token, ProviderError> {
        let ctx = context(&config.module)?;
        Ok(Token {
            config,
            ctx,
            pool: Mutex::new(Pool::default()),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Pool>, ProviderError> {
        self.pool
            .lock()
            .map_err(|_| ProviderError::Unavailable("session pool lock poisoned".into()))
    }

    fn find_slot(&self) -> Result<Slot, ProviderError> {
        let slots = self.ctx.get_slots_with_token().map_err(map_error)?;
        for slot in slots {
            let matches = match &self.config.token {
                TokenRef::Slot(id) => slot.id() == *id,
                TokenRef::Label(label) => self
                    .ctx
                    .get_token_info(slot)
                    .map(|info| info.label().trim_end() == label)
                    .unwrap_or(false),
            };
            if matches {
                return Ok(slot);
            }
        }
        Err(ProviderError::Unavailable(format!(
            "{} is not present",
            self.config.token
        )))
    }

    fn open(&self, slot: Slot) -> Result<Session, ProviderError> {
        let session = self.ctx.open_rw_session(slot).map_err(map_error)?;
        // Login is per application and token: the first session logs in, later ones already are.
        match session.login(UserType::User, Some(&self.config.pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(match map_error(e) {
                ProviderError::Refused(why) => ProviderError::Refused(format!(
                    "{} on {}: {why}",
                    self.config.token,
                    self.config.module.display()
                )),
                other => other,
            }),
        }
    }

    fn checkout(&self) -> Result<Session, ProviderError> {
        let slot = {
            let mut pool = self.lock()?;
            if let Some(session) = pool.idle.pop() {
                return Ok(session);
            }
            match pool.slot {
                Some(slot) => slot,
                None => {
                    let slot = self.find_slot()?;
                    pool.slot = Some(slot);
                    slot
                }
            }
        };
        self.open(slot).inspect_err(|e| {
            if is_lost(e) {
                self.reset();
            }
        })
    }

    fn checkin(&self, session: Session) {
        if let Ok(mut pool) = self.lock() {
            pool.idle.push(session);
        }
    }

    /// Forgets the slot and every idle session; the next call finds the token again.
    fn reset(&self) {
        if let Ok(mut pool) = self.lock() {
            pool.slot = None;
            pool.idle.clear();
        }
    }

    /// Runs `f` with a logged-in session. When the session turns out to be lost (closed, logged out, the
    /// token re-inserted), the pool is emptied and `f` runs once more on a freshly opened session, so a
    /// transient loss does not fail the caller; a second loss is reported as `Unavailable`.
    pub fn with_session<T>(
        &self,
        f: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, ProviderError> {
        match self.attempt(&f) {
            Err(err) if is_lost(&err) => {
                tracing::warn!(token = %self.config.token, error = %err, "PKCS#11 session lost; re-opening");
                self.attempt(&f)
            }
            other => other,
        }
    }

    fn attempt<T>(
        &self,
        f: &impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, ProviderError> {
        let session = self.checkout()?;
        match f(&session).map_err(map_error) {
            Ok(value) => {
                self.checkin(session);
                Ok(value)
            }
            Err(ProviderError::UnknownKey(_)) if !logged_in(&session) => {
                // Private objects vanish when the application is logged out (an HSM session timeout,
                // another client's C_Logout): that is a lost login, not a missing key.
                drop(session);
                self.reset();
                Err(ProviderError::Unavailable(format!(
                    "{} logged the session out",
                    self.config.token
                )))
            }
            Err(err) => {
                if is_lost(&err) {
                    drop(session);
                    self.reset();
                } else {
                    self.checkin(session);
                }
                Err(err)
            }
        }
    }

    /// Opens (or reuses) a session: the token is present and the PIN works.
    pub fn check(&self) -> Result<(), ProviderError> {
        self.with_session(|_| Ok(()))
    }
}

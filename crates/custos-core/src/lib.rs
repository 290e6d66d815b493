//! The Custos key manager: the key registry, the sign path and access control, with no HTTP.
//!
//! [`KeyManager`] keeps every key's versions in memory (loaded from the store at start, written through
//! on every change), so signing never waits on the store. [`Access`] issues and checks API tokens.
//! Both are used by the server and could be used by any other front end.

mod access;
mod error;
mod manager;

pub use access::{Access, IssuedToken, Operation, Principal, Scope};
pub use error::{CoreError, ErrorKind};
pub use manager::{
    KeyManager, Limits, SignInput, SignOutcome, SignRequest, VerifyOutcome, VerifyRequest,
};

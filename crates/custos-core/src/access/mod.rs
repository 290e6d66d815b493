//! Access control: scopes and operations, and API tokens (stored as hashes, checked in constant time).

mod scopes;
mod tokens;

pub use scopes::{Operation, Scope, ScopeSpec, Scopes, BUILTIN_SCOPES};
pub use tokens::{Access, AwsCredential, IssuedToken, Principal};

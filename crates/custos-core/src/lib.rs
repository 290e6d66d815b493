//! The Custos key manager: the key registry, the sign path and access control, with no HTTP.
//!
//! [`KeyManager`] keeps every key's versions in memory (loaded from the store at start, written through
//! on every change), so signing never waits on the store for keys. [`Access`] issues and checks API
//! tokens. [`AuditLog`] records every operation durably before its result is returned. All are used by
//! the server and could be used by any other front end.

mod access;
mod audit;
mod cache;
mod context;
mod emergency;
mod error;
mod events;
mod failover;
mod guard;
mod manager;
mod metrics;
mod rotation;

pub use access::{Access, AwsCredential, IssuedToken, Operation, Principal, Scope};
pub use audit::{AuditConfig, AuditLog, AuditSink};
pub use context::RequestContext;
pub use emergency::EMERGENCY_PROVIDER;
pub use error::{CoreError, ErrorKind};
pub use events::{signature_header, Event, Events, Webhook};
pub use failover::{CircuitState, CircuitView, EmergencyConfig, FailoverConfig};
pub use manager::{
    KeyManager, Limits, SignInput, SignOutcome, SignRequest, VerifyOutcome, VerifyRequest,
    DEFAULT_CACHE_SIZE,
};
pub use metrics::Metrics;
pub use rotation::RotationPolicy;

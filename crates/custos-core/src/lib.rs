//! The Custos key manager: the one core every surface calls, with no HTTP.
//!
//! [`KeyManager`] decides every key operation for every surface: it authorises the caller, applies the
//! key's state and the signing policies, runs the sign path (equivocation guard, signature cache,
//! provider chain with failover, emergency mode, verification), and writes the audit record before it
//! answers. [`Access`] issues and checks API tokens. [`AuditLog`] records every operation durably.
//! Events go to the [`EventSink`]s the binary installs; time comes from a [`Clock`].

mod access;
mod audit;
mod audited;
mod cache;
mod chain;
mod clock;
mod context;
mod emergency;
mod error;
mod events;
mod failover;
mod guard;
mod lifecycle;
mod manager;
mod metrics;
mod payload;
mod policy;
mod registry;
mod rotation;
#[cfg(feature = "testkit")]
pub mod testkit;
mod wrapping;

pub use access::{
    Access, AwsCredential, IssuedToken, Operation, Principal, Scope, ScopeSpec, Scopes,
    BUILTIN_SCOPES,
};
pub use audit::{AuditConfig, AuditLog, AuditSink};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::RequestContext;
pub use emergency::{EmergencyPolicy, EMERGENCY_PROVIDER};
pub use error::{CoreError, ErrorKind};
pub use events::{Event, EventSink, Events};
pub use failover::{CircuitState, CircuitView, EmergencyConfig, FailoverConfig};
pub use manager::{
    ClientKeyFormat, ImportParameters, KeyManager, KeyStateChange, NewClientKey, SchedulerHealth,
    Settings, DEFAULT_CACHE_SIZE,
};
pub use metrics::Metrics;
pub use payload::{
    Limits, SignInput, SignOutcome, SignRequest, VerifyOutcome, VerifyRequest,
    DEFAULT_MAX_SEQUENCE_JUMP, MAX_SEQUENCE,
};
pub use policy::{Decision, Policies, PolicyInput, PolicyStage, SignPolicy};
pub use rotation::{RotationPolicy, MAX_INTERVAL_DAYS};
pub use wrapping::WrappingAlgorithm;

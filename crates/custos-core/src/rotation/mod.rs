//! Rotation: policies with their schedule, the encrypted backup before a rotation, and the crash-safe
//! rotation state machine.

mod backup;
mod job;
mod policy;

pub(crate) use job::Rotator;
pub use policy::{RotationPolicy, MAX_INTERVAL_DAYS};

//! Key versions and their life-cycle states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The version number of a key; the first version is 1 and each rotation adds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyVersion(pub u32);

impl KeyVersion {
    /// The first version of every key.
    pub const FIRST: KeyVersion = KeyVersion(1);

    /// The version after this one, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<KeyVersion> {
        self.0.checked_add(1).map(KeyVersion)
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a key version is in its life cycle.
///
/// Exactly one version of a key is `Current`. `Enabled` versions still sign when asked for by version
/// (the overlap after a rotation). `Disabled` versions only verify. `Destroyed` versions do neither; their
/// public key is kept so old signatures can still be attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Signs by default.
    Current,
    /// Signs when asked for by version; verifies.
    Enabled,
    /// Verifies only.
    Disabled,
    /// Neither signs nor verifies; the private key is gone.
    Destroyed,
}

impl VersionState {
    /// Whether a version in this state may produce signatures.
    pub fn can_sign(self) -> bool {
        matches!(self, VersionState::Current | VersionState::Enabled)
    }

    /// Whether a version in this state may be used to verify.
    pub fn can_verify(self) -> bool {
        !matches!(self, VersionState::Destroyed)
    }

    /// The stable lower-case name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Current => "current",
            VersionState::Enabled => "enabled",
            VersionState::Disabled => "disabled",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// Parses the stable name back.
    pub fn parse(s: &str) -> Option<VersionState> {
        [
            VersionState::Current,
            VersionState::Enabled,
            VersionState::Disabled,
            VersionState::Destroyed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

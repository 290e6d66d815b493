//! Validated names: key names, provider names, and the opaque handles providers give their keys.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::TypesError;

const MAX_NAME_LEN: usize = 64;

fn check_name(name: &str) -> Result<(), TypesError> {
    let fail = |reason| {
        Err(TypesError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("must be at most 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return fail("must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return fail("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Checks `name` against the naming rules: 1–64 ASCII letters, digits, `-`, `_`, `.`,
            /// starting with a letter or digit.
            pub fn new(name: impl Into<String>) -> Result<Self, TypesError> {
                let name = name.into();
                check_name(&name)?;
                Ok(Self(name))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = TypesError;
            fn try_from(name: String) -> Result<Self, TypesError> {
                Self::new(name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = TypesError;
            fn from_str(name: &str) -> Result<Self, TypesError> {
                Self::new(name)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_name!(
    /// The name of a key, unique in one Custos instance (`seq-1`, `treasury.hot`).
    KeyName
);
validated_name!(
    /// The name of a configured provider instance (`soft`, `hsm-a`).
    ProviderName
);

/// The provider's own reference to one key version (a PKCS#11 label, a KMS key id, a keystore id).
///
/// Opaque to everything but the provider that issued it; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHandle(String);

impl KeyHandle {
    /// Wraps a provider-issued reference.
    pub fn new(handle: impl Into<String>) -> Self {
        Self(handle.into())
    }

    /// The handle as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_refuses_names() {
        for ok in ["a", "seq-1", "treasury.hot", "A_b-9", &"x".repeat(64)] {
            assert!(KeyName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "ä", &"x".repeat(65), "a\n"] {
            assert!(KeyName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserialising_checks_the_rules() {
        assert!(serde_json::from_str::<KeyName>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<KeyName>("\"not ok\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(name in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}") {
            let parsed = KeyName::new(name.clone()).unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }
    }
}

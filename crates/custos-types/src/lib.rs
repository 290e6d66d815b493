//! Custos value types: key names, versions, algorithms, public keys, signatures, records and error codes,
//! with no I/O.
//!
//! Everything here is a plain value. The only behaviour is pure computation on those values: validating
//! names, hashing messages, checking and normalising signatures, and encoding public keys (PEM and chain
//! addresses), and signing with a private key held in memory (zeroized on drop). Every multi-byte value
//! has an explicit byte order; nothing depends on the host's.

mod address;
mod algorithm;
mod error;
mod error_code;
mod name;
mod private_key;
mod public_key;
mod records;
mod signature;
mod version;

pub use address::{ethereum_address, solana_address};
pub use algorithm::{Algorithm, HashAlgorithm, SignatureFormat};
pub use error::TypesError;
pub use error_code::ErrorCode;
pub use name::{KeyHandle, KeyName, ProviderName};
pub use private_key::PrivateKey;
pub use public_key::{ecdsa_der_to_raw, PublicKey};
pub use records::{
    AliasRecord, ClientKeyRecord, ImportRecord, ImportWrapping, KeyKind, KeyRecord, KeyState,
    Location, SealedKey, SealingKeyRecord, TokenRecord, VersionRecord, Watermark,
};
pub use signature::{SignPayload, Signature, DIGEST_LEN};
pub use version::{KeyVersion, VersionState};

/// A point in time, as Custos stores and shows it (UTC, nanosecond precision).
pub use jiff::Timestamp;

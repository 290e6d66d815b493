//! BIP32 masters in the software keystore: made from the OS RNG or read from a client's `xprv`, and
//! children derived along a path for one signature, always inside zeroizing memory.
//!
//! The `bip32` crate (RustCrypto's k256 underneath) does the derivation; the child signs through
//! [`PrivateKey`], the same signing routine as every other software key.

use bip32::{ChildNumber, ExtendedKey, ExtendedKeyAttrs, Prefix, XPrv};
use custos_provider::{DerivationPath, ProviderError, HARDENED};
use custos_types::{Algorithm, PrivateKey};
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

/// The bytes sealed for a master: the 32-byte private key, then the 32-byte chain code.
pub(crate) const SEALED_LEN: usize = 64;

/// A master's private key and chain code.
pub(crate) struct Master {
    bytes: Zeroizing<[u8; SEALED_LEN]>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Master(<redacted>)")
    }
}

fn invalid(why: &'static str) -> ProviderError {
    ProviderError::InvalidPayload(why)
}

impl Master {
    /// A fresh master from 32 random bytes of seed (BIP32's "Bitcoin seed" HMAC).
    pub(crate) fn generate() -> Result<Master, ProviderError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut());
        let xprv = XPrv::new(seed.as_ref())
            .map_err(|_| ProviderError::Corrupt("BIP32 seed rejected".into()))?;
        Ok(Master::of(&xprv))
    }

    /// A master from a client's `xprv` text (base58check). Only depth-0 keys are masters; a derived
    /// `xprv` is taken as the root it is.
    pub(crate) fn from_xprv(text: &[u8]) -> Result<Master, ProviderError> {
        let text = Zeroizing::new(
            std::str::from_utf8(text)
                .map_err(|_| invalid("the key material is not an xprv"))?
                .trim()
                .to_owned(),
        );
        let xprv: XPrv = text
            .parse()
            .map_err(|_| invalid("the key material is not an xprv"))?;
        Ok(Master::of(&xprv))
    }

    /// A master from what [`Master::sealed_bytes`] wrote.
    pub(crate) fn from_sealed(bytes: &[u8]) -> Result<Master, ProviderError> {
        let bytes: [u8; SEALED_LEN] = bytes.try_into().map_err(|_| {
            ProviderError::Corrupt("a sealed BIP32 key has the wrong length".into())
        })?;
        let master = Master {
            bytes: Zeroizing::new(bytes),
        };
        master.xprv()?;
        Ok(master)
    }

    fn of(xprv: &XPrv) -> Master {
        let mut bytes = Zeroizing::new([0u8; SEALED_LEN]);
        bytes[..32].copy_from_slice(&xprv.to_bytes());
        bytes[32..].copy_from_slice(&xprv.attrs().chain_code);
        Master { bytes }
    }

    /// The bytes to seal.
    pub(crate) fn sealed_bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The chain code.
    pub(crate) fn chain_code(&self) -> [u8; 32] {
        let mut code = [0u8; 32];
        code.copy_from_slice(&self.bytes[32..]);
        code
    }

    /// The master's own key, to sign with at the root and to show its public key.
    pub(crate) fn private_key(&self) -> Result<PrivateKey, ProviderError> {
        PrivateKey::from_secret(Algorithm::Secp256k1, &self.bytes[..32])
            .map_err(|_| ProviderError::Corrupt("a BIP32 key is not a valid secp256k1 key".into()))
    }

    fn xprv(&self) -> Result<XPrv, ProviderError> {
        let mut key_bytes = [0u8; 33];
        key_bytes[1..].copy_from_slice(&self.bytes[..32]);
        let extended = ExtendedKey {
            prefix: Prefix::XPRV,
            attrs: ExtendedKeyAttrs {
                depth: 0,
                parent_fingerprint: [0; 4],
                child_number: ChildNumber(0),
                chain_code: self.chain_code(),
            },
            key_bytes,
        };
        let xprv = XPrv::try_from(extended);
        key_bytes.fill(0);
        xprv.map_err(|_| ProviderError::Corrupt("a BIP32 key is not valid".into()))
    }

    /// The child along `path` (numbers at or above [`HARDENED`] are hardened).
    pub(crate) fn derive(&self, path: &DerivationPath) -> Result<PrivateKey, ProviderError> {
        if path.len() > 255 {
            return Err(invalid("a BIP32 path has at most 255 steps"));
        }
        let mut key = self.xprv()?;
        for &number in path {
            let child = ChildNumber::new(number & !HARDENED, number >= HARDENED)
                .map_err(|_| invalid("a BIP32 child number is out of range"))?;
            key = key
                .derive_child(child)
                .map_err(|_| invalid("this BIP32 path cannot be derived"))?;
        }
        let secret = Zeroizing::new(key.to_bytes());
        PrivateKey::from_secret(Algorithm::Secp256k1, secret.as_ref())
            .map_err(|_| ProviderError::Corrupt("a derived key is not valid".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP32 test vector 1: seed 000102...0f, chain m/0'/1/2'/2/1000000000.
    #[test]
    fn derivation_matches_bip32_test_vector_1() {
        let seed: Vec<u8> = (0u8..16).collect();
        let master = Master::of(&XPrv::new(&seed).unwrap());
        assert_eq!(
            hex::encode(master.private_key().unwrap().public_key().as_bytes())[..2].to_owned(),
            "04"
        );
        let xprv = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi";
        let parsed = Master::from_xprv(xprv.as_bytes()).unwrap();
        assert_eq!(parsed.sealed_bytes(), master.sealed_bytes());
        // m/0'/1/2'/2/1000000000: private key from the vector.
        let child = master
            .derive(&[HARDENED, 1, HARDENED | 2, 2, 1_000_000_000])
            .unwrap();
        assert_eq!(
            hex::encode(child.secret()),
            "471b76e389e528d6de6d816857e012c5455051cad6660850e58372a6c3e6e7c8"
        );
        let again = Master::from_sealed(master.sealed_bytes()).unwrap();
        assert_eq!(again.chain_code(), master.chain_code());
        assert!(Master::from_xprv(b"xpub-not-a-key").is_err());
        assert!(Master::from_sealed(&[0; 10]).is_err());
    }
}

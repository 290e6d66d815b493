//! Public keys: validation, encodings (raw, PEM, chain address) and signature verification.

use ::k256::elliptic_curve::sec1::ToEncodedPoint as _;
use ::k256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};

use crate::{address, Algorithm, SignPayload, Signature, SignatureFormat, TypesError, DIGEST_LEN};

/// A public key of one algorithm.
///
/// The bytes are canonical: 32 bytes for Ed25519, 65-byte uncompressed SEC1 (`04 ‖ x ‖ y`, big-endian) for
/// ECDSA. The constructor checks that they decode to a valid point and keeps the decoded point, so
/// verification on the sign path never decompresses the key again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "PublicKeyRepr", into = "PublicKeyRepr")]
pub struct PublicKey {
    algorithm: Algorithm,
    bytes: Vec<u8>,
    parsed: Parsed,
}

/// The decoded point, for verification.
#[derive(Debug, Clone)]
enum Parsed {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256k1(::k256::ecdsa::VerifyingKey),
    P256(::p256::ecdsa::VerifyingKey),
}

#[derive(Serialize, Deserialize)]
struct PublicKeyRepr {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl TryFrom<PublicKeyRepr> for PublicKey {
    type Error = TypesError;
    fn try_from(repr: PublicKeyRepr) -> Result<Self, TypesError> {
        PublicKey::from_bytes(repr.algorithm, &repr.bytes)
    }
}

impl From<PublicKey> for PublicKeyRepr {
    fn from(key: PublicKey) -> Self {
        PublicKeyRepr {
            algorithm: key.algorithm,
            bytes: key.bytes,
        }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm && self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.algorithm.hash(state);
        self.bytes.hash(state);
    }
}

// ECDSA work is the same for both curves but the types differ; one macro body serves both.
macro_rules! ecdsa_ops {
    ($module:ident, $curve:ident) => {
        pub(crate) mod $module {
            use super::*;
            use ::ecdsa::RecoveryId;
            use ::$curve::ecdsa::{Signature as EcSig, VerifyingKey};

            pub(crate) fn canonical(bytes: &[u8]) -> Option<(Vec<u8>, VerifyingKey)> {
                let key = ::$curve::PublicKey::from_sec1_bytes(bytes).ok()?;
                let canonical = key.to_encoded_point(false).as_bytes().to_vec();
                Some((canonical, VerifyingKey::from(key)))
            }

            pub(crate) fn decode(
                alg: Algorithm,
                sig: &[u8],
                format: SignatureFormat,
            ) -> Result<EcSig, TypesError> {
                let parsed = match format {
                    SignatureFormat::Raw => EcSig::from_slice(sig),
                    SignatureFormat::Der => EcSig::from_der(sig),
                };
                let parsed = parsed.map_err(|_| TypesError::MalformedSignature(alg))?;
                Ok(parsed.normalize_s().unwrap_or(parsed))
            }

            /// ECDSA verification (SEC1 v2 section 4.1.4) that also yields the recovery id.
            ///
            /// R' = u1·G + u2·Q with u1 = z/s and u2 = r/s; the signature is valid when x(R') mod n = r.
            /// The recovery id is the parity of y(R'), plus 2 when x(R') ≥ n. One linear combination,
            /// where `verify_prehash` followed by `trial_recovery_from_prehash` costs up to five.
            pub(crate) fn check(
                alg: Algorithm,
                vk: &VerifyingKey,
                digest: &[u8; DIGEST_LEN],
                sig: EcSig,
            ) -> Result<Signature, TypesError> {
                use ::$curve::elliptic_curve::ops::LinearCombination as _;
                use ::$curve::elliptic_curve::point::AffineCoordinates as _;
                use ::$curve::elliptic_curve::PrimeField as _;
                use ::$curve::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

                let (r, s) = sig.split_scalars();
                // bits2int: a 32-byte digest is one big-endian field-sized integer, reduced mod n.
                let z = <Scalar as ::$curve::elliptic_curve::ops::Reduce<U256>>::reduce_bytes(
                    FieldBytes::from_slice(digest),
                );
                let s_inv = Option::<Scalar>::from(s.invert()).ok_or(TypesError::BadSignature)?;
                let u1 = z * s_inv;
                let u2 = *r * s_inv;
                let q = ProjectivePoint::from(*vk.as_affine());
                let point: AffinePoint =
                    ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &u1, &q, &u2).into();
                if point == AffinePoint::IDENTITY {
                    return Err(TypesError::BadSignature);
                }
                let x = point.x();
                let x_mod_n =
                    <Scalar as ::$curve::elliptic_curve::ops::Reduce<U256>>::reduce_bytes(&x);
                if x_mod_n != *r {
                    return Err(TypesError::BadSignature);
                }
                let x_reduced = bool::from(Scalar::from_repr(x).is_none());
                let rid = RecoveryId::new(bool::from(point.y_is_odd()), x_reduced);
                let mut raw = [0u8; 64];
                raw.copy_from_slice(&sig.to_bytes());
                Ok(Signature::new(alg, raw, Some(rid.to_byte())))
            }
        }
    };
}
ecdsa_ops!(ec_k256, k256);
ecdsa_ops!(ec_p256, p256);

/// Converts a DER ECDSA signature, as HSMs and cloud KMS return them, to 64-byte r‖s (big-endian).
/// The result is not yet checked against any key; [`PublicKey::verify`] does that.
pub fn ecdsa_der_to_raw(algorithm: Algorithm, der: &[u8]) -> Result<[u8; 64], TypesError> {
    let bytes = match algorithm {
        Algorithm::Secp256k1 => ec_k256::decode(algorithm, der, SignatureFormat::Der)?.to_bytes(),
        Algorithm::P256 => ec_p256::decode(algorithm, der, SignatureFormat::Der)?.to_bytes(),
        Algorithm::Ed25519 => {
            return Err(TypesError::NotSupported(
                "Ed25519 signatures have no DER form",
            ))
        }
    };
    let mut raw = [0u8; 64];
    raw.copy_from_slice(&bytes);
    Ok(raw)
}

impl PublicKey {
    /// Checks and canonicalises public key bytes (ECDSA keys may be given compressed or uncompressed).
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<PublicKey, TypesError> {
        let invalid = || TypesError::InvalidPublicKey(algorithm);
        let (bytes, parsed) = match algorithm {
            Algorithm::Ed25519 => {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| invalid())?;
                (arr.to_vec(), Parsed::Ed25519(key))
            }
            Algorithm::Secp256k1 => {
                let (bytes, key) = ec_k256::canonical(bytes).ok_or_else(invalid)?;
                (bytes, Parsed::Secp256k1(key))
            }
            Algorithm::P256 => {
                let (bytes, key) = ec_p256::canonical(bytes).ok_or_else(invalid)?;
                (bytes, Parsed::P256(key))
            }
        };
        Ok(PublicKey {
            algorithm,
            bytes,
            parsed,
        })
    }

    /// Reads a DER SubjectPublicKeyInfo (as cloud KMS and OpenSSL give public keys) of `algorithm`.
    pub fn from_spki_der(algorithm: Algorithm, der: &[u8]) -> Result<PublicKey, TypesError> {
        let invalid = |_| TypesError::InvalidPublicKey(algorithm);
        let bytes = match algorithm {
            Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_der(der)
                .map_err(invalid)?
                .to_bytes()
                .to_vec(),
            Algorithm::Secp256k1 => ::k256::PublicKey::from_public_key_der(der)
                .map_err(invalid)?
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            Algorithm::P256 => ::p256::PublicKey::from_public_key_der(der)
                .map_err(invalid)?
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        };
        PublicKey::from_bytes(algorithm, &bytes)
    }

    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of `algorithm`.
    pub fn from_spki_pem(algorithm: Algorithm, pem: &str) -> Result<PublicKey, TypesError> {
        let (label, doc) = ::k256::pkcs8::Document::from_pem(pem)
            .map_err(|_| TypesError::InvalidPublicKey(algorithm))?;
        if label != "PUBLIC KEY" {
            return Err(TypesError::InvalidPublicKey(algorithm));
        }
        PublicKey::from_spki_der(algorithm, doc.as_bytes())
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The canonical key bytes (32 for Ed25519, 65 uncompressed SEC1 for ECDSA).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key as DER SubjectPublicKeyInfo, as AWS KMS `GetPublicKey` returns it.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let der = match &self.parsed {
            Parsed::Ed25519(k) => k.to_public_key_der(),
            Parsed::Secp256k1(k) => k.to_public_key_der(),
            Parsed::P256(k) => k.to_public_key_der(),
        };
        // The bytes were validated at construction, so encoding cannot fail.
        der.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as OpenSSL reads it.
    pub fn to_pem(&self) -> String {
        let pem = match &self.parsed {
            Parsed::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
            Parsed::Secp256k1(k) => k.to_public_key_pem(LineEnding::LF),
            Parsed::P256(k) => k.to_public_key_pem(LineEnding::LF),
        };
        // The bytes were validated at construction, so encoding cannot fail.
        pem.unwrap_or_default()
    }

    /// The chain address, where one applies: Solana for Ed25519, Ethereum (EIP-55) for secp256k1.
    pub fn address(&self) -> Option<String> {
        match self.algorithm {
            Algorithm::Ed25519 => {
                let arr: &[u8; 32] = self.bytes.as_slice().try_into().ok()?;
                Some(address::solana_address(arr))
            }
            Algorithm::Secp256k1 => {
                let arr: &[u8; 65] = self.bytes.as_slice().try_into().ok()?;
                Some(address::ethereum_address(arr))
            }
            Algorithm::P256 => None,
        }
    }

    fn check_payload(&self, payload: &SignPayload) -> Result<(), TypesError> {
        match (self.algorithm.is_ecdsa(), payload) {
            (false, SignPayload::Message(_)) | (true, SignPayload::Digest(_)) => Ok(()),
            (false, SignPayload::Digest(_)) => Err(TypesError::NotSupported(
                "ed25519 signs the message itself, not a digest",
            )),
            (true, SignPayload::Message(_)) => Err(TypesError::NotSupported(
                "ECDSA signs a 32-byte digest; hash the message first",
            )),
        }
    }

    /// Decodes `signature` in `format`, checks it against `payload`, and returns it normalised.
    ///
    /// This is the check every provider's output passes before Custos returns it, and the check behind the
    /// verify API. ECDSA signatures with a high s are accepted and returned with low s.
    pub fn verify(
        &self,
        payload: &SignPayload,
        signature: &[u8],
        format: SignatureFormat,
    ) -> Result<Signature, TypesError> {
        self.check_payload(payload)?;
        let alg = self.algorithm;
        match (&self.parsed, payload) {
            (Parsed::Ed25519(key), SignPayload::Message(message)) => {
                if format == SignatureFormat::Der {
                    return Err(TypesError::NotSupported(
                        "DER encoding applies to ECDSA signatures only",
                    ));
                }
                let raw: [u8; 64] = signature
                    .try_into()
                    .map_err(|_| TypesError::MalformedSignature(alg))?;
                key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&raw))
                    .map_err(|_| TypesError::BadSignature)?;
                Ok(Signature::new(alg, raw, None))
            }
            (Parsed::Secp256k1(key), SignPayload::Digest(digest)) => {
                let sig = ec_k256::decode(alg, signature, format)?;
                ec_k256::check(alg, key, digest, sig)
            }
            (Parsed::P256(key), SignPayload::Digest(digest)) => {
                let sig = ec_p256::decode(alg, signature, format)?;
                ec_p256::check(alg, key, digest, sig)
            }
            _ => Err(TypesError::NotSupported("payload does not match algorithm")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlgorithm;
    use ed25519_dalek::Signer as _;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// RFC 8032 section 7.1, tests 1, 2, 3 and SHA(abc).
    #[test]
    fn rfc8032_ed25519_vectors() {
        let vectors = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da
                 085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac
                 18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
            (
                "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589
                 09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
            ),
        ];
        for (secret, public, message, signature) in vectors {
            let secret: [u8; 32] = unhex(secret).try_into().unwrap();
            let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
            let public = PublicKey::from_bytes(Algorithm::Ed25519, &unhex(public)).unwrap();
            assert_eq!(signing.verifying_key().as_bytes(), public.as_bytes());
            let message = unhex(message);
            let sig = signing.sign(&message).to_bytes();
            assert_eq!(sig.to_vec(), unhex(signature));
            let payload = SignPayload::Message(message.clone());
            public.verify(&payload, &sig, SignatureFormat::Raw).unwrap();
            let mut bad = sig;
            bad[0] ^= 1;
            assert_eq!(
                public.verify(&payload, &bad, SignatureFormat::Raw),
                Err(TypesError::BadSignature)
            );
        }
    }

    /// RFC 6979 A.2.5 (P-256, SHA-256, message "sample"): a published deterministic ECDSA vector.
    #[test]
    fn rfc6979_p256_vector_verifies_and_round_trips_der() {
        let x = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6";
        let y = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299";
        let key = PublicKey::from_bytes(Algorithm::P256, &unhex(&format!("04{x}{y}"))).unwrap();
        let r = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716";
        let s = "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8";
        let raw = unhex(&format!("{r}{s}"));
        let digest = SignPayload::Digest(HashAlgorithm::Sha256.digest(b"sample"));
        let sig = key.verify(&digest, &raw, SignatureFormat::Raw).unwrap();
        // The published s is high; Custos returns the low-s twin, which verifies too.
        assert_ne!(sig.raw().to_vec(), raw);
        let der = sig.encode(SignatureFormat::Der).unwrap();
        let again = key.verify(&digest, &der, SignatureFormat::Der).unwrap();
        assert_eq!(again, sig);
        assert!(sig.recovery_id().unwrap() <= 1);
    }

    #[test]
    fn secp256k1_recovery_id_recovers_the_key() {
        use k256::ecdsa::{RecoveryId, SigningKey, VerifyingKey};
        let sk = SigningKey::random(&mut rand_core::OsRng);
        let public = PublicKey::from_bytes(
            Algorithm::Secp256k1,
            sk.verifying_key().to_encoded_point(false).as_bytes(),
        )
        .unwrap();
        let digest = HashAlgorithm::Keccak256.digest(b"hello");
        let (sig, _) = sk.sign_prehash_recoverable(&digest).unwrap();
        let checked = public
            .verify(
                &SignPayload::Digest(digest),
                &sig.to_bytes(),
                SignatureFormat::Raw,
            )
            .unwrap();
        let rid = RecoveryId::from_byte(checked.recovery_id().unwrap()).unwrap();
        let sig = k256::ecdsa::Signature::from_slice(checked.raw()).unwrap();
        let recovered = VerifyingKey::recover_from_prehash(&digest, &sig, rid).unwrap();
        assert_eq!(&recovered, sk.verifying_key());
        assert!(public.address().unwrap().starts_with("0x"));
    }

    #[test]
    fn refuses_wrong_payloads_and_bad_keys() {
        assert!(PublicKey::from_bytes(Algorithm::Ed25519, &[1u8; 31]).is_err());
        assert!(PublicKey::from_bytes(Algorithm::P256, &[4u8; 65]).is_err());
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let public =
            PublicKey::from_bytes(Algorithm::Ed25519, sk.verifying_key().as_bytes()).unwrap();
        let err = public
            .verify(
                &SignPayload::Digest([0; 32]),
                &[0; 64],
                SignatureFormat::Raw,
            )
            .unwrap_err();
        assert!(matches!(err, TypesError::NotSupported(_)));
        assert!(public.to_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// The one-pass check agrees with the ecdsa crate's verify and trial recovery, for valid and
        /// tampered signatures, on both curves.
        #[test]
        fn one_pass_ecdsa_check_agrees_with_the_ecdsa_crate(
            secret in proptest::array::uniform32(1u8..),
            digest in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            flip in 0usize..64,
        ) {
            use ::k256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
            macro_rules! agree {
                ($curve:ident, $alg:expr) => {{
                    let sk = ::$curve::ecdsa::SigningKey::from_slice(&secret).unwrap();
                    let vk = *sk.verifying_key();
                    let key = PublicKey::from_bytes($alg, vk.to_encoded_point(false).as_bytes()).unwrap();
                    let sig: ::$curve::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
                    let sig = sig.normalize_s().unwrap_or(sig);
                    let ours = key.verify(&SignPayload::Digest(digest), &sig.to_bytes(), SignatureFormat::Raw).unwrap();
                    let theirs = ::ecdsa::RecoveryId::trial_recovery_from_prehash(&vk, &digest, &sig).unwrap();
                    proptest::prop_assert_eq!(ours.recovery_id(), Some(theirs.to_byte()));
                    let mut bad = sig.to_bytes().to_vec();
                    bad[flip] ^= 0x01;
                    let crate_says = ::$curve::ecdsa::Signature::from_slice(&bad)
                        .map(|b| vk.verify_prehash(&digest, &b.normalize_s().unwrap_or(b)).is_ok())
                        .unwrap_or(false);
                    let we_say = key.verify(&SignPayload::Digest(digest), &bad, SignatureFormat::Raw).is_ok();
                    proptest::prop_assert_eq!(we_say, crate_says);
                }};
            }
            agree!(k256, Algorithm::Secp256k1);
            agree!(p256, Algorithm::P256);
        }
    }

    #[test]
    fn spki_der_round_trips_through_pem() {
        use ::k256::pkcs8::DecodePublicKey as _;
        for (alg, bytes) in [
            (
                Algorithm::Ed25519,
                ed25519_dalek::SigningKey::from_bytes(&[3u8; 32])
                    .verifying_key()
                    .to_bytes()
                    .to_vec(),
            ),
            (
                Algorithm::Secp256k1,
                ::k256::ecdsa::SigningKey::from_slice(&[5u8; 32])
                    .unwrap()
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
            (
                Algorithm::P256,
                ::p256::ecdsa::SigningKey::from_slice(&[5u8; 32])
                    .unwrap()
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
        ] {
            let key = PublicKey::from_bytes(alg, &bytes).unwrap();
            let (_, doc) = ::k256::pkcs8::Document::from_pem(&key.to_pem()).unwrap();
            assert_eq!(PublicKey::from_spki_der(alg, doc.as_bytes()).unwrap(), key);
            assert_eq!(PublicKey::from_spki_pem(alg, &key.to_pem()).unwrap(), key);
            let _ = ::p256::PublicKey::from_public_key_der(doc.as_bytes()).is_ok();
        }
        assert!(PublicKey::from_spki_der(Algorithm::P256, b"not der").is_err());
    }
}

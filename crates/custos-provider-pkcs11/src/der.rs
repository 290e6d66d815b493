//! The few DER values PKCS#11 EC keys need: curve OIDs for `CKA_EC_PARAMS` and the `CKA_EC_POINT` wrapper.

use custos_types::Algorithm;

/// `OBJECT IDENTIFIER 1.3.101.112` (Ed25519, RFC 8410).
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `OBJECT IDENTIFIER 1.3.132.0.10` (secp256k1).
const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// `OBJECT IDENTIFIER 1.2.840.10045.3.1.7` (prime256v1 / P-256).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The DER-encoded curve OID for `CKA_EC_PARAMS`.
pub fn params_of(algorithm: Algorithm) -> &'static [u8] {
    match algorithm {
        Algorithm::Ed25519 => ED25519,
        Algorithm::Secp256k1 => SECP256K1,
        Algorithm::P256 => P256,
    }
}

/// The algorithm whose curve `CKA_EC_PARAMS` names. Some tokens name Ed25519 by the printable string
/// `edwards25519` instead of the OID.
pub fn algorithm_of_params(params: &[u8]) -> Option<Algorithm> {
    const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";
    match params {
        p if p == ED25519 || p == ED25519_NAME => Some(Algorithm::Ed25519),
        p if p == SECP256K1 => Some(Algorithm::Secp256k1),
        p if p == P256 => Some(Algorithm::P256),
        _ => None,
    }
}

/// A point as `CKA_EC_POINT` holds it: a DER `OCTET STRING` around the bare point (at most 127 bytes).
pub fn wrap_ec_point(point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(point.len() + 2);
    out.push(0x04);
    out.push(u8::try_from(point.len()).unwrap_or(0x7f) & 0x7f);
    out.extend_from_slice(point);
    out
}

/// `CKA_EC_POINT` is a DER `OCTET STRING` holding the point on most tokens, and the bare point on some.
/// Returns the bare point (32 bytes for Ed25519, SEC1 for ECDSA).
pub fn unwrap_ec_point(value: &[u8]) -> &[u8] {
    match value {
        // Short-form length: OCTET STRING tag, one length byte, then exactly that many bytes.
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        // Long-form length with one length byte (points of 128-255 bytes).
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        bare => bare,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_points_unwrap_to_themselves() {
        for len in [32usize, 65] {
            let point = vec![0x42u8; len];
            assert_eq!(unwrap_ec_point(&wrap_ec_point(&point)), &point[..]);
        }
    }

    #[test]
    fn unwraps_wrapped_and_bare_points() {
        let ed = [0x11u8; 32];
        let wrapped = [&[0x04, 0x20][..], &ed].concat();
        assert_eq!(unwrap_ec_point(&wrapped), &ed);
        assert_eq!(unwrap_ec_point(&ed), &ed);
        let mut sec1 = vec![0x04u8];
        sec1.extend([0x22; 64]);
        let wrapped = [&[0x04, 0x41][..], &sec1].concat();
        assert_eq!(unwrap_ec_point(&wrapped), sec1.as_slice());
        // A bare uncompressed point starts with 0x04 too, but its second byte is not its length.
        assert_eq!(unwrap_ec_point(&sec1), sec1.as_slice());
    }

    #[test]
    fn params_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(algorithm_of_params(params_of(alg)), Some(alg));
        }
        assert_eq!(
            algorithm_of_params(b"\x13\x0cedwards25519"),
            Some(Algorithm::Ed25519)
        );
        assert_eq!(algorithm_of_params(&[0x06, 0x01, 0x00]), None);
    }
}

//! Chain addresses derived from public keys: Solana (base58) and Ethereum (EIP-55).

use sha2::Digest as _;

/// The Solana address of an Ed25519 public key: the 32 key bytes in base58.
pub fn solana_address(ed25519_public_key: &[u8; 32]) -> String {
    bs58::encode(ed25519_public_key).into_string()
}

/// The EIP-55 checksummed Ethereum address of a secp256k1 public key given as 65-byte uncompressed SEC1.
pub fn ethereum_address(uncompressed_sec1: &[u8; 65]) -> String {
    let hash = sha3::Keccak256::digest(&uncompressed_sec1[1..]);
    let lower = hex::encode(&hash[12..]);
    let checksum = hex::encode(sha3::Keccak256::digest(lower.as_bytes()));
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (c, nibble) in lower.chars().zip(checksum.chars()) {
        // EIP-55: upper-case a hex letter when the matching nibble of the checksum hash is 8 or more.
        if c.is_ascii_alphabetic() && nibble >= '8' {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethereum_address_of_private_key_one() {
        // The secp256k1 generator point G is the public key of private key 1; its address is well known.
        let g = hex::decode(concat!(
            "04",
            "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
            "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
        ))
        .unwrap();
        let g: [u8; 65] = g.try_into().unwrap();
        assert_eq!(
            ethereum_address(&g),
            "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
        );
    }

    #[test]
    fn solana_address_is_base58() {
        assert_eq!(
            solana_address(&[0u8; 32]),
            "11111111111111111111111111111111"
        );
    }
}

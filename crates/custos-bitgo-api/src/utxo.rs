//! BitGo's UTXO flow (BTC, LTC, ...) on the wire side: which coins are UTXO coins, the `xpub` of a BIP32
//! master, and PSBTs — which inputs a master's children sign, the BIP143 (P2WSH, P2SH-P2WSH, P2WPKH) or
//! legacy (P2SH) signature hash of each, and adding the partial signatures. The signatures themselves
//! are made inside the provider (`KeyManager::sign_derived`) and verified by core before they arrive
//! here. The `bitcoin` crate parses and writes the PSBT and computes the signature hashes.

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpub};
use bitcoin::hashes::Hash as _;
use bitcoin::psbt::Psbt;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};

/// The first bytes of every PSBT (BIP 174).
pub(crate) const PSBT_MAGIC: &[u8] = b"psbt\xff";

/// UTXO coins (and their testnets, `t` + name): their keys are BIP32 masters.
const UTXO_COINS: &[&str] = &[
    "btc", "ltc", "bch", "bsv", "btg", "doge", "dash", "zec", "bcha",
];

/// Whether `coin` is a UTXO coin.
pub(crate) fn is_utxo(coin: &str) -> bool {
    let base = coin.trim_end_matches('4');
    UTXO_COINS.contains(&base)
        || base
            .strip_prefix('t')
            .is_some_and(|b| UTXO_COINS.contains(&b))
}

/// The compressed SEC1 form of a public key given as uncompressed SEC1.
fn compressed(uncompressed: &[u8]) -> Result<bitcoin::secp256k1::PublicKey, String> {
    bitcoin::secp256k1::PublicKey::from_slice(uncompressed).map_err(|e| e.to_string())
}

/// The mainnet `xpub` of a BIP32 master from its public key (uncompressed SEC1) and chain code.
pub(crate) fn xpub(master: &[u8], chain_code: [u8; 32]) -> Result<String, String> {
    Ok(Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::from_normal_idx(0).map_err(|e| e.to_string())?,
        public_key: compressed(master)?,
        chain_code: ChainCode::from(chain_code),
    }
    .to_string())
}

/// The BIP32 fingerprint of a master public key (uncompressed SEC1): the first 4 bytes of its HASH160.
pub(crate) fn fingerprint(master: &[u8]) -> Result<Fingerprint, String> {
    let key = bitcoin::PublicKey::new(compressed(master)?);
    let hash = bitcoin::hashes::hash160::Hash::hash(&key.to_bytes());
    Ok(Fingerprint::from(
        <[u8; 4]>::try_from(&hash.to_byte_array()[..4]).map_err(|e| e.to_string())?,
    ))
}

/// One signature a PSBT asks of a master: the input, the child key the PSBT names, its path from the
/// master, and the signature hash to sign.
#[derive(Debug, Clone)]
pub(crate) struct Signable {
    pub index: usize,
    pub public: bitcoin::secp256k1::PublicKey,
    pub path: Vec<u32>,
    pub digest: [u8; 32],
    pub sighash_type: EcdsaSighashType,
}

/// Every signature the PSBT asks of the master with `fingerprint`. Taproot inputs are refused.
pub(crate) fn signables(psbt: &Psbt, fingerprint: Fingerprint) -> Result<Vec<Signable>, String> {
    let tx = psbt.unsigned_tx.clone();
    let mut cache = SighashCache::new(&tx);
    let mut out = Vec::new();
    for (index, input) in psbt.inputs.iter().enumerate() {
        let ours: Vec<_> = input
            .bip32_derivation
            .iter()
            .filter(|(_, (fp, _))| *fp == fingerprint)
            .map(|(public, (_, path))| (*public, path.clone()))
            .collect();
        for (public, path) in ours {
            let sighash_type = match input.sighash_type {
                None => EcdsaSighashType::All,
                Some(t) => t
                    .ecdsa_hash_ty()
                    .map_err(|e| format!("input {index}: {e}"))?,
            };
            let digest: [u8; 32] = match (
                &input.witness_script,
                input.witness_utxo.as_ref(),
                &input.redeem_script,
            ) {
                (Some(script), Some(utxo), _) => cache
                    .p2wsh_signature_hash(index, script, utxo.value, sighash_type)
                    .map_err(|e| format!("input {index}: {e}"))?
                    .to_byte_array(),
                (None, Some(utxo), _) if utxo.script_pubkey.is_p2wpkh() => cache
                    .p2wpkh_signature_hash(index, &utxo.script_pubkey, utxo.value, sighash_type)
                    .map_err(|e| format!("input {index}: {e}"))?
                    .to_byte_array(),
                (None, None, Some(script)) => cache
                    .legacy_signature_hash(index, script, sighash_type.to_u32())
                    .map_err(|e| format!("input {index}: {e}"))?
                    .to_byte_array(),
                _ => {
                    return Err(format!(
                        "input {index}: only P2SH, P2SH-P2WSH, P2WSH and P2WPKH inputs are signed \
                         (taproot is not)"
                    ))
                }
            };
            out.push(Signable {
                index,
                public,
                path: path.into_iter().map(|c| u32::from(*c)).collect(),
                digest,
                sighash_type,
            });
        }
    }
    if out.is_empty() {
        return Err("no input of the PSBT names this key in its BIP32 derivations".into());
    }
    Ok(out)
}

/// Adds a partial signature (DER, already verified under `signable.public`) to its input.
pub(crate) fn add_signature(
    psbt: &mut Psbt,
    signable: &Signable,
    der: &[u8],
) -> Result<(), String> {
    let signature = bitcoin::ecdsa::Signature {
        signature: bitcoin::secp256k1::ecdsa::Signature::from_der(der)
            .map_err(|e| e.to_string())?,
        sighash_type: signable.sighash_type,
    };
    psbt.inputs
        .get_mut(signable.index)
        .ok_or("input index")?
        .partial_sigs
        .insert(bitcoin::PublicKey::new(signable.public), signature);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utxo_coins() {
        assert!(is_utxo("btc") && is_utxo("tbtc") && is_utxo("tbtc4") && is_utxo("ltc"));
        assert!(!is_utxo("eth") && !is_utxo("hteth") && !is_utxo("sol") && !is_utxo("tsol"));
    }

    /// Known answer: BIP32 test vector 1's master public key and chain code give its `xpub` and
    /// fingerprint 3442193e.
    #[test]
    fn xpub_and_fingerprint_match_bip32_test_vector_1() {
        let xpub_text = "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8";
        let parsed: Xpub = xpub_text.parse().unwrap();
        let uncompressed = parsed.public_key.serialize_uncompressed();
        assert_eq!(
            xpub(&uncompressed, parsed.chain_code.to_bytes()).unwrap(),
            xpub_text
        );
        assert_eq!(fingerprint(&uncompressed).unwrap().to_string(), "3442193e");
        assert!(signables(
            &Psbt::deserialize(&[]).unwrap_or_else(|_| empty_psbt()),
            Fingerprint::default()
        )
        .is_err());
    }

    fn empty_psbt() -> Psbt {
        Psbt::from_unsigned_tx(bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        })
        .unwrap()
    }
}

//! BitGo's UTXO flow (BTC, LTC, ...): BIP32 master keys, shown as an `xpub`, and PSBT signing.
//!
//! A UTXO wallet key is a BIP32 master: `POST /key/generate` makes one from 32 random bytes, seals its
//! `xprv` with the provider like any stored key, and answers the `xpub`. `POST /sign` with a PSBT signs
//! every input whose BIP32 derivations name this master's fingerprint: the child key is derived along the
//! recorded path (it must give the recorded public key), the BIP143 (P2WSH, P2SH-P2WSH, P2WPKH) or legacy
//! (P2SH) signature hash is computed, and the signature, made and verified with RustCrypto's secp256k1, is
//! added as a partial signature. Taproot inputs are refused. The `bitcoin` crate parses and writes the
//! PSBT, derives the BIP32 children and computes the signature hashes.

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::hashes::Hash as _;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use custos_types::{Algorithm, PrivateKey, SignPayload, SignatureFormat};
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

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

/// A fresh BIP32 master: its `xprv` (zeroized on drop) and `xpub`.
pub(crate) fn new_master() -> Result<(Zeroizing<String>, String), String> {
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    let xprv =
        Xpriv::new_master(bitcoin::NetworkKind::Main, seed.as_ref()).map_err(|e| e.to_string())?;
    let xpub = Xpub::from_priv(&Secp256k1::new(), &xprv);
    Ok((Zeroizing::new(xprv.to_string()), xpub.to_string()))
}

/// Signs the inputs of `psbt` that belong to the BIP32 master `xprv`; the PSBT with the partial
/// signatures added.
pub(crate) fn sign_psbt(xprv: &str, psbt: &[u8]) -> Result<Vec<u8>, String> {
    let xprv: Xpriv = xprv
        .trim()
        .parse()
        .map_err(|_| "the stored key is not a BIP32 xprv".to_owned())?;
    let secp = Secp256k1::new();
    let fingerprint = xprv.fingerprint(&secp);
    let mut psbt = Psbt::deserialize(psbt).map_err(|e| format!("not a valid PSBT: {e}"))?;
    let tx = psbt.unsigned_tx.clone();
    let mut cache = SighashCache::new(&tx);
    let mut signed = 0;
    for (index, input) in psbt.inputs.iter_mut().enumerate() {
        let ours: Vec<_> = input
            .bip32_derivation
            .iter()
            .filter(|(_, (fp, _))| *fp == fingerprint)
            .map(|(public, (_, path))| (*public, path.clone()))
            .collect();
        for (public, path) in ours {
            let child = xprv
                .derive_priv(&secp, &path)
                .map_err(|e| format!("input {index}: cannot derive {path}: {e}"))?;
            if child.private_key.public_key(&secp) != public {
                return Err(format!(
                    "input {index}: the key derived along {path} is not the one the PSBT names"
                ));
            }
            let sighash_type = match input.sighash_type {
                None => EcdsaSighashType::All,
                Some(t) => t
                    .ecdsa_hash_ty()
                    .map_err(|e| format!("input {index}: {e}"))?,
            };
            let witness_utxo = input.witness_utxo.as_ref();
            let digest: [u8; 32] = match (&input.witness_script, witness_utxo, &input.redeem_script)
            {
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
            let secret = Zeroizing::new(child.private_key.secret_bytes());
            let key = PrivateKey::from_secret(Algorithm::Secp256k1, secret.as_ref())
                .map_err(|e| e.to_string())?;
            let payload = SignPayload::Digest(digest);
            let raw = key.sign(&payload).map_err(|e| e.to_string())?;
            let signature = key
                .public_key()
                .verify(&payload, &raw, SignatureFormat::Raw)
                .map_err(|e| e.to_string())?;
            let der = signature
                .encode(SignatureFormat::Der)
                .map_err(|e| e.to_string())?;
            let signature = bitcoin::ecdsa::Signature {
                signature: bitcoin::secp256k1::ecdsa::Signature::from_der(&der)
                    .map_err(|e| e.to_string())?,
                sighash_type,
            };
            input
                .partial_sigs
                .insert(bitcoin::PublicKey::new(public), signature);
            signed += 1;
        }
    }
    if signed == 0 {
        return Err("no input of the PSBT names this key in its BIP32 derivations".into());
    }
    Ok(psbt.serialize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utxo_coins_and_masters() {
        assert!(is_utxo("btc") && is_utxo("tbtc") && is_utxo("tbtc4") && is_utxo("ltc"));
        assert!(!is_utxo("eth") && !is_utxo("hteth") && !is_utxo("sol") && !is_utxo("tsol"));
        let (xprv, xpub) = new_master().unwrap();
        assert!(xprv.starts_with("xprv") && xpub.starts_with("xpub"));
        assert!(sign_psbt(&xprv, b"not a psbt").is_err());
        assert!(sign_psbt("nope", b"psbt\xff").is_err());
    }
}

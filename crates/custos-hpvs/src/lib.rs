//! IBM Hyper Protect Virtual Servers (HPVS) contracts: the `hyper-protect-basic` section encryption and
//! the contract signature, interoperable with IBM's documented openssl commands.
//!
//! A section is `hyper-protect-basic.<base64 RSA-PKCS#1-v1.5(password)>.<base64 openssl-enc(payload)>`:
//! a random 32-byte password wrapped with the public key of IBM's contract encryption certificate, and the
//! payload encrypted as `openssl enc -aes-256-cbc -pbkdf2 -pass stdin` does (`Salted__`, an 8-byte salt,
//! PBKDF2-HMAC-SHA256 with 10,000 iterations into key and IV, PKCS#7 padding). `-pass stdin` stops at the
//! first newline or NUL byte, so Custos never puts those bytes in a password it makes, and when it decrypts
//! it uses the password exactly as openssl would have read it. `envWorkloadSignature` is RSA PKCS#1 v1.5
//! over SHA-256 of the encrypted workload followed by the encrypted env.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut as _, BlockEncryptMut as _, KeyIvInit as _};
use base64::Engine as _;
use rand_core::{OsRng, RngCore as _};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use x509_cert::der::{DecodePem as _, Encode as _};
use zeroize::Zeroizing;

const PREFIX: &str = "hyper-protect-basic";
const PBKDF2_ROUNDS: u32 = 10_000;

/// Why a contract could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HpvsError {
    /// A key or certificate file that does not parse (caller's fault).
    #[error("{0}")]
    BadKey(String),
    /// A blob that is not `hyper-protect-basic.<password>.<payload>` (caller's fault).
    #[error("not a hyper-protect-basic blob: {0}")]
    BadBlob(&'static str),
    /// The blob does not decrypt with this key (wrong key, or damaged).
    #[error("the blob does not decrypt with this key")]
    Decrypt,
    /// An input YAML lacks what HPVS requires (caller's fault).
    #[error("{0}")]
    Invalid(String),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str, what: &'static str) -> Result<Vec<u8>, HpvsError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| HpvsError::BadBlob(what))
}

/// The public key of IBM's contract encryption certificate (PEM).
pub fn certificate_public_key(pem: &str) -> Result<RsaPublicKey, HpvsError> {
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
        .map_err(|e| HpvsError::BadKey(format!("not a PEM X.509 certificate: {e}")))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| HpvsError::BadKey(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| HpvsError::BadKey(format!("the certificate's key is not RSA: {e}")))
}

/// An RSA private key from PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn private_key(pem: &str) -> Result<RsaPrivateKey, HpvsError> {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| HpvsError::BadKey(format!("not a PEM RSA private key: {e}")))
}

/// The password as `openssl enc -pass stdin` reads it: up to the first newline, then up to the first NUL.
pub fn openssl_stdin_password(bytes: &[u8]) -> &[u8] {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.split(|b| *b == 0).next().unwrap_or_default()
}

fn derive(password: &[u8], salt: &[u8]) -> Zeroizing<[u8; 48]> {
    let mut key_iv = Zeroizing::new([0u8; 48]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, PBKDF2_ROUNDS, key_iv.as_mut_slice());
    key_iv
}

/// `openssl enc -aes-256-cbc -pbkdf2 -salt`.
fn openssl_encrypt(password: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut salt = [0u8; 8];
    OsRng.fill_bytes(&mut salt);
    let key_iv = derive(password, &salt);
    let cipher = cbc::Encryptor::<aes::Aes256>::new(key_iv[..32].into(), key_iv[32..].into());
    let mut out = b"Salted__".to_vec();
    out.extend_from_slice(&salt);
    out.extend(cipher.encrypt_padded_vec_mut::<Pkcs7>(plaintext));
    out
}

/// `openssl enc -d -aes-256-cbc -pbkdf2`.
fn openssl_decrypt(password: &[u8], data: &[u8]) -> Result<Vec<u8>, HpvsError> {
    let rest = data
        .strip_prefix(b"Salted__")
        .ok_or(HpvsError::BadBlob("payload lacks the Salted__ header"))?;
    if rest.len() < 8 {
        return Err(HpvsError::BadBlob("payload too short"));
    }
    let (salt, ciphertext) = rest.split_at(8);
    let key_iv = derive(password, salt);
    let cipher = cbc::Decryptor::<aes::Aes256>::new(key_iv[..32].into(), key_iv[32..].into());
    cipher
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| HpvsError::Decrypt)
}

/// A fresh 32-byte password without the bytes that `-pass stdin` would stop at.
fn password() -> Zeroizing<[u8; 32]> {
    let mut password = Zeroizing::new([0u8; 32]);
    for byte in password.iter_mut() {
        loop {
            let mut candidate = [0u8; 1];
            OsRng.fill_bytes(&mut candidate);
            if !matches!(candidate[0], 0x00 | b'\n' | b'\r') {
                *byte = candidate[0];
                break;
            }
        }
    }
    password
}

/// Encrypts one contract section for the certificate's key.
pub fn encrypt_section(
    plaintext: &[u8],
    encryption_key: &RsaPublicKey,
) -> Result<String, HpvsError> {
    let password = password();
    let wrapped = encryption_key
        .encrypt(&mut OsRng, Pkcs1v15Encrypt, password.as_slice())
        .map_err(|e| HpvsError::BadKey(format!("RSA encryption failed: {e}")))?;
    let payload = openssl_encrypt(password.as_slice(), plaintext);
    Ok(format!("{PREFIX}.{}.{}", b64(&wrapped), b64(&payload)))
}

/// Decrypts a `hyper-protect-basic` blob (a contract section, or the attestation record HPVS writes).
pub fn decrypt_section(blob: &str, key: &RsaPrivateKey) -> Result<Vec<u8>, HpvsError> {
    let mut parts = blob.trim().split('.');
    if parts.next() != Some(PREFIX) {
        return Err(HpvsError::BadBlob(
            "it does not start with hyper-protect-basic.",
        ));
    }
    let (Some(password), Some(payload), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HpvsError::BadBlob(
            "expected hyper-protect-basic.<password>.<payload>",
        ));
    };
    let wrapped = unb64(password, "the password part is not base64")?;
    let payload = unb64(payload, "the payload part is not base64")?;
    let password = pkcs1_decrypt(key, &wrapped)?;
    openssl_decrypt(openssl_stdin_password(&password), &payload)
}

/// RSA PKCS#1 v1.5 decryption with `aws-lc-rs`, which is constant-time (the `rsa` crate's is not:
/// RUSTSEC-2023-0071); every failure is the same error.
fn pkcs1_decrypt(key: &RsaPrivateKey, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, HpvsError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| HpvsError::BadKey(format!("cannot encode the RSA key: {e}")))?;
    let key = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der.as_bytes())
        .map_err(|e| HpvsError::BadKey(format!("the RSA key is not usable: {e}")))?;
    let key =
        aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(key).map_err(|_| HpvsError::Decrypt)?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let len = key
        .decrypt(ciphertext, &mut out)
        .map_err(|_| HpvsError::Decrypt)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// `envWorkloadSignature`: base64 RSA PKCS#1 v1.5 / SHA-256 over the encrypted workload then the env.
pub fn sign(workload: &str, env: &str, key: &RsaPrivateKey) -> String {
    let signer = SigningKey::<Sha256>::new(key.clone());
    let signature = signer.sign([workload, env].concat().as_bytes());
    b64(&signature.to_bytes())
}

/// Checks `envWorkloadSignature` against the signing public key.
pub fn verify(
    workload: &str,
    env: &str,
    signature: &str,
    key: &RsaPublicKey,
) -> Result<(), HpvsError> {
    let bytes = unb64(signature, "the signature is not base64")?;
    let signature = Signature::try_from(bytes.as_slice())
        .map_err(|_| HpvsError::BadBlob("not an RSA signature"))?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify([workload, env].concat().as_bytes(), &signature)
        .map_err(|_| HpvsError::Invalid("envWorkloadSignature does not verify".into()))
}

/// A contract ready for HPVS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The encrypted workload section.
    pub workload: String,
    /// The encrypted env section (it carries the signing public key).
    pub env: String,
    /// The signature over both.
    pub env_workload_signature: String,
}

impl Contract {
    /// The contract as YAML, as HPVS reads it.
    pub fn to_yaml(&self) -> String {
        format!(
            "workload: {}\nenv: {}\nenvWorkloadSignature: {}\n",
            self.workload, self.env, self.env_workload_signature
        )
    }
}

fn has_top_level(yaml: &str, key: &str) -> bool {
    yaml.lines()
        .any(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with(':'))
}

fn top_level_value<'a>(yaml: &'a str, key: &str) -> Option<&'a str> {
    yaml.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with(':'))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\''))
}

/// A data volume HPVS mounts and encrypts with a passphrase made from the workload and env seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume's name (the disk HPVS attaches).
    pub name: String,
    /// Where HPVS mounts it (for example `/mnt/data`).
    pub mount: String,
    /// The workload's part of the volume passphrase.
    pub seed: String,
}

fn yaml_string(text: &str) -> String {
    // A double-quoted YAML scalar: escape backslashes and quotes; refuse line breaks.
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn check_plain(what: &str, text: &str) -> Result<(), HpvsError> {
    if text.is_empty() || text.chars().any(|c| c.is_control()) {
        return Err(HpvsError::Invalid(format!(
            "{what} must be non-empty, on one line"
        )));
    }
    Ok(())
}

/// The workload section for a compose file: its archive (tar.gz with the file as `docker-compose.yml`,
/// base64) and the volumes HPVS should mount.
pub fn compose_workload(compose: &[u8], volumes: &[Volume]) -> Result<String, HpvsError> {
    let mut archive = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut archive, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(compose.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "docker-compose.yml", compose)
            .and_then(|_| tar.into_inner())
            .and_then(|gz| gz.finish())
            .map_err(|e| HpvsError::Invalid(format!("cannot archive the compose file: {e}")))?;
    }
    let mut workload = format!("type: workload\ncompose:\n  archive: {}\n", b64(&archive));
    if !volumes.is_empty() {
        workload.push_str("volumes:\n");
        for v in volumes {
            check_plain("a volume name", &v.name)?;
            check_plain("a volume mount", &v.mount)?;
            check_plain("a volume seed", &v.seed)?;
            workload.push_str(&format!(
                "  {}:\n    filesystem: \"ext4\"\n    mount: {}\n    seed: {}\n",
                v.name,
                yaml_string(&v.mount),
                yaml_string(&v.seed)
            ));
        }
    }
    Ok(workload)
}

/// An env section from settings: a syslog target (`host:port`) and the env parts of volume seeds.
pub fn env_section(syslog: &str, seeds: &[(String, String)]) -> Result<String, HpvsError> {
    let (host, port) = syslog
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| HpvsError::Invalid(format!("--syslog must be HOST:PORT, not {syslog:?}")))?;
    check_plain("the syslog host", host)?;
    let mut env = format!(
        "type: env\nlogging:\n  syslog:\n    hostname: {}\n    port: {port}\n",
        yaml_string(host)
    );
    if !seeds.is_empty() {
        env.push_str("volumes:\n");
        for (name, seed) in seeds {
            check_plain("a volume name", name)?;
            check_plain("a volume seed", seed)?;
            env.push_str(&format!("  {name}:\n    seed: {}\n", yaml_string(seed)));
        }
    }
    Ok(env)
}

/// Builds a contract from a prepared workload YAML and env YAML: checks what HPVS requires, adds the
/// signing public key to the env, encrypts both sections for the certificate's key, and signs them.
pub fn build_contract(
    workload_yaml: &str,
    env_yaml: &str,
    encryption_key: &RsaPublicKey,
    signing_key: &RsaPrivateKey,
) -> Result<Contract, HpvsError> {
    if top_level_value(workload_yaml, "type") != Some("workload") {
        return Err(HpvsError::Invalid(
            "the workload YAML needs `type: workload` at the top level".into(),
        ));
    }
    if !["compose", "play", "auths", "volumes"]
        .iter()
        .any(|k| has_top_level(workload_yaml, k))
    {
        return Err(HpvsError::Invalid(
            "the workload YAML needs a `compose:` or `play:` section".into(),
        ));
    }
    if top_level_value(env_yaml, "type") != Some("env") {
        return Err(HpvsError::Invalid(
            "the env YAML needs `type: env` at the top level".into(),
        ));
    }
    if !has_top_level(env_yaml, "logging") {
        return Err(HpvsError::Invalid(
            "the env YAML needs a `logging:` section (HPVS requires a log target)".into(),
        ));
    }
    if has_top_level(env_yaml, "signingKey") {
        return Err(HpvsError::Invalid(
            "the env YAML already has a signingKey; Custos adds it from --signing-key".into(),
        ));
    }
    let public = signing_key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| HpvsError::BadKey(e.to_string()))?;
    let mut env = env_yaml.trim_end().to_owned();
    env.push_str("\nsigningKey: |\n");
    for line in public.lines() {
        env.push_str("  ");
        env.push_str(line);
        env.push('\n');
    }
    let workload = encrypt_section(workload_yaml.as_bytes(), encryption_key)?;
    let env = encrypt_section(env.as_bytes(), encryption_key)?;
    let env_workload_signature = sign(&workload, &env, signing_key);
    Ok(Contract {
        workload,
        env,
        env_workload_signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_hold_stop_bytes_and_stdin_semantics_match_openssl() {
        for _ in 0..200 {
            let p = password();
            assert!(!p.iter().any(|b| matches!(b, 0 | b'\n' | b'\r')));
            assert_eq!(openssl_stdin_password(p.as_slice()), p.as_slice());
        }
        assert_eq!(openssl_stdin_password(b"ab\ncd"), b"ab");
        assert_eq!(openssl_stdin_password(b"ab\0cd\nef"), b"ab");
        assert_eq!(openssl_stdin_password(b"\nab"), b"");
    }

    #[test]
    fn sections_from_settings_are_valid_and_refuse_bad_input() {
        let volumes = [Volume {
            name: "data".into(),
            mount: "/mnt/data".into(),
            seed: "wl \"seed\"".into(),
        }];
        let workload = compose_workload(b"services: {}\n", &volumes).unwrap();
        assert!(
            workload.starts_with("type: workload\ncompose:\n  archive: H4sI"),
            "{workload}"
        );
        assert!(
            workload.contains("    mount: \"/mnt/data\"\n    seed: \"wl \\\"seed\\\"\"\n"),
            "{workload}"
        );
        let env = env_section("logs.example:6514", &[("data".into(), "env seed".into())]).unwrap();
        assert_eq!(env, "type: env\nlogging:\n  syslog:\n    hostname: \"logs.example\"\n    port: 6514\nvolumes:\n  data:\n    seed: \"env seed\"\n");
        assert!(env_section("no-port", &[]).is_err());
        assert!(compose_workload(
            b"x",
            &[Volume {
                name: "d".into(),
                mount: "/m".into(),
                seed: "a\nb".into()
            }]
        )
        .is_err());
    }

    #[test]
    fn openssl_enc_round_trips_and_refuses_a_wrong_password() {
        let data = openssl_encrypt(b"pw", b"type: workload\n");
        assert!(data.starts_with(b"Salted__"));
        assert_eq!(openssl_decrypt(b"pw", &data).unwrap(), b"type: workload\n");
        assert!(openssl_decrypt(b"other", &data).is_err());
        assert!(openssl_decrypt(b"pw", b"garbage").is_err());
    }
}

//! Interoperability with IBM's documented openssl commands, in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::path::Path;
use std::process::Command;

use rand_core::{OsRng, RngCore as _};

use custos_hpvs::{
    build_contract, certificate_public_key, decrypt_section, encrypt_section, private_key, verify,
};

/// Runs a bash script in `dir` and returns its standard output.
fn bash(dir: &Path, script: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An RSA key pair with a self-signed certificate, standing in for IBM's contract encryption certificate.
fn keys(dir: &Path) {
    bash(
        dir,
        "openssl req -x509 -newkey rsa:4096 -nodes -days 1 -subj /CN=hpvs-contract-encryption \
         -keyout encrypt.key -out encrypt.crt 2>/dev/null && \
         openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out sign.key 2>/dev/null && \
         openssl pkey -in sign.key -pubout -out sign.pub",
    );
}

const WORKLOAD: &str =
    "type: workload\ncompose:\n  archive: H4sIAAAAAAAAA+3OMQ6CQBCF4T3KHoGwJcRpY2dsDV5ARCIF4AAD//\n";

#[test]
fn openssl_decrypts_what_custos_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let cert =
        certificate_public_key(&std::fs::read_to_string(dir.path().join("encrypt.crt")).unwrap())
            .unwrap();
    let blob = encrypt_section(WORKLOAD.as_bytes(), &cert).unwrap();
    let mut parts = blob.split('.');
    assert_eq!(parts.next(), Some("hyper-protect-basic"));
    std::fs::write(dir.path().join("password.b64"), parts.next().unwrap()).unwrap();
    std::fs::write(dir.path().join("payload.b64"), parts.next().unwrap()).unwrap();
    // IBM's documented decryption: unwrap the password with the private key, then openssl enc -d.
    let plaintext = bash(
        dir.path(),
        "base64 -d password.b64 | openssl pkeyutl -decrypt -inkey encrypt.key > password.bin && \
         base64 -d payload.b64 > payload.bin && \
         openssl aes-256-cbc -d -pbkdf2 -pass stdin -in payload.bin < password.bin",
    );
    assert_eq!(String::from_utf8(plaintext).unwrap(), WORKLOAD);
}

#[test]
fn custos_decrypts_what_ibms_openssl_commands_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    std::fs::write(dir.path().join("workload.yaml"), WORKLOAD).unwrap();
    let key =
        private_key(&std::fs::read_to_string(dir.path().join("encrypt.key")).unwrap()).unwrap();
    // IBM's documented commands, with a raw random password. Some passwords contain a newline or NUL, where
    // `-pass stdin` stops reading; Custos must decrypt those exactly as openssl encrypted them. A password
    // whose first byte is NUL makes IBM's own `openssl enc` fail ("Error reading password"), so the random
    // rounds avoid that one case; the fixed rounds put the stop bytes where openssl still works.
    let mut passwords: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            let mut p = [0u8; 32];
            OsRng.fill_bytes(&mut p);
            p[0] |= 1;
            p.to_vec()
        })
        .collect();
    passwords.push(b"abc\ndefghijklmnopqrstuvwxyz012345".to_vec());
    passwords.push(b"abc\0defghijklmnopqrstuvwxyz012345".to_vec());
    passwords.push(b"\nbcdefghijklmnopqrstuvwxyz0123456".to_vec());
    for password in passwords {
        std::fs::write(dir.path().join("password.bin"), &password).unwrap();
        let blob = bash(
            dir.path(),
            r#"set -o pipefail
               ENCRYPTED_PASSWORD="$(openssl pkeyutl -encrypt -certin -inkey encrypt.crt -in password.bin | base64 -w0)" || exit 1
               ENCRYPTED_WORKLOAD="$(openssl enc -aes-256-cbc -pbkdf2 -pass stdin -in workload.yaml < password.bin | base64 -w0)" || exit 1
               echo -n "hyper-protect-basic.${ENCRYPTED_PASSWORD}.${ENCRYPTED_WORKLOAD}""#,
        );
        let plaintext = decrypt_section(&String::from_utf8(blob).unwrap(), &key)
            .unwrap_or_else(|e| panic!("password {password:02x?}: {e}"));
        assert_eq!(String::from_utf8(plaintext).unwrap(), WORKLOAD);
    }
    // Another key does not decrypt it, and garbage is refused with a clear error.
    let other =
        private_key(&std::fs::read_to_string(dir.path().join("sign.key")).unwrap()).unwrap();
    let blob = encrypt_section(
        b"x",
        &certificate_public_key(&std::fs::read_to_string(dir.path().join("encrypt.crt")).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(decrypt_section(&blob, &other).is_err());
    assert!(decrypt_section("hyper-protect-basic.only-two", &key).is_err());
    assert!(decrypt_section("something-else.a.b", &key).is_err());
}

#[test]
fn contracts_are_signed_as_openssl_dgst_verifies() {
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let cert = certificate_public_key(&read("encrypt.crt")).unwrap();
    let signing = private_key(&read("sign.key")).unwrap();
    let env = "type: env\nlogging:\n  syslog:\n    hostname: logs.example\n    port: 6514\nvolumes:\n  data:\n    seed: \"custos volume seed\"\n";
    let contract = build_contract(WORKLOAD, env, &cert, &signing).unwrap();
    // The signature is over the encrypted workload followed by the encrypted env.
    std::fs::write(
        dir.path().join("signed.txt"),
        format!("{}{}", contract.workload, contract.env),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("signature.b64"),
        &contract.env_workload_signature,
    )
    .unwrap();
    bash(dir.path(), "base64 -d signature.b64 > signature.bin && openssl dgst -sha256 -verify sign.pub -signature signature.bin signed.txt");
    verify(
        &contract.workload,
        &contract.env,
        &contract.env_workload_signature,
        &signing.to_public_key(),
    )
    .unwrap();
    // The env carries the signing public key; the workload is unchanged.
    let key = private_key(&read("encrypt.key")).unwrap();
    let env_plain = String::from_utf8(decrypt_section(&contract.env, &key).unwrap()).unwrap();
    assert!(
        env_plain.contains("signingKey: |\n  -----BEGIN PUBLIC KEY-----"),
        "{env_plain}"
    );
    assert_eq!(
        decrypt_section(&contract.workload, &key).unwrap(),
        WORKLOAD.as_bytes()
    );
    let yaml = contract.to_yaml();
    assert!(
        yaml.starts_with("workload: hyper-protect-basic.")
            && yaml.contains("\nenvWorkloadSignature: ")
    );
    // Missing required fields are clear errors.
    for (workload, env, expect) in [
        ("compose: {}\n", env, "type: workload"),
        (WORKLOAD, "logging: {}\n", "type: env"),
        (WORKLOAD, "type: env\n", "logging"),
        (
            WORKLOAD,
            "type: env\nlogging: {}\nsigningKey: x\n",
            "signingKey",
        ),
    ] {
        let err = build_contract(workload, env, &cert, &signing)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{err}");
    }
}

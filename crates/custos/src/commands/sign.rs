//! `custos sign` and `custos verify`.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use custos_api::{b64, SignRequestBody, SignResponse, VerifyRequestBody, VerifyResponse};
use reqwest::Method;

use super::{connect, print_json};
use crate::cli::{Conn, InputArgs, SignOptions};

/// The request body for what the user gave: the input (base64-encoded) and the options.
fn sign_body(input: &InputArgs, options: SignOptions) -> anyhow::Result<SignRequestBody> {
    let mut body = SignRequestBody {
        hash: options.hash,
        version: options.version,
        format: options.format,
        ..SignRequestBody::default()
    };
    if let Some(path) = &input.message_file {
        let mut bytes = Vec::new();
        if path.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut bytes)?;
        } else {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        body.message = Some(b64::encode(bytes));
    } else if let Some(text) = &input.message {
        body.message = Some(b64::encode(text.as_bytes()));
    } else if let Some(hex_digest) = &input.digest_hex {
        let bytes =
            hex::decode(hex_digest.trim_start_matches("0x")).context("--digest-hex is not hex")?;
        body.digest = Some(b64::encode(bytes));
    }
    Ok(body)
}

pub async fn sign(
    name: String,
    input: InputArgs,
    options: SignOptions,
    sequence: Option<u64>,
    conn: Conn,
) -> anyhow::Result<ExitCode> {
    let body = SignRequestBody {
        sequence,
        ..sign_body(&input, options)?
    };
    let r: SignResponse = connect(&conn)?
        .call(Method::POST, &format!("/v1/keys/{name}/sign"), Some(&body))
        .await?;
    if conn.json {
        print_json(&r)?;
    } else {
        out!("signature    {}", r.signature);
        out!("format       {}", r.format);
        out!("key          {} version {}", r.key, r.version);
        out!("provider     {}", r.provider);
        if let Some(id) = r.recovery_id {
            out!("recovery_id  {id}");
        }
        if let Some(key) = &r.emergency_public_key {
            out!("EMERGENCY    every provider failed; signed by an emergency key, NOT this key");
            out!("emergency_public_key  {}", key.raw);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(
    name: String,
    input: InputArgs,
    signature: String,
    options: SignOptions,
    conn: Conn,
) -> anyhow::Result<ExitCode> {
    let signed = sign_body(&input, options)?;
    let body = VerifyRequestBody {
        message: signed.message,
        digest: signed.digest,
        hash: signed.hash,
        signature,
        format: signed.format,
        version: signed.version,
    };
    let r: VerifyResponse = connect(&conn)?
        .call(
            Method::POST,
            &format!("/v1/keys/{name}/verify"),
            Some(&body),
        )
        .await?;
    if conn.json {
        print_json(&r)?;
    } else if let (true, Some(v)) = (r.valid, r.version) {
        out!("valid (key {name} version {v})");
    } else {
        out!("INVALID: the signature does not verify under any usable version of {name}");
    }
    Ok(if r.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

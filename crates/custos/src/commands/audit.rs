//! `custos audit`: export, verify (offline), query, and the audit public key.

use std::process::ExitCode;

use anyhow::Context as _;
use custos_api::b64;
use reqwest::Method;

use super::{connect, print_json};
use crate::cli::AuditCommand;

pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export { output, conn } => {
            let text = connect(&conn)?
                .text(Method::GET, "/v1/audit/export")
                .await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {} lines to {}", text.lines().count(), path.display());
                }
                None => out!("{}", text.trim_end()),
            }
        }
        AuditCommand::Verify { file, public_key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let key = audit_public_key(&public_key)?;
            match custos_audit::verify_export(&text, &key) {
                Ok(report) => out!(
                    "OK: {} records and {} checkpoints; the chain is intact and sealed up to record {}",
                    report.records,
                    report.checkpoints,
                    report.last_seq
                ),
                Err(failure) => {
                    out!("TAMPERED: {failure}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        AuditCommand::Query {
            from,
            to,
            key,
            operation,
            actor,
            outcome,
            limit,
            conn,
        } => {
            let params = custos_api::AuditQueryParams {
                from,
                to,
                key,
                operation,
                actor,
                outcome,
                after: None,
                limit: Some(limit),
            };
            let page: custos_api::AuditPage =
                connect(&conn)?.get_query("/v1/audit", &params).await?;
            if conn.json {
                print_json(&page)?;
            } else {
                for r in &page.records {
                    let actor = r
                        .entry
                        .actor
                        .as_ref()
                        .and_then(|a| a.token_name.clone())
                        .unwrap_or_else(|| "-".into());
                    out!(
                        "{:>6} {} {:<12} {:<8} {:<16} key={} v={} {}",
                        r.seq,
                        r.time,
                        r.entry.operation,
                        r.entry.outcome.as_str(),
                        actor,
                        r.entry.key.as_deref().unwrap_or("-"),
                        r.entry
                            .version
                            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                        r.entry.error_code.as_deref().unwrap_or("")
                    );
                }
            }
        }
        AuditCommand::Key { conn } => {
            let key: custos_api::AuditKeyResponse = connect(&conn)?
                .call(Method::GET, "/v1/audit/key", None::<&()>)
                .await?;
            if conn.json {
                print_json(&key)?;
            } else {
                out!("{}", key.public_key);
                out!("{}", key.pem.trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit public key from base64 (raw Ed25519), PEM text, or a PEM file.
fn audit_public_key(text: &str) -> anyhow::Result<custos_types::PublicKey> {
    use custos_types::{Algorithm, PublicKey};
    if let Some(bytes) = b64::decode(text.trim()) {
        return PublicKey::from_bytes(Algorithm::Ed25519, &bytes)
            .context("--public-key is not an Ed25519 public key");
    }
    let pem = if text.contains("-----BEGIN") {
        text.to_owned()
    } else {
        std::fs::read_to_string(text).with_context(|| {
            format!("--public-key: not base64 and not a readable PEM file: {text}")
        })?
    };
    PublicKey::from_spki_pem(Algorithm::Ed25519, &pem)
        .context("--public-key is not an Ed25519 PEM public key")
}

//! `custos token`: issue, list, revoke, and recover admin access offline.

use std::process::ExitCode;

use custos_api::{CreateTokenRequest, CreateTokenResponse, TokenList, TokenView};
use custos_core::RequestContext;
use reqwest::Method;
use secrecy::ExposeSecret as _;

use super::{connect, print_json};
use crate::cli::TokenCommand;
use crate::server;

pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::List { conn } => {
            let list: TokenList = connect(&conn)?
                .call(Method::GET, "/v1/tokens", None::<&()>)
                .await?;
            if conn.json {
                print_json(&list)?;
            } else {
                for t in &list.tokens {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let used = t
                        .last_used_at
                        .map_or_else(|| "never".to_owned(), |t| t.to_string());
                    out!(
                        "{:<18} {:<16} {:<8} last used {:<32} {}",
                        t.id,
                        t.name,
                        state,
                        used,
                        t.scopes.join(" ")
                    );
                }
            }
        }
        TokenCommand::Revoke { id, conn } => {
            let t: TokenView = connect(&conn)?
                .call(
                    Method::POST,
                    &format!("/v1/tokens/{id}/revoke"),
                    None::<&()>,
                )
                .await?;
            if conn.json {
                print_json(&t)?;
            } else {
                out!("revoked token {} ({})", t.id, t.name);
            }
        }
        TokenCommand::Create {
            name,
            scopes,
            expires_in,
            aws,
            conn,
        } => {
            let body = CreateTokenRequest {
                name,
                scopes,
                expires_in_seconds: expires_in,
                aws,
            };
            let r: CreateTokenResponse = connect(&conn)?
                .call(Method::POST, "/v1/tokens", Some(&body))
                .await?;
            if conn.json {
                print_json(&r)?;
            } else {
                out!("token   {}", r.token);
                out!("id      {}", r.id);
                out!("scopes  {}", r.scopes.join(" "));
                if let Some(at) = r.expires_at {
                    out!("expires {at}");
                }
                out!("(shown once: Custos keeps only a hash)");
                if let (Some(id), Some(secret)) = (&r.aws_access_key_id, &r.aws_secret_access_key) {
                    out!();
                    out!(
                        "For the KMS-compatible API (shown once; kept sealed by the key provider):"
                    );
                    out!("  export AWS_ACCESS_KEY_ID={id}");
                    out!("  export AWS_SECRET_ACCESS_KEY={secret}");
                    out!("  aws kms list-keys --endpoint-url <the Custos address> --region <kms_api.region>");
                }
            }
        }
        TokenCommand::Recover {
            config,
            data_dir,
            name,
        } => {
            let config = super::serve::load(config, data_dir)?;
            let password = config.master_password.read()?;
            let opened = server::open(&config, &password, server::Create::No).await?;
            let ctx = RequestContext::system("token-recover");
            let issued = opened.access.recover(&ctx, &name).await?;
            out!(
                "Issued a new admin token for {} (recorded in the audit log as token_recover):",
                config.data_dir.display()
            );
            out!();
            out!("  {}", issued.token.expose_secret());
            out!();
            out!(
                "A running server sees it after a restart. Shown once; Custos keeps only its hash."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

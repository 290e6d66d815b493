//! `custos key`: create, list, show, rotate, schedule rotations, and change a key's state.

use std::process::ExitCode;

use custos_api::{CreateKeyRequest, KeyList, KeyView};
use reqwest::Method;

use super::{connect, print_json};
use crate::cli::KeyCommand;

pub async fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Create {
            name,
            algorithm,
            provider,
            adopt,
            conn,
        } => {
            let (provider, providers) = match provider.len() {
                0 => (None, None),
                1 => (provider.into_iter().next(), None),
                _ => (None, Some(provider)),
            };
            let body = CreateKeyRequest {
                name,
                algorithm,
                provider,
                providers,
                adopt,
            };
            let key: KeyView = connect(&conn)?
                .call(Method::POST, "/v1/keys", Some(&body))
                .await?;
            show(&key, conn.json)?;
        }
        KeyCommand::List { conn } => {
            let list: KeyList = connect(&conn)?
                .call(Method::GET, "/v1/keys", None::<&()>)
                .await?;
            if conn.json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.keys.is_empty() {
                out!("no keys yet: custos key create NAME --algorithm ed25519");
            }
            for k in &list.keys {
                out!(
                    "{:<32} {:<10} v{:<4} {:<16} {}",
                    k.name,
                    k.algorithm,
                    k.current_version,
                    k.state,
                    k.providers.join(",")
                );
            }
        }
        KeyCommand::Show { name, conn } => {
            let key: KeyView = connect(&conn)?
                .call(Method::GET, &format!("/v1/keys/{name}"), None::<&()>)
                .await?;
            show(&key, conn.json)?;
        }
        KeyCommand::Rotate { name, conn } => {
            let key: KeyView = connect(&conn)?
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/rotate"),
                    None::<&()>,
                )
                .await?;
            show(&key, conn.json)?;
        }
        KeyCommand::Disable { name, conn } => state(&name, "disable", None, &conn).await?,
        KeyCommand::Enable { name, conn } => state(&name, "enable", None, &conn).await?,
        KeyCommand::ScheduleDeletion { name, days, conn } => {
            let body = custos_api::ScheduleDeletionRequest {
                pending_window_days: days,
            };
            state(&name, "schedule-deletion", Some(body), &conn).await?;
        }
        KeyCommand::CancelDeletion { name, conn } => {
            state(&name, "cancel-deletion", None, &conn).await?
        }
        KeyCommand::Rotation {
            name,
            interval_days,
            overlap_days,
            rotation_time,
            time_zone,
            backup_dir,
            backup_recipient,
            clear,
            conn,
        } => {
            let path = format!("/v1/keys/{name}/rotation");
            let client = connect(&conn)?;
            let view: custos_api::RotationView = match (clear, interval_days) {
                (true, _) => client.call(Method::DELETE, &path, None::<&()>).await?,
                (false, Some(interval_days)) => {
                    let body = serde_json::json!({
                        "interval_days": interval_days,
                        "overlap_days": overlap_days,
                        "rotation_time": rotation_time,
                        "time_zone": time_zone,
                        "backup_enabled": backup_dir.is_some(),
                        "backup_location": backup_dir,
                        "backup_recipient": backup_recipient,
                    });
                    client.call(Method::PUT, &path, Some(&body)).await?
                }
                (false, None) => client.call(Method::GET, &path, None::<&()>).await?,
            };
            if conn.json {
                print_json(&view)?;
                return Ok(ExitCode::SUCCESS);
            }
            match &view.policy {
                None => out!("{}: no schedule (rotates only on demand)", view.key),
                Some(policy) => {
                    out!("{}: {}", view.key, policy);
                    if let Some(next) = view.next_rotation {
                        out!("next rotation  {next}");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn state(
    name: &str,
    action: &str,
    body: Option<custos_api::ScheduleDeletionRequest>,
    conn: &crate::cli::Conn,
) -> anyhow::Result<()> {
    let key: KeyView = connect(conn)?
        .call(
            Method::POST,
            &format!("/v1/keys/{name}/{action}"),
            body.as_ref(),
        )
        .await?;
    if conn.json {
        return print_json(&key);
    }
    match key.deletion_date {
        Some(at) => out!("key {} is {} (destroyed at {at})", key.name, key.state),
        None => out!("key {} is {}", key.name, key.state),
    }
    Ok(())
}

fn show(key: &KeyView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(key);
    }
    out!("key        {} ({}, {})", key.name, key.algorithm, key.kind);
    out!("state      {}", key.state);
    if let Some(at) = key.deletion_date {
        out!("deletion   {at}");
    }
    if !key.description.is_empty() {
        out!("about      {}", key.description);
    }
    out!("current    version {}", key.current_version);
    out!("providers  {}", key.providers.join(", "));
    for v in &key.versions {
        out!();
        out!(
            "version {} [{}] created {}",
            v.version,
            v.state,
            v.created_at
        );
        out!("  public key  {}", v.public_key.raw);
        if let Some(address) = &v.public_key.address {
            out!("  address     {address}");
        }
        for l in &v.locations {
            let export = if l.exportable {
                "exportable"
            } else {
                "non-exportable"
            };
            out!(
                "  held by     {} ({}, {export}) handle {}",
                l.provider,
                l.kind,
                l.handle
            );
        }
        for line in v.public_key.pem.lines() {
            out!("  {line}");
        }
    }
    Ok(())
}

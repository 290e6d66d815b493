//! One module per group of commands; `run` sends each parsed command to its module.

mod audit;
mod config;
#[cfg(feature = "hpvs")]
mod hpvs;
mod keys;
mod serve;
mod sign;
mod tokens;

use std::process::ExitCode;

use crate::cli::{Cli, Command, Conn};
use crate::client::Client;

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Dev { listen, data_dir } => serve::dev(listen, data_dir).await,
        Command::Init { config, data_dir } => serve::init(config, data_dir).await,
        Command::Key(command) => keys::run(command).await,
        Command::Sign {
            name,
            input,
            options,
            sequence,
            conn,
        } => sign::sign(name, input, options, sequence, conn).await,
        Command::Verify {
            name,
            input,
            signature,
            options,
            conn,
        } => sign::verify(name, input, signature, options, conn).await,
        Command::Token(command) => tokens::run(command).await,
        Command::Audit(command) => audit::run(command).await,
        Command::Config(command) => config::run(command),
        #[cfg(feature = "hpvs")]
        Command::Hpvs(command) => hpvs::run(command),
    }
}

/// A client for the server `conn` names.
fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Client::new(conn.addr.clone(), conn.token.clone(), conn.ca_cert.clone())
}

/// Prints the server's JSON, pretty.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

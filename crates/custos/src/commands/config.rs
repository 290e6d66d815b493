//! `custos config`: work with configuration files (convert the seed's key-manager JSON to Custos TOML).

use std::process::ExitCode;

use crate::cli::ConfigCommand;

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Convert { file } => crate::convert::run(&file),
    }
}

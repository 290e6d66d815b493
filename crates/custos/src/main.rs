//! `custos`: run the Custos server (`serve`, `dev`, `init`) and talk to one (keys, sign, verify, tokens,
//! audit). The command line is in `cli`, each group of commands in `commands`, the provider factories in
//! `providers`.

/// Prints a line to standard output; a closed pipe (`custos key list | head -1`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod cli;
mod client;
mod commands;
mod config;
mod convert;
mod providers;
mod server;
mod webhooks;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    custos_http::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

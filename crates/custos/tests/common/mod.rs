//! What the API tests of the real binary share: running `custos`, and a server started from a config.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_custos");
pub const PASSWORD: &str = "a long test master password";

/// The binary with a clean environment and the test master password.
pub fn custos(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .env("CUSTOS_MASTER_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs a command that must succeed; its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A server started by [`start`]; killed on drop, with its data directory.
pub struct Started {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The root (admin) token printed by `custos init`.
    pub root: String,
    /// The temporary directory holding the config and the data.
    pub dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    /// A client command aimed at this server with the root token.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = custos(args);
        cmd.env("CUSTOS_ADDR", &self.url)
            .env("CUSTOS_TOKEN", &self.root);
        cmd
    }
}

/// Initialises a data directory and serves it on a free port, with `extra` appended to the config.
pub fn start(extra: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n{extra}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let root = ok(&mut custos(&["init", "--config", config_s]))
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .unwrap()
        .to_owned();
    let mut child = custos(&["serve", "--config", config_s])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the server exited"
        );
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Started {
        child,
        url,
        root,
        dir,
    }
}

//! Rotation through the real binary: a schedule with an age-encrypted backup, and kill -9 at each step
//! of the rotation state machine, after which a restart finishes the rotation with exactly one current
//! version and no version lost. The backup is decrypted by the `age` CLI and checked with `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_custos");
const PASSWORD: &str = "a long test master password";

fn custos(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .env_remove("CUSTOS_PAUSE_AT")
        .env("CUSTOS_MASTER_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    cmd
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A server process; SIGKILLed on drop.
struct Server {
    child: Child,
    addr: String,
    /// What it printed before it listened.
    startup: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn serve(data: &Path, pause_at: Option<&str>) -> Server {
    let mut cmd = custos(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    if let Some(step) = pause_at {
        cmd.env("CUSTOS_PAUSE_AT", step);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let addr = loop {
        let line = stdout
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no address; stdout so far: {seen:?}"));
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
        seen.push(line);
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout {});
    Server {
        child,
        addr,
        startup: seen,
        stderr,
    }
}

fn client(server: &Server, token: &str, args: &[&str]) -> Command {
    let mut cmd = custos(args);
    cmd.env("CUSTOS_ADDR", &server.addr)
        .env("CUSTOS_TOKEN", token);
    cmd
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// Makes an age identity with `age-keygen`; returns (identity file, recipient).
fn age_identity(dir: &Path) -> (std::path::PathBuf, String) {
    let identity = dir.join("backup-identity.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen (Debian package age) is installed by scripts/test");
    assert!(out.status.success());
    let recipient = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen prints the public key")
        .to_owned();
    (identity, recipient)
}

#[test]
fn kill_9_at_each_rotation_step_then_restart_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_identity(tmp.path());
    let backups = tmp.path().join("backups");
    for (round, step) in [
        "rotation:started",
        "rotation:backed_up",
        "rotation:generated",
        "rotation:committed",
    ]
    .into_iter()
    .enumerate()
    {
        let data = tmp.path().join(format!("data-{round}"));
        let init = ok(custos(&["init", "--data-dir", data.to_str().unwrap()])
            .output()
            .unwrap());
        let root = init
            .split_whitespace()
            .find(|w| w.starts_with("cst_"))
            .unwrap()
            .to_owned();
        let server = serve(&data, Some(step));
        let key = "seq";
        ok(client(
            &server,
            &root,
            &["key", "create", key, "--algorithm", "ed25519"],
        )
        .output()
        .unwrap());
        let policy = ok(client(
            &server,
            &root,
            &[
                "key",
                "rotation",
                key,
                "--interval-days",
                "30",
                "--overlap-days",
                "2",
                "--time-zone",
                "Europe/Berlin",
                "--rotation-time",
                "03:00:00",
                "--backup-dir",
                backups.to_str().unwrap(),
                "--backup-recipient",
                &recipient,
                "--json",
            ],
        )
        .output()
        .unwrap());
        assert!(json(&policy)["next_rotation"].is_string(), "{policy}");
        let before = json(&ok(client(&server, &root, &["key", "show", key, "--json"])
            .output()
            .unwrap()));
        let v1_public = before["versions"][0]["public_key"]["pem"]
            .as_str()
            .unwrap()
            .to_owned();

        // Rotate; the server stops at the step, and is killed there with SIGKILL.
        let mut rotate = client(&server, &root, &["key", "rotate", key])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let marker = format!("custos: paused at {step}");
        loop {
            let line = server
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the server never reached {step}"));
            if line.contains(&marker) {
                break;
            }
        }
        drop(server); // SIGKILL
        let _ = rotate.kill();
        let _ = rotate.wait();

        // A restart finishes the rotation before serving.
        let server = serve(&data, None);
        let after = json(&ok(client(&server, &root, &["key", "show", key, "--json"])
            .output()
            .unwrap()));
        let versions = after["versions"].as_array().unwrap();
        let states: Vec<_> = versions
            .iter()
            .map(|v| v["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["enabled", "current"],
            "after a kill at {step}: {after}"
        );
        assert_eq!(after["current_version"], 2);
        assert_eq!(
            versions[0]["public_key"]["pem"].as_str().unwrap(),
            v1_public,
            "version 1 kept"
        );
        // Both versions sign: the new one by default, the old one by explicit version (overlap).
        let signed = json(&ok(client(
            &server,
            &root,
            &["sign", key, "--message", "m", "--json"],
        )
        .output()
        .unwrap()));
        assert_eq!(signed["version"], 2);
        let old = json(&ok(client(
            &server,
            &root,
            &["sign", key, "--message", "m", "--version", "1", "--json"],
        )
        .output()
        .unwrap()));
        assert_eq!(old["version"], 1);
        // The server said so on start.
        let said = server
            .startup
            .iter()
            .any(|l| l.contains("interrupted by a crash"));
        assert!(said, "the restart reports the resumed rotation ({step})");

        // The backup of version 1 (written at or before the backed_up step) decrypts with the age CLI to
        // the private key of version 1.
        let backup = std::fs::read_dir(&backups)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(&format!("{key}-v1-")) && n.ends_with(".age")
            })
            .expect("a backup file");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&backup).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let pem = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&identity)
            .arg(&backup)
            .output()
            .unwrap();
        assert!(
            pem.status.success(),
            "{}",
            String::from_utf8_lossy(&pem.stderr)
        );
        let mut pubout = Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        pubout.stdin.take().unwrap().write_all(&pem.stdout).unwrap();
        let public = pubout.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&public.stdout).trim(),
            v1_public.trim(),
            "openssl: {} (decrypted {} bytes)",
            String::from_utf8_lossy(&public.stderr),
            pem.stdout.len()
        );
        std::fs::remove_dir_all(&backups).unwrap();
    }
}

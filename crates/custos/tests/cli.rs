//! The `custos` binary end to end: init, serve, client verbs, restart, wrong password, and dev.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_custos");
const PASSWORD: &str = "a long test master password";

fn custos(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .env("CUSTOS_MASTER_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running server; killed on drop.
struct Running {
    child: Child,
    addr: String,
}

impl Running {
    /// Stops the server the way an operator does (SIGTERM) and checks it exits cleanly.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "server exited with {status} after SIGTERM"
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the child and reads stdout until a line names the address.
fn spawn(mut cmd: Command, marker: &str) -> (Running, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "server exited; output: {lines:?}"
        );
        let line = line.trim_end().to_owned();
        lines.push(line.clone());
        if let Some(rest) = line.split(marker).nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (Running { child, addr }, lines)
}

fn serve(dir: &Path) -> Running {
    let cmd = custos(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    spawn(cmd, "listening on ").0
}

fn client(server: &Running, token: &str, args: &[&str]) -> Output {
    custos(args)
        .env("CUSTOS_ADDR", &server.addr)
        .env("CUSTOS_TOKEN", token)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn field(json: &str, path: &[&str]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    for p in path {
        v = match p.parse::<usize>() {
            Ok(i) => v[i].take(),
            Err(_) => v[*p].take(),
        };
    }
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

/// File names with their sizes and a cheap content fingerprint (FNV-1a), so a failure prints little.
fn dir_snapshot(dir: &Path) -> Vec<(String, usize, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let fnv = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
            });
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                bytes.len(),
                fnv,
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn init_serve_sign_verify_restart_and_wrong_password() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();

    // Serving an empty directory says what to do.
    let out = custos(&["serve", "--data-dir", data_s, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("custos init"), "{}", text(&out));

    let init = ok(custos(&["init", "--data-dir", data_s]).output().unwrap());
    let root = init
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .expect("root token printed")
        .to_owned();
    let again = custos(&["init", "--data-dir", data_s]).output().unwrap();
    assert!(!again.status.success() && text(&again).contains("initialised already"));

    let server = serve(&data);
    ok(client(
        &server,
        &root,
        &["key", "create", "seq-1", "--algorithm", "ed25519"],
    ));
    ok(client(
        &server,
        &root,
        &["key", "create", "eth-1", "--algorithm", "secp256k1"],
    ));
    let list = ok(client(&server, &root, &["key", "list"]));
    assert!(list.contains("seq-1") && list.contains("eth-1"), "{list}");
    let shown = ok(client(&server, &root, &["key", "show", "seq-1", "--json"]));
    let public_before = field(&shown, &["versions", "0", "public_key", "raw"]);

    let block = tmp.path().join("block.bin");
    std::fs::write(&block, b"block 1").unwrap();
    let block_s = block.to_str().unwrap();
    let human = ok(client(
        &server,
        &root,
        &["sign", "seq-1", "--message-file", block_s],
    ));
    assert!(
        human.contains("version 1") && human.contains("provider     soft"),
        "{human}"
    );
    let signed = ok(client(
        &server,
        &root,
        &["sign", "seq-1", "--message-file", block_s, "--json"],
    ));
    let signature = field(&signed, &["signature"]);
    let valid = ok(client(
        &server,
        &root,
        &[
            "verify",
            "seq-1",
            "--message-file",
            block_s,
            "--signature",
            &signature,
        ],
    ));
    assert!(valid.contains("valid"), "{valid}");
    let invalid = client(
        &server,
        &root,
        &[
            "verify",
            "seq-1",
            "--message",
            "block 2",
            "--signature",
            &signature,
        ],
    );
    assert_eq!(invalid.status.code(), Some(1), "{}", text(&invalid));
    let eth = ok(client(
        &server,
        &root,
        &[
            "sign",
            "eth-1",
            "--message",
            "tx",
            "--hash",
            "keccak256",
            "--json",
        ],
    ));
    assert!(field(&eth, &["recovery_id"]).parse::<u8>().unwrap() <= 1);

    // A scoped token from the CLI signs only what its pattern allows.
    let issued = ok(client(
        &server,
        &root,
        &["token", "create", "ci", "--scope", "sign:seq-*", "--json"],
    ));
    let scoped = field(&issued, &["token"]);
    ok(client(
        &server,
        &scoped,
        &["sign", "seq-1", "--message", "x"],
    ));
    let denied = client(&server, &scoped, &["sign", "eth-1", "--message", "x"]);
    assert!(
        !denied.status.success() && text(&denied).contains("forbidden"),
        "{}",
        text(&denied)
    );
    let no_token = client(&server, "", &["key", "list"]);
    assert!(!no_token.status.success());
    let rotated = ok(client(
        &server,
        &root,
        &["key", "rotate", "seq-1", "--json"],
    ));
    assert_eq!(field(&rotated, &["current_version"]), "2");
    server.stop();

    // Restart on the same data: same public keys, old signatures still verify, new ones sign.
    let server = serve(&data);
    let shown = ok(client(&server, &root, &["key", "show", "seq-1", "--json"]));
    assert_eq!(
        field(&shown, &["versions", "0", "public_key", "raw"]),
        public_before
    );
    ok(client(
        &server,
        &root,
        &[
            "verify",
            "seq-1",
            "--message-file",
            block_s,
            "--signature",
            &signature,
        ],
    ));
    let resigned = ok(client(
        &server,
        &root,
        &[
            "sign",
            "seq-1",
            "--message-file",
            block_s,
            "--version",
            "1",
            "--json",
        ],
    ));
    assert_eq!(field(&resigned, &["signature"]), signature);
    server.stop();

    // A wrong master password: a clear error, and the data directory is byte-for-byte unchanged.
    let before = dir_snapshot(&data);
    let out = custos(&["serve", "--data-dir", data_s, "--listen", "127.0.0.1:0"])
        .env("CUSTOS_MASTER_PASSWORD", "not the password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("wrong master password"),
        "{}",
        text(&out)
    );
    assert_eq!(
        dir_snapshot(&data),
        before,
        "a wrong password changed the data directory"
    );
    let out = custos(&["serve", "--data-dir", data_s])
        .env_remove("CUSTOS_MASTER_PASSWORD")
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("CUSTOS_MASTER_PASSWORD"),
        "{}",
        text(&out)
    );
}

#[test]
fn dev_prints_what_to_type_next() {
    let (mut server, lines) = spawn(
        custos(&["dev", "--listen", "127.0.0.1:0"]),
        "export CUSTOS_TOKEN=",
    );
    let token = lines
        .last()
        .unwrap()
        .trim_start_matches("export CUSTOS_TOKEN=")
        .to_owned();
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("export CUSTOS_ADDR="))
        .expect("address line");
    server.addr = addr.to_owned();
    assert!(lines.iter().any(|l| l.contains("throw-away")), "{lines:?}");
    ok(client(
        &server,
        &token,
        &["key", "create", "seq-1", "--algorithm", "ed25519"],
    ));
    let signed = ok(client(
        &server,
        &token,
        &["sign", "seq-1", "--message", "hello"],
    ));
    assert!(signed.contains("signature"), "{signed}");
}

#[test]
fn help_is_complete() {
    let out = ok(custos(&["--help"]).output().unwrap());
    for verb in ["serve", "dev", "init", "key", "sign", "verify", "token"] {
        assert!(out.contains(verb), "--help lacks {verb}: {out}");
    }
    let out = ok(custos(&["sign", "--help"]).output().unwrap());
    assert!(
        out.contains("--message-file") && out.contains("CUSTOS_ADDR"),
        "{out}"
    );
}

/// A SoftHSM2 token store in `dir`, with one token; returns the `SOFTHSM2_CONF` path.
fn softhsm_token(dir: &Path, label: &str, pin: &str) -> std::path::PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "1234",
            "--pin",
            pin,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (scripts/test installs softhsm2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

#[test]
fn keys_in_a_pkcs11_hsm_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = softhsm_token(tmp.path(), "custos-cli", "5678");
    let config = tmp.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{}"
listen = "127.0.0.1:0"

[[providers]]
type = "soft"
name = "soft"

[[providers]]
type = "pkcs11"
name = "hsm"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "custos-cli"
pin = {{ env = "TEST_HSM_PIN" }}
sessions = 2
"#,
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let with_hsm = |mut cmd: Command| {
        cmd.env("SOFTHSM2_CONF", &conf).env("TEST_HSM_PIN", "5678");
        cmd
    };
    let init = ok(with_hsm(custos(&["init", "--config", config_s]))
        .output()
        .unwrap());
    let root = init
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .unwrap()
        .to_owned();
    let (server, _) = spawn(
        with_hsm(custos(&["serve", "--config", config_s])),
        "listening on ",
    );
    let hsm_client = |args: &[&str]| {
        ok(with_hsm(custos(args))
            .env("CUSTOS_ADDR", &server.addr)
            .env("CUSTOS_TOKEN", &root)
            .output()
            .unwrap())
    };

    let created = hsm_client(&[
        "key",
        "create",
        "hsm-ed",
        "--algorithm",
        "ed25519",
        "--provider",
        "hsm",
        "--json",
    ]);
    assert_eq!(
        field(&created, &["versions", "0", "locations", "0", "kind"]),
        "pkcs11"
    );
    assert_eq!(
        field(&created, &["versions", "0", "locations", "0", "exportable"]),
        "false"
    );
    hsm_client(&[
        "key",
        "create",
        "hsm-p256",
        "--algorithm",
        "p256",
        "--provider",
        "hsm",
    ]);
    let signed = hsm_client(&["sign", "hsm-p256", "--message", "tx", "--json"]);
    assert_eq!(field(&signed, &["provider"]), "hsm");
    let signature = field(&signed, &["signature"]);
    hsm_client(&[
        "verify",
        "hsm-p256",
        "--message",
        "tx",
        "--signature",
        &signature,
    ]);
    let signed_ed = hsm_client(&["sign", "hsm-ed", "--message", "block", "--json"]);
    assert_eq!(field(&signed_ed, &["provider"]), "hsm");

    // Adopt a key made outside Custos, by label.
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "custos-cli",
            "--login",
            "--pin",
            "5678",
            "--keypairgen",
            "--key-type",
            "EC:secp256k1",
            "--label",
            "legacy",
            "--id",
            "beef",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("pkcs11-tool (scripts/test installs opensc)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adopted = hsm_client(&[
        "key",
        "create",
        "legacy",
        "--algorithm",
        "secp256k1",
        "--provider",
        "hsm",
        "--adopt",
        "label:legacy",
        "--json",
    ]);
    assert_eq!(
        field(&adopted, &["versions", "0", "locations", "0", "handle"]),
        "beef"
    );
    assert!(field(&adopted, &["versions", "0", "public_key", "address"]).starts_with("0x"));
    hsm_client(&["sign", "legacy", "--message", "tx", "--hash", "keccak256"]);

    // Health lists both providers.
    let health: serde_json::Value = serde_json::from_str(
        &String::from_utf8(
            Command::new("curl")
                .args(["-s", &format!("{}/v1/health", server.addr)])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    let kinds: Vec<_> = health["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["pkcs11", "soft"], "{health}");
    server.stop();

    // After a restart the HSM keys are found again by their CKA_ID.
    let (server, _) = spawn(
        with_hsm(custos(&["serve", "--config", config_s])),
        "listening on ",
    );
    let again = ok(with_hsm(custos(&[
        "verify",
        "hsm-p256",
        "--message",
        "tx",
        "--signature",
        &signature,
    ]))
    .env("CUSTOS_ADDR", &server.addr)
    .env("CUSTOS_TOKEN", &root)
    .output()
    .unwrap());
    assert!(again.contains("valid"), "{again}");
    ok(
        with_hsm(custos(&["sign", "hsm-ed", "--message", "block 2"]))
            .env("CUSTOS_ADDR", &server.addr)
            .env("CUSTOS_TOKEN", &root)
            .output()
            .unwrap(),
    );
    server.stop();

    // A wrong PIN stops start-up with a clear message.
    let out = with_hsm(custos(&["serve", "--config", config_s]))
        .env("TEST_HSM_PIN", "0000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("login failed"), "{}", text(&out));
}

#[test]
fn an_unreachable_yubihsm_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{}"
listen = "127.0.0.1:0"

[[providers]]
type = "soft"
name = "soft"

[[providers]]
type = "yubihsm"
name = "yubi"
connector = "http://127.0.0.1:1"
auth_key_id = 1
password = {{ env = "TEST_YUBIHSM_PASSWORD" }}
"#,
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let mut init = custos(&["init", "--config", config_s]);
    init.env("TEST_YUBIHSM_PASSWORD", "password");
    let root = ok(init.output().unwrap())
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .unwrap()
        .to_owned();
    let mut serve = custos(&["serve", "--config", config_s]);
    serve.env("TEST_YUBIHSM_PASSWORD", "password");
    let (server, _) = spawn(serve, "listening on ");
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("{}/v1/health", server.addr),
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8(out.stdout).unwrap();
    let (body, status) = answer.rsplit_once('\n').unwrap();
    assert_eq!(status, "503", "{body}");
    let health: serde_json::Value = serde_json::from_str(body).unwrap();
    let yubi = health["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "yubi")
        .unwrap();
    assert_eq!(yubi["available"], false, "{health}");
    assert!(
        yubi["detail"].as_str().unwrap().contains("unreachable"),
        "{health}"
    );
    // The soft provider keeps working.
    ok(client(
        &server,
        &root,
        &[
            "key",
            "create",
            "k",
            "--algorithm",
            "ed25519",
            "--provider",
            "soft",
        ],
    ));
    ok(client(
        &server,
        &root,
        &["sign", "k", "--message", "still signing"],
    ));
    let refused = client(
        &server,
        &root,
        &[
            "key",
            "create",
            "y",
            "--algorithm",
            "ed25519",
            "--provider",
            "yubi",
        ],
    );
    assert!(
        !refused.status.success() && text(&refused).contains("provider_unavailable"),
        "{}",
        text(&refused)
    );
    server.stop();
}

/// moto's KMS emulator on a free loopback port; stopped on drop.
struct Moto(Child, String);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (scripts/test installs moto[server])");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Moto(child, format!("http://127.0.0.1:{port}"))
}

#[test]
fn aws_kms_keys_and_a_bad_signature_is_never_returned() {
    let moto = moto();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[[providers]]\ntype = \"soft\"\nname = \"soft\"\n\n\
             [[providers]]\ntype = \"awskms\"\nname = \"kms\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n",
            tmp.path().join("data").display(),
            moto.1
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let aws = |mut cmd: Command| {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
        cmd
    };
    let root = ok(aws(custos(&["init", "--config", config_s]))
        .output()
        .unwrap())
    .split_whitespace()
    .find(|w| w.starts_with("cst_"))
    .unwrap()
    .to_owned();
    let (server, _) = spawn(
        aws(custos(&["serve", "--config", config_s])),
        "listening on ",
    );
    let created = ok(client(
        &server,
        &root,
        &[
            "key",
            "create",
            "eth-kms",
            "--algorithm",
            "secp256k1",
            "--provider",
            "kms",
            "--json",
        ],
    ));
    assert_eq!(
        field(&created, &["versions", "0", "locations", "0", "kind"]),
        "awskms"
    );
    assert_eq!(
        field(&created, &["versions", "0", "locations", "0", "exportable"]),
        "false"
    );
    assert!(field(&created, &["versions", "0", "public_key", "address"]).starts_with("0x"));
    // moto signs SHA-256 of the digest instead of the digest: the signature does not verify under the
    // key, so Custos refuses to return it. This is the local-verification invariant at work.
    let signed = client(&server, &root, &["sign", "eth-kms", "--message", "tx"]);
    assert!(!signed.status.success());
    assert!(
        text(&signed).contains("(internal, HTTP 500)"),
        "{}",
        text(&signed)
    );
    server.stop();
}

#[test]
fn audit_export_verifies_offline_and_no_secret_reaches_logs_or_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let init = ok(custos(&["init", "--data-dir", data_s]).output().unwrap());
    let root = init
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .unwrap()
        .to_owned();
    // Debug-level JSON logs to a file, to scan them afterwards.
    let log = tmp.path().join("server.log");
    let mut serve = custos(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s]);
    serve
        .env("RUST_LOG", "debug")
        .env("CUSTOS_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = serve.stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let server = Running {
        addr: line.trim().rsplit(' ').next().unwrap().to_owned(),
        child,
    };
    std::thread::spawn(move || for _ in reader.lines() {});

    ok(client(
        &server,
        &root,
        &["key", "create", "seq-1", "--algorithm", "ed25519"],
    ));
    ok(client(
        &server,
        &root,
        &["key", "create", "eth", "--algorithm", "secp256k1"],
    ));
    ok(client(
        &server,
        &root,
        &["sign", "seq-1", "--message", "a very secret block payload"],
    ));
    ok(client(
        &server,
        &root,
        &[
            "sign",
            "eth",
            "--message",
            "another secret payload",
            "--hash",
            "keccak256",
        ],
    ));
    let issued = ok(client(
        &server,
        &root,
        &["token", "create", "ops", "--scope", "audit:read", "--json"],
    ));
    let ops = field(&issued, &["token"]);
    let bad = client(
        &server,
        "cst_0123456789abcdef_wrongsecretwrongsecret",
        &["key", "list"],
    );
    assert!(!bad.status.success());
    ok(client(
        &server,
        &root,
        &["token", "revoke", &field(&issued, &["id"])],
    ));
    assert!(
        !client(&server, &ops, &["audit", "query"]).status.success(),
        "a revoked token still works"
    );
    let listed = ok(client(&server, &root, &["token", "list"]));
    assert!(
        listed.contains("revoked") && listed.contains("ops"),
        "{listed}"
    );
    let query = ok(client(
        &server,
        &root,
        &["audit", "query", "--operation", "sign"],
    ));
    assert_eq!(query.lines().count(), 2, "{query}");

    // Export, then verify offline with the published key: no server involved in the check.
    let export = tmp.path().join("audit.jsonl");
    ok(client(
        &server,
        &root,
        &["audit", "export", "-o", export.to_str().unwrap()],
    ));
    let key = ok(client(&server, &root, &["audit", "key"]));
    let key = key.lines().next().unwrap().to_owned();
    server.stop();
    let verify = |file: &Path| {
        custos(&[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            &key,
        ])
        .output()
        .unwrap()
    };
    let good = verify(&export);
    assert!(good.status.success(), "{}", text(&good));
    assert!(text(&good).contains("OK"), "{}", text(&good));

    let original = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let record_line = lines
        .iter()
        .position(|l| l.contains("\"operation\":\"sign\""))
        .unwrap();
    let tampered = tmp.path().join("tampered.jsonl");
    let check = |lines: Vec<String>, expect: &str| {
        std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
        let out = verify(&tampered);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("TAMPERED") && text(&out).contains(expect),
            "{expect}: {}",
            text(&out)
        );
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let mut edited = owned.clone();
    edited[record_line] = edited[record_line].replace("\"key\":\"seq-1\"", "\"key\":\"eth\"");
    check(edited, "modified");
    let mut deleted = owned.clone();
    deleted.remove(record_line);
    check(deleted, "missing");
    check(owned[..owned.len() - 2].to_vec(), "truncated");

    // No secret in the logs or the audit trail: tokens, the master password, message plaintext.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("request_id"),
        "the JSON logs carry request ids"
    );
    for (what, secret) in [
        ("root token", root.as_str()),
        ("root token secret", root.rsplit('_').next().unwrap()),
        ("ops token", ops.as_str()),
        ("ops token secret", ops.rsplit('_').next().unwrap()),
        ("rejected token", "wrongsecretwrongsecret"),
        ("master password", PASSWORD),
        ("payload", "a very secret block payload"),
        ("payload (base64)", "YSB2ZXJ5IHNlY3JldCBibG9jayBwYXlsb2Fk"),
    ] {
        assert!(!logs.contains(secret), "the server log contains the {what}");
        assert!(
            !original.contains(secret),
            "the audit export contains the {what}"
        );
    }
}

#[test]
fn audit_records_are_copied_to_a_second_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[audit]\nsink = \"stdout\"\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let init = ok(custos(&["init", "--config", config_s]).output().unwrap());
    let root = init
        .split_whitespace()
        .find(|w| w.starts_with("cst_"))
        .unwrap()
        .to_owned();
    let mut child = custos(&["serve", "--config", config_s])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let recv = || {
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("server output")
    };
    let addr = loop {
        let line = recv();
        if let Some(addr) = line.strip_prefix("Custos listening on ") {
            break addr.to_owned();
        }
    };
    let server = Running { child, addr };
    ok(client(
        &server,
        &root,
        &["key", "create", "k", "--algorithm", "ed25519"],
    ));
    ok(client(
        &server,
        &root,
        &["sign", "k", "--message", "to the SIEM"],
    ));
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("\"operation\":\"sign\""))
    {
        seen.push(recv());
    }
    let record: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(record["key"], "k");
    assert!(
        record["hash"].as_str().unwrap().len() == 64 && record["seq"].as_u64().unwrap() >= 3,
        "{record}"
    );
    server.stop();
}

#[test]
fn hpvs_contract_and_decrypt_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |script: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("openssl req -x509 -newkey rsa:4096 -nodes -days 1 -subj /CN=hpvs -keyout encrypt.key -out encrypt.crt 2>/dev/null && \
         openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out sign.key 2>/dev/null");
    let workload = "type: workload\ncompose:\n  archive: H4sIAAAA\n";
    std::fs::write(tmp.path().join("workload.yaml"), workload).unwrap();
    std::fs::write(
        tmp.path().join("env.yaml"),
        "type: env\nlogging:\n  logDNA:\n    hostname: logs.example\n",
    )
    .unwrap();
    let p = |f: &str| tmp.path().join(f).to_str().unwrap().to_owned();
    ok(custos(&[
        "hpvs",
        "contract",
        "--workload",
        &p("workload.yaml"),
        "--env",
        &p("env.yaml"),
        "--cert",
        &p("encrypt.crt"),
        "--signing-key",
        &p("sign.key"),
        "-o",
        &p("contract.yaml"),
    ])
    .output()
    .unwrap());
    let contract = std::fs::read_to_string(tmp.path().join("contract.yaml")).unwrap();
    let section = |key: &str| {
        contract
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    std::fs::write(tmp.path().join("workload.blob"), section("workload: ")).unwrap();
    let decrypted = ok(custos(&[
        "hpvs",
        "decrypt",
        "--key",
        &p("encrypt.key"),
        &p("workload.blob"),
    ])
    .output()
    .unwrap());
    assert_eq!(decrypted, workload);
    // From a compose file and flags: the archive unpacks to the compose file, volumes and seeds are set.
    std::fs::write(
        tmp.path().join("compose.yaml"),
        "services:\n  custos:\n    image: r/custos@sha256:00\n",
    )
    .unwrap();
    ok(custos(&[
        "hpvs",
        "contract",
        "--compose",
        &p("compose.yaml"),
        "--volume",
        "data:/mnt/data:workload-seed",
        "--syslog",
        "logs.example:6514",
        "--env-seed",
        "data:env-seed",
        "--cert",
        &p("encrypt.crt"),
        "--signing-key",
        &p("sign.key"),
        "-o",
        &p("contract2.yaml"),
    ])
    .output()
    .unwrap());
    let contract = std::fs::read_to_string(tmp.path().join("contract2.yaml")).unwrap();
    for (key, file) in [("workload: ", "w.blob"), ("env: ", "e.blob")] {
        std::fs::write(
            tmp.path().join(file),
            contract.lines().find_map(|l| l.strip_prefix(key)).unwrap(),
        )
        .unwrap();
    }
    let workload = ok(
        custos(&["hpvs", "decrypt", "--key", &p("encrypt.key"), &p("w.blob")])
            .output()
            .unwrap(),
    );
    assert!(
        workload.contains("mount: \"/mnt/data\"") && workload.contains("seed: \"workload-seed\""),
        "{workload}"
    );
    let archive = workload
        .lines()
        .find_map(|l| l.trim().strip_prefix("archive: "))
        .unwrap()
        .to_owned();
    std::fs::write(tmp.path().join("archive.b64"), archive).unwrap();
    run("base64 -d archive.b64 | tar xzf - -O docker-compose.yml > unpacked.yml && cmp unpacked.yml compose.yaml");
    let env = ok(
        custos(&["hpvs", "decrypt", "--key", &p("encrypt.key"), &p("e.blob")])
            .output()
            .unwrap(),
    );
    assert!(
        env.contains("hostname: \"logs.example\"")
            && env.contains("seed: \"env-seed\"")
            && env.contains("signingKey: |"),
        "{env}"
    );
    // A missing required field is a clear error.
    std::fs::write(tmp.path().join("env.yaml"), "type: env\n").unwrap();
    let out = custos(&[
        "hpvs",
        "contract",
        "--workload",
        &p("workload.yaml"),
        "--env",
        &p("env.yaml"),
        "--cert",
        &p("encrypt.crt"),
        "--signing-key",
        &p("sign.key"),
    ])
    .output()
    .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("logging"),
        "{}",
        text(&out)
    );
}

#[test]
fn pin_digest_rewrites_the_compose_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = tmp.path().join("compose.yaml");
    std::fs::copy(root.join("deploy/compose.yaml"), &compose).unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let out = Command::new(root.join("scripts/pin-digest"))
        .args(["registry.example:5000/team/custos:1.0", &digest])
        .env("COMPOSE_FILE", &compose)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rewritten = std::fs::read_to_string(&compose).unwrap();
    assert!(
        rewritten.contains(&format!(
            "    image: registry.example:5000/team/custos@{digest}\n"
        )),
        "{rewritten}"
    );
    let bad = Command::new(root.join("scripts/pin-digest"))
        .args(["registry.example/custos", "sha256:short"])
        .env("COMPOSE_FILE", &compose)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn config_convert_prints_toml_and_notes_and_refuses_bad_files_with_2() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("keymanager.json");
    std::fs::write(
        &good,
        r#"{"keyManager": {"type": "aws-cloudhsm", "config": {"clusterEndpoint": "10.0.1.23",
            "username": "sequencer-user", "password": "Unique-PW-42", "keyHandle": "seq-key",
            "region": "us-east-1"}}}"#,
    )
    .unwrap();
    let out = custos(&["config", "convert", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("type = \"pkcs11\""), "{stdout}");
    assert!(
        stdout.contains("pin = { env = \"CUSTOS_CLOUDHSM_PIN\" }"),
        "{stdout}"
    );
    assert!(
        stderr.contains("--provider cloudhsm --adopt label:seq-key"),
        "{stderr}"
    );
    assert!(stderr.contains("keyManager.config.region"), "{stderr}");
    assert!(!text(&out).contains("Unique-PW-42"));

    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"keyManager": {"type": "aws-cloudhsm", "config": {"keyHandle": "k"}}}"#,
    )
    .unwrap();
    let out = custos(&["config", "convert", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keyManager.config.username is missing"),
        "{}",
        text(&out)
    );
    std::fs::write(&bad, "{\"keyManager\": ").unwrap();
    let out = custos(&["config", "convert", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

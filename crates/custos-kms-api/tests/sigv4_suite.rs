//! Checks the server-side SigV4 verifier (`sigv4::parse` + `sigv4::verify`) against AWS's published
//! Signature Version 4 test suite, and that it refuses each of those requests once one byte is changed.
//!
//! The vectors are in `tests/data/sigv4/<vector>/`, copied verbatim from AWS's repositories (sources,
//! commits and licence in `tests/data/sigv4/README.md`). Each holds a signed request: an HTTP/1.1
//! request text with an `Authorization` header, `X-Amz-Date`, and the body after the blank line. All use
//! access key `AKIDEXAMPLE`, secret `wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY`, scope
//! `20150830/us-east-1/service/aws4_request`, time 2015-08-30T12:36:00Z, and AWS's path normalisation
//! (the suite's `"normalize": true`, which is what every AWS service but S3 does, KMS included).
//!
//! How a request text is read: the first line is `METHOD TARGET HTTP/1.1`; each header line is
//! `Name:value` with the value kept byte for byte (leading spaces included, so trimming is the
//! verifier's job); a line starting with a space or tab continues the header above and, as the suite's
//! canonical requests expect (`my-header1:value1,value2,value3`), counts as one more value of it; the
//! body is whatever follows the first empty line.
//!
//! For every vector the test asserts that `verify` accepts the request at 2015-08-30T12:36:00Z, and
//! refuses it after: one byte of the body changed (one byte added if the body is empty); the last byte
//! of each signed header's value changed; one byte added to the path, and its last byte changed when
//! that is a letter or digit; the same for the query when there is one; and one hex digit of the
//! signature changed.
//!
//! Vectors of the suite left out, and why:
//! - `get-space-normalized` and `get-space-unnormalized` (`GET /example space/ HTTP/1.1`): a raw space
//!   ends the request target, so this is not an HTTP request a server can receive (`http::Uri` refuses
//!   the target too). A client sends the path escaped (`/example%20space/`), and then, like AWS's signers
//!   for every service but S3, the escaped path is encoded again; `double-encode-path` covers that.
//!   (`get-utf8` and `get-vanilla-utf8-query`, with raw UTF-8 in the target, are kept: hyper's parser,
//!   httparse, and `http::Uri` both accept bytes 0x80–0xFF there.)
//! - The `*-unnormalized` vectors as vectors to accept: they sign the path without removing dot segments
//!   or doubled slashes, as S3 does; KMS, like every other AWS service, normalises it. The six whose
//!   path normalisation changes are kept in `tests/data/sigv4-unnormalized/` and asserted *refused*
//!   (`paths_signed_without_normalisation_are_refused`); `get-space-unnormalized` is left out as above.
//! - `post-vanilla-empty-query-value`: only its query-string-signed (presigned) form was at hand; this
//!   verifier takes the `Authorization` header, not `X-Amz-Signature` in the query.
//! - `get-vanilla` and `post-header-key-case`: their own files were not among the stored copies of the
//!   sources searched. They are the same requests as `get-vanilla-query` (`GET /`, signature
//!   `5fa00fa3…`) and `post-vanilla` (`POST /`, `5da7c1a2…`), which are here; `get-vanilla` is also the
//!   unit test in `src/sigv4.rs`.
//! - `get-vanilla-query-order-key`, `get-vanilla-query-order-value` (a repeated name, sorted by value):
//!   their files were not found either; `src/sigv4.rs`'s unit tests check the canonical query of their
//!   requests, and `get-vanilla-query-order-encoded` and `-key-case` exercise the sort here.
//!
//! `get-vanilla-with-session-token` and `post-sts-header-before` sign `X-Amz-Security-Token`; the verifier
//! treats it as any other signed header (whether the server accepts session credentials is not its job).
//!
//! Two vectors are not from AWS's original suite but from the AWS Rust SDK's additions to it (same
//! credentials, scope and time): `get-query-plus` (`+` in a query is a literal `+`, `%2B`) and
//! `double-encode-path` (an escaped path, `%3D`, is encoded again as `%253D`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use custos_kms_api::sigv4::{self, SigV4Error};
use secrecy::SecretString;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: &str = "2015-08-30T12:36:00Z";

/// One request as a server receives it.
#[derive(Clone)]
struct Request {
    method: String,
    /// The request target: path, and `?query` if any.
    path: String,
    query: Option<String>,
    /// Header names and values, in the order received (a continuation line is a value of its own).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Shows the request as its text, so that a failure names what was sent.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {} HTTP/1.1", self.method, self.target())?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}:{}", String::from_utf8_lossy(value))?;
        }
        write!(f, "\n{}", String::from_utf8_lossy(&self.body))
    }
}

impl Request {
    fn parse(vector: &str, text: &[u8]) -> Self {
        let text = std::str::from_utf8(text)
            .unwrap_or_else(|_| panic!("{vector}: the request text is not UTF-8"));
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let request_line = lines
            .next()
            .unwrap_or_else(|| panic!("{vector}: no request line"));
        let (method, rest) = request_line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{vector}: the request line has no target"));
        let target = rest
            .strip_suffix(" HTTP/1.1")
            .unwrap_or_else(|| panic!("{vector}: the request line does not end in HTTP/1.1"));
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (target.to_owned(), None),
        };
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                let name = headers
                    .last()
                    .unwrap_or_else(|| panic!("{vector}: a continuation line before any header"))
                    .0
                    .clone();
                headers.push((name, line.as_bytes().to_vec()));
            } else {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{vector}: header line without a colon: {line:?}"));
                headers.push((name.to_owned(), value.as_bytes().to_vec()));
            }
        }
        Self {
            method: method.to_owned(),
            path,
            query,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    fn authorization(&self) -> &str {
        let value = &self
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .expect("the signed request has an Authorization header")
            .1;
        std::str::from_utf8(value).unwrap()
    }

    /// `sigv4::parse` and then `sigv4::verify`, at the suite's time, as the server calls them.
    fn verify(&self, vector: &str) -> Result<(), SigV4Error> {
        let auth = sigv4::parse(self.authorization())?;
        let method = Method::from_bytes(self.method.as_bytes())
            .unwrap_or_else(|e| panic!("{vector}: method {:?}: {e}", self.method));
        let uri: Uri = self
            .target()
            .parse()
            .unwrap_or_else(|e| panic!("{vector}: request target {:?}: {e}", self.target()));
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes())
                    .unwrap_or_else(|e| panic!("{vector}: header name {name:?}: {e}")),
                HeaderValue::from_bytes(value)
                    .unwrap_or_else(|e| panic!("{vector}: value of {name}: {e}")),
            );
        }
        let secret = SecretString::from(SECRET.to_owned());
        sigv4::verify(
            &auth,
            &secret,
            &method,
            &uri,
            &headers,
            &self.body,
            NOW.parse().unwrap(),
        )
    }
}

/// Changes the last byte of `text` if it is an ASCII letter or digit (to `E`, or `F` if it was `E`: both
/// hex digits, so a `%XX` escape stays one), else adds `X`. `None` for the first when there is nothing to
/// change.
fn change_last(text: &str) -> Option<String> {
    let last = text.bytes().last()?;
    if !last.is_ascii_alphanumeric() {
        return None;
    }
    let mut changed = text[..text.len() - 1].to_owned();
    changed.push(if last == b'E' { 'F' } else { 'E' });
    Some(changed)
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4")
}

/// The signed request of a vector: `header-signed-request.txt` (the newer suite's name) or
/// `<vector>.sreq` (the original suite's).
fn signed_request_file(vector: &str) -> PathBuf {
    let dir = data_dir().join(vector);
    let newer = dir.join("header-signed-request.txt");
    if newer.exists() {
        newer
    } else {
        dir.join(format!("{vector}.sreq"))
    }
}

fn refused(vector: &str, what: &str, request: &Request) {
    let result = request.verify(vector);
    assert!(
        result.is_err(),
        "{vector}: verify accepted the request with {what}:\n{request:?}"
    );
}

fn refused_as_mismatch(vector: &str, what: &str, request: &Request) {
    assert_eq!(
        request.verify(vector),
        Err(SigV4Error::Mismatch),
        "{vector}: verify did not refuse the request with {what} as a mismatch:\n{request:?}"
    );
}

fn check(vector: &str) {
    let file = signed_request_file(vector);
    let text = std::fs::read(&file).unwrap_or_else(|e| panic!("{vector}: {}: {e}", file.display()));
    let request = Request::parse(vector, &text);

    if let Err(e) = request.verify(vector) {
        panic!("{vector}: verify refused AWS's signed request: {e:?}");
    }

    // One byte of the body.
    let mut changed = request.clone();
    match changed.body.last_mut() {
        Some(byte) => *byte ^= 0x01,
        None => changed.body.push(b'x'),
    }
    refused_as_mismatch(vector, "one byte of the body changed", &changed);

    // The last byte of every signed header's (first) value.
    let auth = sigv4::parse(request.authorization()).unwrap();
    for name in &auth.signed_headers {
        let mut changed = request.clone();
        let value = &mut changed
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("{vector}: the signed header {name} is not in the request"))
            .1;
        let last = value.last_mut().unwrap();
        *last = if *last == b'X' { b'Y' } else { b'X' };
        if name == "x-amz-date" {
            // Another date may be refused as malformed or expired before the signature is checked.
            refused(vector, "the last byte of X-Amz-Date changed", &changed);
        } else {
            refused_as_mismatch(
                vector,
                &format!("the last byte of {name} changed"),
                &changed,
            );
        }
    }

    // The path: one byte added, and its last byte changed.
    let mut changed = request.clone();
    changed.path.push('X');
    refused_as_mismatch(vector, "one byte added to the path", &changed);
    if let Some(path) = change_last(&request.path) {
        let mut changed = request.clone();
        changed.path = path;
        refused_as_mismatch(vector, "the last byte of the path changed", &changed);
    }

    // The query, when there is one.
    if let Some(query) = &request.query {
        let mut changed = request.clone();
        changed.query = Some(format!("{query}X"));
        refused_as_mismatch(vector, "one byte added to the query", &changed);
        if let Some(query) = change_last(query) {
            let mut changed = request.clone();
            changed.query = Some(query);
            refused_as_mismatch(vector, "the last byte of the query changed", &changed);
        }
    }

    // One hex digit of the signature.
    let mut changed = request.clone();
    let header = &mut changed
        .headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .unwrap()
        .1;
    let last = header.last_mut().unwrap();
    *last = if *last == b'0' { b'1' } else { b'0' };
    refused_as_mismatch(vector, "one hex digit of the signature changed", &changed);
}

macro_rules! vectors {
    ($($test:ident => $vector:literal,)*) => {
        const VECTORS: &[&str] = &[$($vector),*];
        $(
            #[test]
            fn $test() {
                check($vector);
            }
        )*
    };
}

vectors! {
    get_header_key_duplicate => "get-header-key-duplicate",
    get_header_value_multiline => "get-header-value-multiline",
    get_header_value_order => "get-header-value-order",
    get_header_value_trim => "get-header-value-trim",
    get_relative_normalized => "get-relative-normalized",
    get_relative_relative_normalized => "get-relative-relative-normalized",
    get_slash_dot_slash_normalized => "get-slash-dot-slash-normalized",
    get_slash_normalized => "get-slash-normalized",
    get_slash_pointless_dot_normalized => "get-slash-pointless-dot-normalized",
    get_slashes_normalized => "get-slashes-normalized",
    get_unreserved => "get-unreserved",
    get_utf8 => "get-utf8",
    get_vanilla_empty_query_key => "get-vanilla-empty-query-key",
    get_vanilla_query => "get-vanilla-query",
    get_vanilla_query_order_encoded => "get-vanilla-query-order-encoded",
    get_vanilla_query_order_key_case => "get-vanilla-query-order-key-case",
    get_vanilla_query_unreserved => "get-vanilla-query-unreserved",
    get_vanilla_utf8_query => "get-vanilla-utf8-query",
    get_vanilla_with_session_token => "get-vanilla-with-session-token",
    post_header_key_sort => "post-header-key-sort",
    post_header_value_case => "post-header-value-case",
    post_sts_header_after => "post-sts-header-after",
    post_sts_header_before => "post-sts-header-before",
    post_vanilla => "post-vanilla",
    post_vanilla_query => "post-vanilla-query",
    post_x_www_form_urlencoded => "post-x-www-form-urlencoded",
    post_x_www_form_urlencoded_parameters => "post-x-www-form-urlencoded-parameters",
    get_query_plus => "get-query-plus",
    double_encode_path => "double-encode-path",
}

/// Every vector directory is in the table above (and every table entry has a directory), so a vector
/// copied in is not silently left untested.
#[test]
fn every_vector_directory_is_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = VECTORS.iter().map(|v| (*v).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

/// The suite's `*-unnormalized` vectors sign the path as S3 does, dot segments and doubled slashes
/// kept (`/example/..` signed as `/example/..`). A KMS server normalises the path, as every AWS service
/// but S3 does, so each of these (from `tests/data/sigv4-unnormalized/`) must be refused as a mismatch.
#[test]
fn paths_signed_without_normalisation_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4-unnormalized");
    let vectors = [
        "get-relative-unnormalized",
        "get-relative-relative-unnormalized",
        "get-slash-dot-slash-unnormalized",
        "get-slash-pointless-dot-unnormalized",
        "get-slash-unnormalized",
        "get-slashes-unnormalized",
    ];
    for vector in vectors {
        let text = std::fs::read(dir.join(vector).join("header-signed-request.txt")).unwrap();
        let request = Request::parse(vector, &text);
        assert_eq!(
            request.verify(vector),
            Err(SigV4Error::Mismatch),
            "{vector}: a path signed without normalisation was not refused"
        );
    }
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(
        on_disk,
        vectors.len(),
        "a vector in {} is not tested",
        dir.display()
    );
}

/// Why `get-space-*` is left out and `get-utf8` / `get-vanilla-utf8-query` are not: a raw space is not
/// a valid request target, raw UTF-8 is accepted.
#[test]
fn a_raw_space_is_not_a_request_target_and_raw_utf8_is() {
    assert!("/example space/".parse::<Uri>().is_err());
    for target in ["/ሴ", "/?ሴ=bar"] {
        assert!(
            target.parse::<Uri>().is_ok(),
            "{target:?} does not parse as a URI"
        );
    }
}

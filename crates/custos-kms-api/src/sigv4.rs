//! AWS Signature Version 4, checked on the server side.
//!
//! The `aws-sigv4` crate signs outgoing requests and chooses which headers to sign; a server must instead
//! rebuild the canonical request from exactly the headers the client listed in `SignedHeaders`. That
//! rebuilding is what this module does, following AWS's published algorithm: canonical request →
//! string to sign → HMAC-SHA256 key chain (date, region, service, `aws4_request`) → compare, in
//! constant time.

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// How far a request's `X-Amz-Date` may be from now (AWS allows 15 minutes).
const MAX_SKEW_SECONDS: i64 = 15 * 60;

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    /// The region in the credential scope.
    pub region: String,
    /// The service in the credential scope (`kms`).
    pub service: String,
    /// Lower-case header names, in the order given.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// Why a request's signature is refused, as AWS names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigV4Error {
    /// No `Authorization` header.
    Missing,
    /// A header that does not parse.
    Malformed(&'static str),
    /// The date is too far from now.
    Expired,
    /// The signature does not match.
    Mismatch,
}

/// Parses the `Authorization` header.
pub fn parse(header: &str) -> Result<Authorization, SigV4Error> {
    let rest = header
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or(SigV4Error::Malformed("only AWS4-HMAC-SHA256 is supported"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(SigV4Error::Malformed("unknown Authorization field")),
        }
    }
    let credential = credential.ok_or(SigV4Error::Malformed("no Credential"))?;
    let mut scope = credential.split('/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(SigV4Error::Malformed(
            "Credential is not key/date/region/service/aws4_request",
        ));
    };
    let signed_headers: Vec<String> = signed
        .ok_or(SigV4Error::Malformed("no SignedHeaders"))?
        .split(';')
        .map(str::to_owned)
        .collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Malformed("the host header must be signed"));
    }
    Ok(Authorization {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature
            .ok_or(SigV4Error::Malformed("no Signature"))?
            .to_owned(),
    })
}

#[expect(clippy::expect_used, reason = "HMAC-SHA256 takes keys of any length")]
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A header value as SigV4 canonicalises it: leading and trailing whitespace trimmed, inner runs of spaces
/// collapsed to one. The bytes are kept as they came (no lossy UTF-8 conversion).
fn canonical_value(value: &[u8]) -> Vec<u8> {
    let trimmed = value.trim_ascii();
    let mut out = Vec::with_capacity(trimmed.len());
    for &byte in trimmed {
        if byte == b' ' && out.last() == Some(&b' ') {
            continue;
        }
        out.push(byte);
    }
    out
}

/// RFC 3986 encoding as SigV4 uses it (unreserved characters kept; `/` kept in paths).
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            b'/' if keep_slash => out.push('/'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Undoes `%XX` escapes; a `%` not followed by two hex digits stays as it is. `+` is not a space in SigV4.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                // Both digits are below 16, so this is one byte.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The canonical URI of a path as received, as every AWS service but S3 (KMS included) builds it: dot
/// segments removed and empty segments dropped (`//a/./b/../` → `/a/`), then URI-encoded. The path is
/// encoded as it arrived, still percent-encoded, so an escape in it is encoded a second time
/// (`%3D` → `%253D`), as AWS's signers do.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = String::with_capacity(path.len() + 1);
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    let ends_in_directory = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if normalized.is_empty() || ends_in_directory {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), true)
}

/// The canonical query string: each name and value percent-decoded, then encoded once (so a query is
/// never double-encoded), sorted by encoded name and then encoded value, a missing value as `name=`.
fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The hex signature of a request: canonical request → string to sign → HMAC-SHA256 key chain. The
/// headers named in `auth.signed_headers` must be in `headers`.
pub fn signature(
    auth: &Authorization,
    secret: &SecretString,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    amz_date: &str,
) -> Result<String, SigV4Error> {
    let mut canonical_headers: Vec<u8> = Vec::new();
    for name in &auth.signed_headers {
        let values: Vec<Vec<u8>> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| canonical_value(v.as_bytes()))
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::Malformed("a signed header is missing"));
        }
        canonical_headers.extend_from_slice(name.as_bytes());
        canonical_headers.push(b':');
        canonical_headers.extend_from_slice(&values.join(&b','));
        canonical_headers.push(b'\n');
    }
    let mut canonical_request: Vec<u8> = Vec::new();
    canonical_request.extend_from_slice(
        format!(
            "{method}\n{}\n{}\n",
            canonical_uri(uri.path()),
            canonical_query(uri.query())
        )
        .as_bytes(),
    );
    canonical_request.extend_from_slice(&canonical_headers);
    canonical_request.extend_from_slice(
        format!(
            "\n{}\n{}",
            auth.signed_headers.join(";"),
            hex::encode(Sha256::digest(body))
        )
        .as_bytes(),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(&canonical_request))
    );
    let key = hmac(
        format!("AWS4{}", secret.expose_secret()).as_bytes(),
        auth.date.as_bytes(),
    );
    let key = hmac(&key, auth.region.as_bytes());
    let key = hmac(&key, auth.service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    Ok(hex::encode(hmac(&key, string_to_sign.as_bytes())))
}

/// The `Authorization` header value for `auth` (its `signature` field is ignored and computed).
pub fn authorization_header(
    auth: &Authorization,
    secret: &SecretString,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    amz_date: &str,
) -> Result<String, SigV4Error> {
    let signature = signature(auth, secret, method, uri, headers, body, amz_date)?;
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={signature}",
        auth.access_key_id,
        auth.date,
        auth.region,
        auth.service,
        auth.signed_headers.join(";")
    ))
}

/// Checks a request's signature with the secret of its access key, and that `X-Amz-Date` is within 15
/// minutes of `now`.
pub fn verify(
    auth: &Authorization,
    secret: &SecretString,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
) -> Result<(), SigV4Error> {
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigV4Error::Malformed("no X-Amz-Date header"))?;
    let at = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", amz_date)
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .ok_or(SigV4Error::Malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?
        .timestamp();
    if (now.as_second() - at.as_second()).abs() > MAX_SKEW_SECONDS {
        return Err(SigV4Error::Expired);
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Malformed(
            "the credential date is not the X-Amz-Date day",
        ));
    }
    let expected = signature(auth, secret, method, uri, headers, body, amz_date)?;
    if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example (the `get-vanilla` case of the SigV4 test suite): GET / on
    /// example.amazonaws.com, service `service`, region `us-east-1`, 2015-08-30T12:36:00Z.
    #[test]
    fn the_aws_test_suite_vanilla_request_verifies() {
        let header =
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                      SignedHeaders=host;x-amz-date, \
                      Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let auth = parse(header).unwrap();
        let secret = SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned());
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        let now: jiff::Timestamp = "2015-08-30T12:40:00Z".parse().unwrap();
        verify(&auth, &secret, &Method::GET, &uri, &headers, b"", now).unwrap();
        // Another body, another secret, or a stale date is refused.
        assert_eq!(
            verify(&auth, &secret, &Method::GET, &uri, &headers, b"x", now),
            Err(SigV4Error::Mismatch)
        );
        let other = SecretString::from("another".to_owned());
        assert_eq!(
            verify(&auth, &other, &Method::GET, &uri, &headers, b"", now),
            Err(SigV4Error::Mismatch)
        );
        let late: jiff::Timestamp = "2015-08-30T13:00:00Z".parse().unwrap();
        assert_eq!(
            verify(&auth, &secret, &Method::GET, &uri, &headers, b"", late),
            Err(SigV4Error::Expired)
        );
        // The header this module writes is the one AWS's example carries.
        assert_eq!(
            authorization_header(
                &auth,
                &secret,
                &Method::GET,
                &uri,
                &headers,
                b"",
                "20150830T123600Z"
            )
            .unwrap(),
            header.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert!(parse("Bearer x").is_err());
        assert!(parse("AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=0").is_err());
    }

    #[test]
    fn paths_are_normalised_then_encoded_and_escapes_encoded_again() {
        for (path, canonical) in [
            ("/", "/"),
            ("", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("/example/..", "/"),
            ("/example1/example2/../..", "/"),
            ("/./example", "/example"),
            ("//example//", "/example/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../a", "/a"),
            (
                "/test/@connections/JBDvjfGEIAMCERw%3D",
                "/test/%40connections/JBDvjfGEIAMCERw%253D",
            ),
            ("/-._~AZaz09", "/-._~AZaz09"),
        ] {
            assert_eq!(canonical_uri(path), canonical, "path {path:?}");
        }
    }

    #[test]
    fn queries_are_decoded_encoded_once_and_sorted_by_name_then_value() {
        for (query, canonical) in [
            (None, ""),
            (Some(""), ""),
            (
                Some("Param2=value2&Param1=value1"),
                "Param1=value1&Param2=value2",
            ),
            (
                Some("Param1=value2&Param1=Value1"),
                "Param1=Value1&Param1=value2",
            ),
            (
                Some("Param1=value2&Param1=value1"),
                "Param1=value1&Param1=value2",
            ),
            (
                Some("Param-3=Value3&Param=Value2&%E1%88%B4=Value1"),
                "%E1%88%B4=Value1&Param=Value2&Param-3=Value3",
            ),
            (Some("Param1"), "Param1="),
            (Some("Param1=&a=b"), "Param1=&a=b"),
            (Some("c+d"), "c%2Bd="),
            (Some("a=x%2Fy&b=2%203"), "a=x%2Fy&b=2%203"),
            (Some("a=x/y"), "a=x%2Fy"),
            (Some("a=%zz%4"), "a=%25zz%254"),
        ] {
            assert_eq!(canonical_query(query), canonical, "query {query:?}");
        }
    }

    #[test]
    fn header_values_are_trimmed_and_runs_of_spaces_collapsed() {
        assert_eq!(canonical_value(b"  value1 "), b"value1");
        assert_eq!(canonical_value(b"\"a   b   c\""), b"\"a b c\"");
        assert_eq!(canonical_value(b"VALUE1"), b"VALUE1");
        assert_eq!(canonical_value(b"a\xffb"), b"a\xffb");
    }
}

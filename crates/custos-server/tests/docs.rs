//! The documents tell the truth about the error codes: every code core and the server can answer is in
//! the README's code table (with its status) and in the OpenAPI document's list of codes, and neither
//! lists a code that does not exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use custos_types::ErrorCode;

#[test]
fn the_openapi_document_lists_exactly_the_codes() {
    let spec: serde_json::Value = serde_json::from_str(custos_server::OPENAPI_JSON).unwrap();
    let listed: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("the Error schema lists its codes")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let known: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, known);
}

#[test]
fn the_readme_gives_every_code_its_status() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    for code in ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.status());
        assert!(readme.contains(&row), "README lacks the row {row}");
    }
    let rows = readme
        .lines()
        .filter(|l| {
            l.starts_with("| `")
                && l.split('|')
                    .nth(2)
                    .is_some_and(|s| s.trim().parse::<u16>().is_ok())
        })
        .count();
    assert_eq!(
        rows,
        ErrorCode::ALL.len(),
        "the README's code table has codes that do not exist"
    );
}

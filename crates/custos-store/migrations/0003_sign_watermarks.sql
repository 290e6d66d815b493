-- Migration 0003: applied once, in order; never edited after release.
CREATE TABLE sign_watermarks (
    key_name     TEXT PRIMARY KEY REFERENCES keys(name),
    sequence     INTEGER NOT NULL,           -- the highest sequence signed (0 ..= i64::MAX)
    payload_hash BLOB NOT NULL,              -- SHA-256 of the bytes signed at that sequence
    version      INTEGER NOT NULL,
    provider     TEXT NOT NULL,
    signature    BLOB NOT NULL               -- the 64-byte signature released for it
);

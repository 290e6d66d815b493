-- Migration 0001: applied once, in order; never edited after release.
CREATE TABLE keys (
    name        TEXT PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    providers   TEXT NOT NULL,            -- JSON array of provider names, primary first
    created_at  TEXT NOT NULL
);
CREATE TABLE key_versions (
    key_name    TEXT NOT NULL REFERENCES keys(name),
    version     INTEGER NOT NULL CHECK (version >= 1),
    state       TEXT NOT NULL CHECK (state IN ('current','enabled','disabled','destroyed')),
    public_key  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (key_name, version)
);
-- At most one current version per key, enforced by the database itself.
CREATE UNIQUE INDEX key_versions_one_current ON key_versions(key_name) WHERE state = 'current';
CREATE TABLE key_locations (
    key_name    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    provider    TEXT NOT NULL,
    handle      TEXT NOT NULL,
    PRIMARY KEY (key_name, version, provider),
    FOREIGN KEY (key_name, version) REFERENCES key_versions(key_name, version)
);
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    scopes      TEXT NOT NULL,            -- JSON array of scope strings
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);
CREATE TABLE sealed_keys (
    provider    TEXT NOT NULL,
    handle      TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (provider, handle)
);
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL
);

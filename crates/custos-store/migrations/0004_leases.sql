-- Migration 0004: applied once, in order; never edited after release.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL              -- Unix milliseconds
);

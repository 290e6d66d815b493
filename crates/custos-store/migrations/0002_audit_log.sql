-- Migration 0002: applied once, in order; never edited after release.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    time_us     INTEGER NOT NULL,             -- microseconds since the Unix epoch, for range queries
    operation   TEXT NOT NULL,
    key_name    TEXT,
    actor_id    TEXT,
    actor_name  TEXT,
    outcome     TEXT NOT NULL,
    record      TEXT NOT NULL                 -- the record as JSON, exactly as it was hashed
);
CREATE INDEX audit_log_time ON audit_log(time_us);
CREATE TABLE audit_checkpoints (
    seq         INTEGER PRIMARY KEY,
    record      TEXT NOT NULL
);
ALTER TABLE api_tokens ADD COLUMN last_used_at TEXT;

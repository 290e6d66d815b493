-- Migration 0005: applied once, in order; never edited after release.
--
-- Key state (enabled, disabled, pending deletion with its date, destroyed), key kind and description
-- belong to the key; aliases, sealing (symmetric) keys, pending imports and keys that client APIs name by
-- their own ids become tables of their own. What earlier versions kept for them in `settings` (as JSON
-- blobs written by the KMS-compatible and BitGo APIs) moves here, and the old settings are removed.

ALTER TABLE keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'standard'
    CHECK (kind IN ('standard','bip32'));
ALTER TABLE keys ADD COLUMN state TEXT NOT NULL DEFAULT 'enabled'
    CHECK (state IN ('enabled','disabled','pending_deletion','destroyed'));
ALTER TABLE keys ADD COLUMN deletion_at TEXT;      -- set exactly when state = 'pending_deletion'
ALTER TABLE keys ADD COLUMN description TEXT NOT NULL DEFAULT '';

CREATE TABLE key_tags (
    key_id      TEXT NOT NULL,                 -- a key name or a sealing key id
    tag         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (key_id, tag)
);

CREATE TABLE aliases (
    name        TEXT PRIMARY KEY,
    target      TEXT NOT NULL,                 -- a key name or a sealing key id
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE sealing_keys (
    id          TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('enabled','disabled','pending_deletion','destroyed')),
    deletion_at TEXT,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE imports (
    id                  TEXT PRIMARY KEY,
    algorithm           TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    state               TEXT NOT NULL CHECK (state IN ('enabled','disabled','pending_deletion','destroyed')),
    deletion_at         TEXT,
    created_at          TEXT NOT NULL,
    wrapping_key        BLOB,                  -- the one-time RSA key, sealed by the provider
    token_hash          BLOB,                  -- SHA-256 of the import token
    wrapping_algorithm  TEXT,
    valid_to            TEXT
);

CREATE TABLE client_keys (
    namespace   TEXT NOT NULL,
    id          TEXT NOT NULL,
    key_name    TEXT REFERENCES keys(name),
    sealed      BLOB,                          -- the client's own key material, sealed by the provider
    attributes  TEXT NOT NULL DEFAULT '{}',    -- JSON object of strings
    created_at  TEXT NOT NULL,
    PRIMARY KEY (namespace, id)
);

-- KMS key states and descriptions of Custos keys.
UPDATE keys SET
    state = CASE json_extract(CAST(s.value AS TEXT), '$.state')
        WHEN 'Disabled' THEN 'disabled'
        WHEN 'PendingDeletion' THEN 'pending_deletion'
        ELSE 'enabled' END,
    deletion_at = CASE json_extract(CAST(s.value AS TEXT), '$.state')
        WHEN 'PendingDeletion' THEN json_extract(CAST(s.value AS TEXT), '$.deletion_date') END,
    description = COALESCE(json_extract(CAST(s.value AS TEXT), '$.description'), '')
FROM settings AS s
WHERE s.name = 'kms_state:' || keys.name;

-- A pending deletion without a date cannot be kept as one; it becomes disabled.
UPDATE keys SET state = 'disabled' WHERE state = 'pending_deletion' AND deletion_at IS NULL;

-- KMS symmetric keys: the setting held the provider's name.
INSERT INTO sealing_keys (id, provider, state, deletion_at, description, created_at)
SELECT substr(sym.name, length('kms_symmetric:') + 1),
       CAST(sym.value AS TEXT),
       CASE json_extract(CAST(st.value AS TEXT), '$.state')
           WHEN 'Disabled' THEN 'disabled'
           WHEN 'PendingDeletion' THEN
               CASE WHEN json_extract(CAST(st.value AS TEXT), '$.deletion_date') IS NULL
                    THEN 'disabled' ELSE 'pending_deletion' END
           ELSE 'enabled' END,
       CASE json_extract(CAST(st.value AS TEXT), '$.state')
           WHEN 'PendingDeletion' THEN json_extract(CAST(st.value AS TEXT), '$.deletion_date') END,
       COALESCE(json_extract(CAST(st.value AS TEXT), '$.description'), ''),
       COALESCE(json_extract(CAST(st.value AS TEXT), '$.created'), strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
FROM settings AS sym
LEFT JOIN settings AS st ON st.name = 'kms_state:' || substr(sym.name, length('kms_symmetric:') + 1)
WHERE sym.name LIKE 'kms\_symmetric:%' ESCAPE '\';

-- KMS keys awaiting imported key material (the setting held the KeySpec), with their wrapping keys.
INSERT INTO imports (id, algorithm, description, state, created_at,
                     wrapping_key, token_hash, wrapping_algorithm, valid_to)
SELECT substr(p.name, length('kms_pending:') + 1),
       CASE CAST(p.value AS TEXT)
           WHEN 'ECC_NIST_P256' THEN 'p256'
           WHEN 'ECC_SECG_P256K1' THEN 'secp256k1'
           ELSE 'ed25519' END,
       COALESCE(json_extract(CAST(st.value AS TEXT), '$.description'), ''),
       'enabled',
       COALESCE(json_extract(CAST(st.value AS TEXT), '$.created'), strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
       unhex(json_extract(CAST(i.value AS TEXT), '$.sealed_wrapping_key')),
       unhex(json_extract(CAST(i.value AS TEXT), '$.token_hash')),
       json_extract(CAST(i.value AS TEXT), '$.algorithm'),
       json_extract(CAST(i.value AS TEXT), '$.valid_to')
FROM settings AS p
LEFT JOIN settings AS st ON st.name = 'kms_state:' || substr(p.name, length('kms_pending:') + 1)
LEFT JOIN settings AS i ON i.name = 'kms_import:' || substr(p.name, length('kms_pending:') + 1)
WHERE p.name LIKE 'kms\_pending:%' ESCAPE '\';

-- KMS aliases: the setting held the target key id.
INSERT INTO aliases (name, target, created_at, updated_at)
SELECT substr(name, length('kms_alias:') + 1), CAST(value AS TEXT),
       strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
FROM settings WHERE name LIKE 'kms\_alias:%' ESCAPE '\';

-- BitGo keys stored by clients (sealed private keys) and generated by Custos (Custos keys).
INSERT INTO client_keys (namespace, id, key_name, sealed, attributes, created_at)
SELECT 'bitgo:' || json_extract(CAST(value AS TEXT), '$.source'),
       json_extract(CAST(value AS TEXT), '$.pub'),
       NULL,
       unhex(json_extract(CAST(value AS TEXT), '$.sealed')),
       json_object('coin', json_extract(CAST(value AS TEXT), '$.coin'),
                   'type', json_extract(CAST(value AS TEXT), '$.type')),
       json_extract(CAST(value AS TEXT), '$.created_at')
FROM settings WHERE name LIKE 'bitgo\_key:%' ESCAPE '\';

INSERT OR IGNORE INTO client_keys (namespace, id, key_name, sealed, attributes, created_at)
SELECT 'bitgo:' || json_extract(CAST(s.value AS TEXT), '$.source'),
       json_extract(CAST(s.value AS TEXT), '$.pub'),
       json_extract(CAST(s.value AS TEXT), '$.key'),
       NULL,
       json_object('coin', json_extract(CAST(s.value AS TEXT), '$.coin'),
                   'type', json_extract(CAST(s.value AS TEXT), '$.type')),
       k.created_at
FROM settings AS s JOIN keys AS k ON k.name = json_extract(CAST(s.value AS TEXT), '$.key')
WHERE s.name LIKE 'bitgo\_generated:%' ESCAPE '\';

DELETE FROM settings
WHERE name LIKE 'kms\_state:%' ESCAPE '\'
   OR name LIKE 'kms\_symmetric:%' ESCAPE '\'
   OR name LIKE 'kms\_pending:%' ESCAPE '\'
   OR name LIKE 'kms\_import:%' ESCAPE '\'
   OR name LIKE 'kms\_alias:%' ESCAPE '\'
   OR name LIKE 'bitgo\_key:%' ESCAPE '\'
   OR name LIKE 'bitgo\_generated:%' ESCAPE '\';

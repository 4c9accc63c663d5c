-- SQLite schema version 1 (PRAGMA user_version = 1): accounts, keys (digests and hints
-- only), the key map's version and change log, settings. Applied by sqlite.rs in one
-- IMMEDIATE transaction; never edit a released migration, add the next file instead.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    digest       TEXT NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('secret', 'publishable')),
    environment  TEXT NOT NULL CHECK (environment IN ('test', 'production')),
    origin       TEXT NOT NULL CHECK (origin IN ('issued', 'imported')),
    created_at   INTEGER NOT NULL,
    disabled_at  INTEGER,
    expires_at   INTEGER,
    rolled_at    INTEGER,
    replaced_by  TEXT REFERENCES keys(id),
    revoked_at   INTEGER,
    removed_at   INTEGER
);
CREATE INDEX keys_by_account ON keys(account_id);
CREATE INDEX keys_in_map ON keys(digest) WHERE removed_at IS NULL;
CREATE INDEX keys_expiring ON keys(expires_at) WHERE removed_at IS NULL;
-- One row: the key map's version and the oldest version the change log can answer from.
CREATE TABLE keymap_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    log_start  INTEGER NOT NULL
);
INSERT INTO keymap_state (id, version, log_start) VALUES (1, 0, 0);
CREATE TABLE keymap_changes (
    version  INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    op       TEXT NOT NULL CHECK (op IN ('upsert', 'remove')),
    PRIMARY KEY (version, digest)
) WITHOUT ROWID;
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

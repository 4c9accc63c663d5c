-- PostgreSQL schema version 1: the same tables as SQLite's version 1. Applied by postgres.rs
-- in one transaction under an advisory lock (replicas starting together migrate once), and
-- recorded in keygate_schema_migrations; never edit a released migration, add the next file.
-- Times are unix seconds.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    created_at  BIGINT NOT NULL
);
CREATE TABLE keys (
    -- Insertion order, for listings (SQLite's rowid).
    seq          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    digest       TEXT NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('secret', 'publishable')),
    environment  TEXT NOT NULL CHECK (environment IN ('test', 'production')),
    origin       TEXT NOT NULL CHECK (origin IN ('issued', 'imported')),
    created_at   BIGINT NOT NULL,
    disabled_at  BIGINT,
    expires_at   BIGINT,
    rolled_at    BIGINT,
    replaced_by  TEXT REFERENCES keys(id),
    revoked_at   BIGINT,
    removed_at   BIGINT
);
CREATE INDEX keys_by_account ON keys(account_id);
CREATE INDEX keys_in_map ON keys(digest) WHERE removed_at IS NULL;
CREATE INDEX keys_expiring ON keys(expires_at) WHERE removed_at IS NULL;
-- One row: the key map's version and the oldest version the change log can answer from.
-- Every change locks this row first (SELECT … FOR UPDATE) and bumps the version in the same
-- transaction, so writers on all replicas are serialised and versions strictly rise.
CREATE TABLE keymap_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    BIGINT NOT NULL CHECK (version >= 0),
    log_start  BIGINT NOT NULL CHECK (log_start >= 0)
);
INSERT INTO keymap_state (id, version, log_start) VALUES (1, 0, 0);
CREATE TABLE keymap_changes (
    version  BIGINT NOT NULL,
    digest   TEXT NOT NULL,
    op       TEXT NOT NULL CHECK (op IN ('upsert', 'remove')),
    PRIMARY KEY (version, digest)
);
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- PostgreSQL schema: customers who sign in to their own account (version 0002 is the store id's).
-- Users, pending sign-ups and password resets (tokens kept as SHA-256 digests only), and
-- web sessions (ids kept as digests only). Times are unix seconds. Never edit a released
-- migration; add the next file instead.
ALTER TABLE accounts ADD COLUMN disabled_at BIGINT;
CREATE TABLE users (
    -- Insertion order, for listings (SQLite's rowid).
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                   TEXT PRIMARY KEY,
    -- Lower-cased; one user per address.
    email                TEXT NOT NULL UNIQUE,
    account_id           TEXT NOT NULL REFERENCES accounts(id),
    -- Argon2id in PHC string form (parameters and salt included).
    password_hash        TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    password_changed_at  BIGINT NOT NULL,
    disabled_at          BIGINT
);
CREATE INDEX users_by_account ON users(account_id);
-- A sign-up waiting for its email link. `used_at` is kept (until pruned) so that a link
-- clicked twice is told so, rather than "unknown".
CREATE TABLE signups (
    token_digest   TEXT PRIMARY KEY,
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);
CREATE INDEX signups_by_expiry ON signups(expires_at);
CREATE TABLE password_resets (
    token_digest  TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);
CREATE INDEX password_resets_by_user ON password_resets(user_id);
CREATE INDEX password_resets_by_expiry ON password_resets(expires_at);
CREATE TABLE user_sessions (
    id_digest   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX user_sessions_by_user ON user_sessions(user_id);
CREATE INDEX user_sessions_by_expiry ON user_sessions(expires_at);

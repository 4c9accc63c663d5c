-- PostgreSQL schema version 2: the store's identity, and every key-map version issued (as
-- SQLite's version 2). Applied by postgres.rs in one transaction under the migration lock;
-- never edit a released migration.
--
-- Every version this database ever answered with and still has the changes after: a poll's
-- `since` gets a delta only when it is one of these (membership, not a range: versions
-- follow the clock from now on and are no longer consecutive). Trimmed with the change log.
CREATE TABLE keymap_versions (
    version  BIGINT PRIMARY KEY CHECK (version >= 0)
);
-- Before this schema versions counted up by one, so the issued ones the log can answer
-- from are log_start..version (at most the last 10,001, whatever the counter says).
INSERT INTO keymap_versions (version)
SELECT generate_series(GREATEST(log_start, version - 10000), version)
FROM keymap_state WHERE id = 1;
-- The store's identity: 128 random bits (from two gen_random_uuid()s, PostgreSQL 13+),
-- created once per database and shared by every replica over it; a backup keeps it.
INSERT INTO settings (name, value)
VALUES ('store_id', left(encode(sha256(convert_to(
    gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'), 32));

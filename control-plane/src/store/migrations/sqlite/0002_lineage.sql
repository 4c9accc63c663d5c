-- SQLite schema version 2: the store's identity, and every key-map version issued.
-- Applied by sqlite.rs in one IMMEDIATE transaction; never edit a released migration.
--
-- Every version this database ever answered with and still has the changes after: a poll's
-- `since` gets a delta only when it is one of these (membership, not a range: versions
-- follow the clock from now on and are no longer consecutive). Trimmed with the change log.
CREATE TABLE keymap_versions (
    version  INTEGER PRIMARY KEY
);
-- Before this schema versions counted up by one, so the issued ones the log can answer
-- from are log_start..version (at most the last 10,001, whatever the counter says).
WITH RECURSIVE issued(v) AS (
    SELECT MAX(log_start, version - 10000) FROM keymap_state WHERE id = 1
    UNION ALL
    SELECT issued.v + 1 FROM issued, keymap_state
    WHERE keymap_state.id = 1 AND issued.v < keymap_state.version
)
INSERT INTO keymap_versions (version) SELECT v FROM issued;
-- The store's identity: 128 random bits, created once per database (a backup keeps it).
INSERT INTO settings (name, value) VALUES ('store_id', lower(hex(randomblob(16))));

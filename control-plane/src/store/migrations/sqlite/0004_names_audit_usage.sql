-- SQLite schema version 4: key names, the audit trail, and the usage the filters report.
-- Times are unix seconds, days are days since 1970-01-01 (UTC). Never edit a released
-- migration; add the next file instead.
--
-- A name for people ("iOS app 2.3"); never in the key map.
ALTER TABLE keys ADD COLUMN name TEXT;
-- Every change made for someone, written in the transaction of the change. Ids only, never
-- a plaintext key or token. `key_ids` is space-separated.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    client      TEXT,
    action      TEXT NOT NULL,
    account_id  TEXT,
    user_id     TEXT,
    key_ids     TEXT NOT NULL DEFAULT '',
    detail      TEXT
);
CREATE INDEX audit_events_by_account ON audit_events(account_id, seq);
CREATE INDEX audit_events_by_time ON audit_events(at);
-- Each key's last reported use, minute precision; it never goes back.
CREATE TABLE key_last_used (
    key_id        TEXT PRIMARY KEY REFERENCES keys(id),
    last_used_at  INTEGER NOT NULL
) WITHOUT ROWID;
-- Requests per key and day, pruned after the retention period.
CREATE TABLE key_usage_days (
    key_id   TEXT NOT NULL REFERENCES keys(id),
    day      INTEGER NOT NULL,
    allowed  INTEGER NOT NULL,
    refused  INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
CREATE INDEX key_usage_days_by_day ON key_usage_days(day);
-- The ids of usage reports stored (kept for the retention period): a retried report is
-- recognised and not counted twice.
CREATE TABLE usage_reports (
    id           TEXT PRIMARY KEY,
    received_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX usage_reports_by_time ON usage_reports(received_at);

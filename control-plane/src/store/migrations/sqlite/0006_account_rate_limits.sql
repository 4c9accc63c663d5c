-- SQLite schema version 6: an account's default rate limit, shipped in the key map as the
-- `rate_limit` of each of its keys that has no limit of its own (a key's own limit wins).
-- All three NULL: no default. Never edit a released migration; add the next file instead.
ALTER TABLE accounts ADD COLUMN rate_requests INTEGER;
ALTER TABLE accounts ADD COLUMN rate_per TEXT;
ALTER TABLE accounts ADD COLUMN rate_burst INTEGER;

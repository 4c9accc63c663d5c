-- PostgreSQL schema version 5: per-key rate limits, shipped in the key map as the key's
-- `rate_limit` ({"requests": N, "per": "second"|"minute", "burst": B}). All three NULL: no
-- limit. Never edit a released migration; add the next file instead.
ALTER TABLE keys ADD COLUMN rate_requests BIGINT;
ALTER TABLE keys ADD COLUMN rate_per TEXT;
ALTER TABLE keys ADD COLUMN rate_burst BIGINT;

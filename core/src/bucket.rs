//! Key-map buckets: how a synced key map lives in Envoy's shared data, one copy per Envoy
//! process. Keys are spread over `BUCKETS` buckets by the first bits of their digest; each
//! bucket is one shared-data value holding its entries back to back in a compact binary
//! form, so a lookup copies one small bucket, and a roll rewrites one bucket, never the map.
//!
//! Entry layout: digest (32 bytes) | flags (1) | expires_at (8, LE, if flagged) |
//! rate limit (requests u32 LE, burst u32 LE, period 1 byte, if flagged) |
//! account_id length (1) + bytes | key_id length (1) + bytes.

use crate::prelude::*;

use crate::digest::Digest;
use crate::key::{Environment, KeyKind, KeyType};
use crate::rate_limit::{Period, RateLimit};

/// Number of buckets: 2^16 keeps a bucket near 1 KB at a million keys.
pub const BUCKETS: usize = 1 << 16;

const FLAG_PUBLISHABLE: u8 = 1;
const FLAG_PRODUCTION: u8 = 2;
const FLAG_DISABLED: u8 = 4;
const FLAG_EXPIRES: u8 = 8;
const FLAG_LIMIT: u8 = 16;
/// Every flag this encoding knows: an entry with another bit set is not one of ours.
const KNOWN_FLAGS: u8 =
    FLAG_PUBLISHABLE | FLAG_PRODUCTION | FLAG_DISABLED | FLAG_EXPIRES | FLAG_LIMIT;

/// What is known about a key, borrowed from wherever it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo<'a> {
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub kind: KeyKind,
    pub expires_at: Option<u64>,
    pub disabled: bool,
    pub limit: Option<RateLimit>,
}

/// The bucket a digest belongs to.
pub fn bucket_of(digest: &Digest) -> usize {
    (usize::from(digest.0[0]) << 8 | usize::from(digest.0[1])) & (BUCKETS - 1)
}

/// Appends one entry. Identifiers longer than 255 bytes cannot be encoded: the config
/// validation caps them at 128.
pub fn encode_entry(out: &mut Vec<u8>, digest: &Digest, info: &KeyInfo<'_>) {
    let mut flags = 0;
    if info.kind.key_type == KeyType::Publishable {
        flags |= FLAG_PUBLISHABLE;
    }
    if info.kind.environment == Environment::Production {
        flags |= FLAG_PRODUCTION;
    }
    if info.disabled {
        flags |= FLAG_DISABLED;
    }
    if info.expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if info.limit.is_some() {
        flags |= FLAG_LIMIT;
    }
    out.extend_from_slice(&digest.0);
    out.push(flags);
    if let Some(at) = info.expires_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    if let Some(limit) = &info.limit {
        out.extend_from_slice(&limit.requests.to_le_bytes());
        out.extend_from_slice(&limit.burst.to_le_bytes());
        out.push(match limit.period {
            Period::Second => 0,
            Period::Minute => 1,
        });
    }
    for s in [info.account_id, info.key_id] {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
}

/// Iterates a bucket's entries; stops at the first malformed byte (a bucket is only ever
/// written by `encode_entry`, so that means a bug, and no entry past it is trusted).
pub fn entries(bucket: &[u8]) -> Entries<'_> {
    Entries { rest: bucket }
}

pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// The bytes not yet read: empty once every entry was read, and not empty after a
    /// malformed entry stopped the iteration.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (Digest, KeyInfo<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (digest, rest) = split_array::<32>(self.rest)?;
        let (&flags, mut rest) = rest.split_first()?;
        if flags & !KNOWN_FLAGS != 0 {
            return None;
        }
        let mut expires_at = None;
        if flags & FLAG_EXPIRES != 0 {
            let (at, after) = split_array::<8>(rest)?;
            expires_at = Some(u64::from_le_bytes(at));
            rest = after;
        }
        let mut limit = None;
        if flags & FLAG_LIMIT != 0 {
            let (numbers, after) = split_array::<9>(rest)?;
            let [r0, r1, r2, r3, b0, b1, b2, b3, period] = numbers;
            let period = match period {
                0 => Period::Second,
                1 => Period::Minute,
                _ => return None,
            };
            let requests = u32::from_le_bytes([r0, r1, r2, r3]);
            let burst = u32::from_le_bytes([b0, b1, b2, b3]);
            limit = Some(RateLimit::new(requests.into(), period, Some(burst.into())).ok()?);
            rest = after;
        }
        let (account_id, rest) = split_str(rest)?;
        let (key_id, rest) = split_str(rest)?;
        self.rest = rest;
        let key_type = if flags & FLAG_PUBLISHABLE != 0 {
            KeyType::Publishable
        } else {
            KeyType::Secret
        };
        let environment = if flags & FLAG_PRODUCTION != 0 {
            Environment::Production
        } else {
            Environment::Test
        };
        Some((
            Digest(digest),
            KeyInfo {
                account_id,
                key_id,
                kind: KeyKind::new(key_type, environment),
                expires_at,
                disabled: flags & FLAG_DISABLED != 0,
                limit,
            },
        ))
    }
}

/// Finds a digest in a bucket. Every entry's digest is compared in constant time.
pub fn find<'a>(bucket: &'a [u8], digest: &Digest) -> Option<KeyInfo<'a>> {
    entries(bucket)
        .find(|(d, _)| d == digest)
        .map(|(_, info)| info)
}

/// A bucket with `removes` taken out and `upserts` put in (replacing same digests).
/// Returns the new bytes and how many entries they hold.
pub fn rewrite<'a>(
    bucket: &[u8],
    upserts: &[(Digest, KeyInfo<'a>)],
    removes: &[Digest],
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(bucket.len() + upserts.len() * 64);
    let mut count = 0;
    for (digest, info) in entries(bucket) {
        let replaced = removes.contains(&digest) || upserts.iter().any(|(d, _)| *d == digest);
        if !replaced {
            encode_entry(&mut out, &digest, &info);
            count += 1;
        }
    }
    for (digest, info) in upserts {
        encode_entry(&mut out, digest, info);
        count += 1;
    }
    (out, count)
}

fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?;
    let mut array = [0u8; N];
    array.copy_from_slice(head);
    Some((array, bytes.get(N..)?))
}

fn split_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    let s = core::str::from_utf8(rest.get(..len)?).ok()?;
    Some((s, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(account: &'a str, key: &'a str, expires_at: Option<u64>) -> KeyInfo<'a> {
        KeyInfo {
            account_id: account,
            key_id: key,
            kind: KeyKind::new(KeyType::Publishable, Environment::Production),
            expires_at,
            disabled: true,
            limit: None,
        }
    }

    #[test]
    fn entries_round_trip_and_are_found_by_digest() {
        let a = Digest::of_key("a");
        let b = Digest::of_key("b");
        let mut bucket = Vec::new();
        encode_entry(&mut bucket, &a, &info("acct_1", "key_a", Some(7)));
        encode_entry(&mut bucket, &b, &info("acct_2", "key_b", None));
        assert_eq!(find(&bucket, &a), Some(info("acct_1", "key_a", Some(7))));
        assert_eq!(find(&bucket, &b), Some(info("acct_2", "key_b", None)));
        assert_eq!(find(&bucket, &Digest::of_key("c")), None);
        assert_eq!(entries(&bucket).count(), 2);
    }

    #[test]
    fn rewrite_replaces_removes_and_adds() {
        let (a, b, c) = (
            Digest::of_key("a"),
            Digest::of_key("b"),
            Digest::of_key("c"),
        );
        let mut bucket = Vec::new();
        encode_entry(&mut bucket, &a, &info("x", "a1", None));
        encode_entry(&mut bucket, &b, &info("x", "b1", None));
        let (out, count) = rewrite(
            &bucket,
            &[(a, info("x", "a2", None)), (c, info("x", "c1", None))],
            &[b],
        );
        assert_eq!(count, 2);
        assert_eq!(find(&out, &a).map(|i| i.key_id), Some("a2"));
        assert_eq!(find(&out, &b), None);
        assert_eq!(find(&out, &c).map(|i| i.key_id), Some("c1"));
    }

    #[test]
    fn truncated_buckets_never_panic_and_trust_no_partial_entry() {
        let a = Digest::of_key("a");
        let mut bucket = Vec::new();
        encode_entry(&mut bucket, &a, &info("acct", "key", Some(1)));
        for cut in 0..bucket.len() {
            assert_eq!(find(&bucket[..cut], &a), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_rate_limit_round_trips_and_unknown_flags_are_refused() {
        let a = Digest::of_key("a");
        let mut limited = info("acct", "key", Some(3));
        limited.limit = Some(RateLimit::new(100, Period::Minute, Some(20)).expect("valid"));
        let mut bucket = Vec::new();
        encode_entry(&mut bucket, &a, &limited);
        assert_eq!(find(&bucket, &a), Some(limited));
        let mut unknown = bucket.clone();
        unknown[32] |= 0x80;
        assert_eq!(find(&unknown, &a), None);
        let mut bad_period = bucket;
        bad_period[32 + 1 + 8 + 8] = 7;
        assert_eq!(find(&bad_period, &a), None);
    }

    #[test]
    fn buckets_spread_by_the_first_digest_bytes() {
        let mut d = Digest([0; 32]);
        d.0[0] = 0xAB;
        d.0[1] = 0xCD;
        assert_eq!(bucket_of(&d), 0xABCD);
    }
}

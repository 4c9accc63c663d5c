//! The binary full map: what a million keys travel as. JSON would be about 190 bytes a key
//! and a costly parse; this is the bucket encoding itself, about 75 bytes a key, sorted by
//! digest so that each bucket's entries are contiguous. Read in chunks straight from the
//! answer (the wasm fetcher never holds the whole of it), validated whole before anything
//! is written.

use alloc::format;
use alloc::vec::Vec;

use crate::state::{Applied, BucketStore, Guard, Refusal, SyncState};
use keygate_core::bucket::{bucket_of, encode_entry, entries, BUCKETS};
use keygate_core::config::{is_valid_identifier, ConfigError, Problem};
use keygate_core::digest::Digest;
use keygate_core::keymap::KeyMap;

/// Content type of the binary full map.
pub const BINARY_CONTENT_TYPE: &str = "application/x-keygate-map";
/// The first form; the second may hold entries with a rate limit, which a filter built
/// before limits cannot read: it refuses the whole answer for its unknown magic (and keeps
/// its last map) rather than misread an entry. keygatectl writes the first form while no
/// key has a limit.
const BINARY_MAGIC: &[u8; 8] = b"KGMAP01\n";
const BINARY_MAGIC_LIMITS: &[u8; 8] = b"KGMAP02\n";
/// Magic, version (u64 LE), key count (u32 LE).
pub const BINARY_HEADER_LEN: usize = 20;
/// The longest entry `encode_entry` writes: digest, flags, expiry, rate limit, two 255-byte
/// strings.
const MAX_ENTRY_LEN: usize = 32 + 1 + 8 + 9 + 1 + 255 + 1 + 255;
/// How much of the answer is in the VM at once while it is read.
pub const CHUNK_LEN: usize = 1 << 20;

/// Encodes a full map: magic, version (u64 LE), key count (u32 LE), entries by digest.
pub fn encode_binary_full(version: u64, map: &KeyMap) -> Vec<u8> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(BINARY_HEADER_LEN + entries.len() * 80);
    let limited = entries.iter().any(|(_, entry)| entry.limit.is_some());
    out.extend_from_slice(if limited {
        BINARY_MAGIC_LIMITS
    } else {
        BINARY_MAGIC
    });
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (digest, entry) in entries {
        encode_entry(&mut out, digest, &entry.info());
    }
    out
}

fn binary_error(field: &str, what: &'static str) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: Problem::Message(what),
    }
}

/// A binary full map's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryHeader {
    pub version: u64,
    pub count: usize,
}

pub fn parse_binary_header(head: &[u8]) -> Result<BinaryHeader, ConfigError> {
    let rest = head
        .strip_prefix(BINARY_MAGIC.as_slice())
        .or_else(|| head.strip_prefix(BINARY_MAGIC_LIMITS.as_slice()))
        .ok_or_else(|| binary_error("", "not a keygate binary key map"))?;
    let version = rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
    let count = rest.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok());
    match (version, count) {
        (Some(version), Some(count)) => Ok(BinaryHeader {
            version: u64::from_le_bytes(version),
            count: u32::from_le_bytes(count) as usize,
        }),
        _ => Err(binary_error("", "truncated header")),
    }
}

/// Reads `len` bytes at `start` of an answer body (fewer at its end).
pub trait BodyReader {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8>;
}

impl BodyReader for &[u8] {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
        let end = start.saturating_add(len).min(self.len());
        self.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// Reads `len` bytes at `start`, however few a single read returns (fewer only at the end).
/// Each pass either grows `out` or stops, so it ends after at most `len` reads.
pub(crate) fn read_exactly(body: &mut impl BodyReader, start: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want = len - out.len();
        let piece = body.read(start + out.len(), want);
        if piece.is_empty() {
            break;
        }
        // A reader that returns more than asked is not trusted past what was asked.
        out.extend_from_slice(piece.get(..want).unwrap_or(&piece));
    }
    out
}

/// Walks a binary full map's entries chunk by chunk (at most `chunk_len` bytes read at a
/// time), validating each, and hands every bucket's run of entries to `on_run`. Never holds
/// more than a chunk and one entry of the body.
///
/// Every pass of the loop either reads at least one more byte of the body or ends (with the
/// map or an error): a body of `n` bytes is walked in at most `n` reads, whatever the reader
/// returns and whatever the bytes are.
fn stream_runs(
    body: &mut impl BodyReader,
    body_len: usize,
    header: BinaryHeader,
    chunk_len: usize,
    mut on_run: impl FnMut(usize, &[u8]),
) -> Result<(), ConfigError> {
    let chunk_len = chunk_len.max(1);
    let mut buffer: Vec<u8> = Vec::new();
    let mut next_read = BINARY_HEADER_LEN;
    let mut previous: Option<Digest> = None;
    let mut seen = 0usize;
    let mut run: Vec<u8> = Vec::new();
    let mut run_bucket: Option<usize> = None;
    // Bounded by construction as well: a pass that neither read nor ended would be a bug,
    // and must fail the answer rather than spin.
    let mut passes_left = body_len.saturating_sub(BINARY_HEADER_LEN).saturating_add(1);
    loop {
        if passes_left == 0 {
            return Err(binary_error("", "the reader made no progress"));
        }
        passes_left -= 1;
        let at_end = next_read >= body_len;
        let mut consumed = 0;
        {
            let mut iter = entries(&buffer);
            // An entry is judged once all of it must be here: at the end of the body, or
            // with the longest entry's worth of bytes buffered. Then it parses, or the
            // answer is malformed: waiting could never make it parse.
            while !iter.rest().is_empty() && (at_end || iter.rest().len() >= MAX_ENTRY_LEN) {
                let before = iter.rest().len();
                let Some((digest, info)) = iter.next() else {
                    return Err(binary_error(
                        &format!("keys[{seen}]"),
                        "malformed or truncated entry",
                    ));
                };
                // The field name is only formatted for an error: a million keys pass here.
                let field = || format!("keys[{seen}]");
                if previous.is_some_and(|p| p.0 >= digest.0) {
                    return Err(binary_error(
                        &field(),
                        "digests must rise strictly (sorted, no duplicates)",
                    ));
                }
                if !is_valid_identifier(info.account_id) || !is_valid_identifier(info.key_id) {
                    return Err(binary_error(
                        &field(),
                        "account_id and key_id must be 1-128 visible ASCII characters",
                    ));
                }
                let bucket = bucket_of(&digest);
                if run_bucket.is_some_and(|b| b != bucket) {
                    if let Some(b) = run_bucket {
                        on_run(b, &run);
                    }
                    run.clear();
                }
                run_bucket = Some(bucket);
                let len = before - iter.rest().len();
                run.extend_from_slice(buffer.get(consumed..consumed + len).unwrap_or_default());
                consumed += len;
                previous = Some(digest);
                seen += 1;
            }
        }
        buffer.drain(..consumed);
        if at_end {
            break;
        }
        let want = chunk_len.min(body_len - next_read);
        let chunk = body.read(next_read, want);
        if chunk.is_empty() {
            return Err(binary_error("", "the answer ended early"));
        }
        let chunk = chunk.get(..want).unwrap_or(&chunk);
        next_read += chunk.len();
        buffer.extend_from_slice(chunk);
    }
    if seen != header.count {
        return Err(binary_error("count", "does not match the entries"));
    }
    if let Some(b) = run_bucket {
        on_run(b, &run);
    }
    Ok(())
}

/// Why a binary full map was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryError {
    Invalid(ConfigError),
    Refused(Refusal),
}

impl core::fmt::Display for BinaryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BinaryError::Invalid(e) => e.fmt(f),
            BinaryError::Refused(r) => r.fmt(f),
        }
    }
}

impl SyncState {
    /// Applies a binary full map read from `body` in chunks: a first pass validates all of
    /// it, a second writes each bucket's run of entries. So the VM never holds the whole
    /// answer, and nothing is applied unless all of it is valid.
    pub fn apply_binary_full(
        &mut self,
        body: &mut impl BodyReader,
        body_len: usize,
        lineage: &str,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, BinaryError> {
        self.apply_binary_full_in_chunks(body, body_len, lineage, store, guard, CHUNK_LEN)
    }

    /// `apply_binary_full`, reading at most `chunk_len` bytes at a time.
    pub fn apply_binary_full_in_chunks(
        &mut self,
        body: &mut impl BodyReader,
        body_len: usize,
        lineage: &str,
        store: &mut impl BucketStore,
        guard: Guard,
        chunk_len: usize,
    ) -> Result<Applied, BinaryError> {
        let header = parse_binary_header(&read_exactly(body, 0, BINARY_HEADER_LEN))
            .map_err(BinaryError::Invalid)?;
        stream_runs(body, body_len, header, chunk_len, |_, _| {}).map_err(BinaryError::Invalid)?;
        let Some(new_lineage) = self
            .check_full(header.version, lineage)
            .map_err(BinaryError::Refused)?
        else {
            return Ok(Applied::Unchanged);
        };
        if self.version().is_some() {
            self.check_removal(header.count, guard)
                .map_err(BinaryError::Refused)?;
        }
        let occupied = &mut self.occupied;
        let mut next_bucket = 0usize;
        // Empties the buckets from `next_bucket` up to `bucket` that held keys before.
        let mut empty_until =
            |bucket: usize, store: &mut dyn FnMut(usize, &[u8]), next: &mut usize| {
                for b in *next..bucket.min(BUCKETS) {
                    if let Some(slot) = occupied.get_mut(b) {
                        if *slot {
                            store(b, &[]);
                            *slot = false;
                        }
                    }
                }
                *next = bucket + 1;
            };
        let mut writes: Vec<(usize, bool)> = Vec::new();
        let mut write = |b: usize, bytes: &[u8]| {
            store.write(b, bytes);
            writes.push((b, !bytes.is_empty()));
        };
        stream_runs(body, body_len, header, chunk_len, |bucket, run| {
            empty_until(bucket, &mut write, &mut next_bucket);
            write(bucket, run);
        })
        .map_err(BinaryError::Invalid)?;
        empty_until(BUCKETS, &mut write, &mut next_bucket);
        for (b, filled) in writes {
            if let Some(slot) = self.occupied.get_mut(b) {
                *slot = filled;
            }
        }
        self.hold(header.version, lineage, header.count);
        Ok(Applied::Updated {
            version: header.version,
            keys: header.count,
            new_lineage,
        })
    }
}

#[cfg(test)]
mod binary_tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::sync::Arc;
    use keygate_core::bucket::find;
    use keygate_core::key::{Environment, KeyKind, KeyType};
    use keygate_core::keymap::KeyEntry;
    use std::collections::HashMap;
    use std::prelude::rust_2021::*;

    #[derive(Default)]
    struct MemStore(HashMap<usize, Vec<u8>>);

    impl BucketStore for MemStore {
        fn read(&mut self, bucket: usize) -> Vec<u8> {
            self.0.get(&bucket).cloned().unwrap_or_default()
        }
        fn write(&mut self, bucket: usize, bytes: &[u8]) {
            self.0.insert(bucket, bytes.to_vec());
        }
    }

    fn map(n: usize, tag: &str) -> KeyMap {
        KeyMap::build((0..n).map(|i| {
            (
                Digest::of_key(&format!("{tag}{i}")),
                KeyEntry {
                    account_id: Arc::from("acct"),
                    key_id: format!("key_{i}").into(),
                    kind: KeyKind::new(KeyType::Secret, Environment::Test),
                    expires_at: None,
                    disabled: false,
                    limit: None,
                },
            )
        }))
        .expect("distinct")
    }

    fn found(store: &MemStore, key: &str) -> bool {
        let d = Digest::of_key(key);
        store
            .0
            .get(&bucket_of(&d))
            .is_some_and(|b| find(b, &d).is_some())
    }

    /// Reads in small pieces, so entries straddle chunk boundaries.
    struct Trickle<'a>(&'a [u8]);

    impl BodyReader for Trickle<'_> {
        fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
            let mut slice = self.0;
            slice.read(start, len.min(97))
        }
    }

    fn apply(
        state: &mut SyncState,
        store: &mut MemStore,
        body: &[u8],
        guard: Guard,
    ) -> Result<Applied, BinaryError> {
        state.apply_binary_full(&mut Trickle(body), body.len(), "store_a", store, guard)
    }

    #[test]
    fn a_binary_full_map_round_trips_into_buckets() {
        let body = encode_binary_full(9, &map(3000, "a"));
        assert_eq!(
            parse_binary_header(&body),
            Ok(BinaryHeader {
                version: 9,
                count: 3000
            })
        );
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let applied = apply(&mut state, &mut store, &body, Guard::default());
        assert_eq!(
            applied,
            Ok(Applied::Updated {
                version: 9,
                keys: 3000,
                new_lineage: false
            })
        );
        assert!((0..3000).all(|i| found(&store, &format!("a{i}"))));
        assert!(!found(&store, "b0"));
        // A second full map replaces the first: old keys' buckets are emptied.
        let guard = Guard {
            allow_empty_map: false,
            max_removed_fraction: 1.0,
        };
        let body = encode_binary_full(10, &map(2000, "b"));
        apply(&mut state, &mut store, &body, guard).expect("applied");
        assert!((0..2000).all(|i| found(&store, &format!("b{i}"))));
        assert!((0..3000).all(|i| !found(&store, &format!("a{i}"))));
        assert!(store.0.keys().all(|b| *b < BUCKETS));
    }

    /// Serves the body in reads whose sizes come from a seeded generator (1 byte up to the
    /// whole), and counts the reads.
    struct Jagged<'a> {
        body: &'a [u8],
        rng: u64,
        max: usize,
        reads: usize,
    }

    impl BodyReader for Jagged<'_> {
        fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
            self.reads += 1;
            // Linear in the body: two passes over it and the header. A reader loop that
            // stops making progress fails here instead of hanging the test.
            assert!(
                self.reads <= 2 * self.body.len() + BINARY_HEADER_LEN + 2,
                "{} reads for {} bytes: no progress",
                self.reads,
                self.body.len()
            );
            let size = 1 + (next(&mut self.rng) as usize) % self.max.max(1);
            let mut slice = self.body;
            slice.read(start, len.min(size))
        }
    }

    fn next(rng: &mut u64) -> u64 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    }

    /// A store that keeps nothing: the property test judges verdicts, not contents.
    struct Discard;

    impl BucketStore for Discard {
        fn read(&mut self, _: usize) -> Vec<u8> {
            Vec::new()
        }
        fn write(&mut self, _: usize, _: &[u8]) {}
    }

    /// The verdict of a decode of the whole body at once, written apart from the streaming
    /// reader: the count of entries, or the error it must give.
    fn decode_whole(body: &[u8]) -> Result<usize, String> {
        let header = parse_binary_header(body).map_err(|e| e.to_string())?;
        let mut iter = entries(body.get(BINARY_HEADER_LEN..).unwrap_or_default());
        let mut previous: Option<Digest> = None;
        let mut seen = 0;
        while !iter.rest().is_empty() {
            let Some((digest, info)) = iter.next() else {
                return Err(format!("keys[{seen}]: malformed or truncated entry"));
            };
            if previous.is_some_and(|p| p >= digest) {
                return Err(format!(
                    "keys[{seen}]: digests must rise strictly (sorted, no duplicates)"
                ));
            }
            let ok = |s: &str| is_valid_identifier(s);
            if !ok(info.account_id) || !ok(info.key_id) {
                return Err(format!(
                    "keys[{seen}]: account_id and key_id must be 1-128 visible ASCII characters"
                ));
            }
            previous = Some(digest);
            seen += 1;
        }
        if seen != header.count {
            return Err("count: does not match the entries".into());
        }
        Ok(seen)
    }

    /// A valid body, then one of several kinds of damage chosen by the generator.
    fn damaged(rng: &mut u64) -> Vec<u8> {
        let n = (next(rng) % 40) as usize;
        let mut body = encode_binary_full(7, &map(n, &format!("s{}", next(rng) % 1000)));
        if body.len() > BINARY_HEADER_LEN {
            let span = body.len() - BINARY_HEADER_LEN;
            let at = BINARY_HEADER_LEN + (next(rng) as usize) % span;
            match next(rng) % 6 {
                0 => body[at] ^= 1 << (next(rng) % 8),
                1 => body.truncate(at),
                2 => body.insert(at, (next(rng) % 256) as u8),
                3 => body
                    .splice(at..at, core::iter::repeat_n(0xFF, 600))
                    .for_each(drop),
                4 => body[at] = 0xC3,
                _ => {}
            }
        }
        body
    }

    #[test]
    fn any_body_in_any_reads_and_chunks_ends_in_linear_reads_with_the_whole_body_verdict() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..1500 {
            let body = damaged(&mut rng);
            let expected = decode_whole(&body);
            let chunk_len = match case % 4 {
                0 => 1 + (next(&mut rng) as usize) % 64,
                1 => MAX_ENTRY_LEN + (next(&mut rng) as usize) % 3,
                2 => 1 + (next(&mut rng) as usize) % 4096,
                _ => CHUNK_LEN,
            };
            let max = match case % 3 {
                0 => 1,
                1 => 1 + (next(&mut rng) as usize) % 600,
                _ => body.len().max(1),
            };
            let mut reader = Jagged {
                body: &body,
                rng: next(&mut rng) | 1,
                max,
                reads: 0,
            };
            // A fresh state empties every bucket on success: keep the store cheap.
            let mut store = Discard;
            let result = SyncState::default().apply_binary_full_in_chunks(
                &mut reader,
                body.len(),
                "store_a",
                &mut store,
                Guard::default(),
                chunk_len,
            );
            let verdict = result.map(|applied| match applied {
                Applied::Updated { keys, .. } => keys,
                Applied::Unchanged => usize::MAX,
            });
            let shown = |e: BinaryError| {
                let text = e.to_string();
                text.strip_prefix("invalid keygate config: ")
                    .map_or(text.clone(), str::to_owned)
            };
            assert_eq!(
                verdict.map_err(shown),
                expected,
                "case {case}: chunk {chunk_len}, reads of up to {max}"
            );
        }
    }

    #[test]
    fn a_large_map_with_one_bad_entry_is_refused_however_it_is_read() {
        // The shape seen live: 30,000 entries, the 100th with an account id that is not
        // UTF-8, read in chunks far smaller than the body.
        let mut body = encode_binary_full(3, &map(30_000, "big"));
        let mut at = BINARY_HEADER_LEN;
        for _ in 0..99 {
            let mut iter = entries(&body[at..]);
            iter.next().expect("an entry");
            at = body.len() - iter.rest().len();
        }
        // Entry 99 (the 100th): digest, flags, then the account id's length and bytes.
        body[at + 32 + 1 + 1] = 0xFF;
        for chunk_len in [MAX_ENTRY_LEN, 4096, CHUNK_LEN] {
            let mut store = MemStore::default();
            let result = SyncState::default().apply_binary_full_in_chunks(
                &mut Trickle(&body),
                body.len(),
                "store_a",
                &mut store,
                Guard::default(),
                chunk_len,
            );
            let error = result.expect_err("refused").to_string();
            assert!(
                error.ends_with("keys[99]: malformed or truncated entry"),
                "chunk {chunk_len}: {error}"
            );
            assert!(store.0.is_empty(), "nothing written");
        }
    }

    #[test]
    fn damaged_binary_maps_are_refused_and_nothing_is_written() {
        let body = encode_binary_full(1, &map(10, "a"));
        let check = |bytes: &[u8]| {
            let mut store = MemStore::default();
            let result = apply(
                &mut SyncState::default(),
                &mut store,
                bytes,
                Guard::default(),
            );
            assert!(store.0.is_empty(), "nothing may be written from a bad map");
            result.err().map(|e| e.to_string()).unwrap_or_default()
        };
        for cut in [0, 7, 15, 19, body.len() - 1] {
            assert!(!check(&body[..cut]).is_empty(), "cut at {cut}");
        }
        let mut wrong_count = body.clone();
        wrong_count[16] = 11;
        assert!(check(&wrong_count).contains("count"));
        let mut unsorted = encode_binary_full(1, &map(1, "a"));
        let entry = unsorted[20..].to_vec();
        unsorted.extend_from_slice(&entry);
        unsorted[16] = 2;
        let err = check(&unsorted);
        assert!(err.contains("keys[1]: digests must rise strictly"), "{err}");
    }
}

//! The key-map transfer format between `keygatectl` and the filters: a full snapshot, or a
//! delta since a version so that rolling one key does not resend the whole map. Defined
//! once here; the server writes it, the filter's fetcher reads it.

use crate::prelude::*;

use crate::bucket::{bucket_of, encode_entry, entries, rewrite, KeyInfo, BUCKETS};
use crate::config::{build_key_map, ConfigError, RawKey};
use crate::digest::Digest;
use crate::keymap::KeyMap;
use serde::{Deserialize, Serialize};

/// One answer of the key-map endpoint (`GET /v1/keymap[?since=N]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyMapMessage {
    /// Every live key at `version`.
    Full { version: u64, keys: Vec<RawKey> },
    /// What changed after `since` up to `version`: keys added or changed, digests removed.
    Delta {
        version: u64,
        since: u64,
        upserts: Vec<RawKey>,
        removes: Vec<String>,
    },
}

impl KeyMapMessage {
    pub fn version(&self) -> u64 {
        match self {
            KeyMapMessage::Full { version, .. } | KeyMapMessage::Delta { version, .. } => *version,
        }
    }
}

/// A delta validated in full before any of it is applied.
#[derive(Debug, Clone)]
pub struct ValidDelta {
    pub since: u64,
    pub version: u64,
    upserts: KeyMap,
    removes: Vec<Digest>,
}

impl ValidDelta {
    pub fn apply_to(self, map: &mut KeyMap) {
        for digest in &self.removes {
            map.remove(digest);
        }
        for (digest, entry) in self.upserts.iter() {
            map.upsert(*digest, entry.clone());
        }
    }
}

/// A message validated in full: either a complete map or a delta to apply.
#[derive(Debug, Clone)]
pub enum ValidMessage {
    Full { version: u64, keys: KeyMap },
    Delta(ValidDelta),
}

/// Parses and validates a key-map answer. Nothing is applied if anything in it is wrong.
pub fn parse_message(body: &[u8]) -> Result<ValidMessage, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message: KeyMapMessage =
        serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError {
            field: crate::config::json_error_field(e.path()),
            problem: crate::config::Problem::Json(e.into_inner().to_string()),
        })?;
    de.end().map_err(|e| ConfigError {
        field: String::new(),
        problem: crate::config::Problem::Json(e.to_string()),
    })?;
    match message {
        KeyMapMessage::Full { version, keys } => Ok(ValidMessage::Full {
            version,
            keys: build_key_map(&keys, "keys")?,
        }),
        KeyMapMessage::Delta {
            version,
            since,
            upserts,
            removes,
        } => {
            let removes = removes
                .iter()
                .enumerate()
                .map(|(i, hex)| {
                    Digest::from_hex(hex).map_err(|e| ConfigError {
                        field: format!("removes[{i}]"),
                        problem: crate::config::Problem::Digest(e),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ValidMessage::Delta(ValidDelta {
                since,
                version,
                upserts: build_key_map(&upserts, "upserts")?,
                removes,
            }))
        }
    }
}

/// Where buckets are kept (Envoy's shared data in the filter; a Vec in tests).
pub trait BucketStore {
    /// A bucket's bytes; empty when it holds nothing.
    fn read(&mut self, bucket: usize) -> Vec<u8>;
    fn write(&mut self, bucket: usize, bytes: &[u8]);
}

/// Safety limits on what an answer may do to the map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// Accept a full map with no keys while we hold some.
    pub allow_empty_map: bool,
    /// Refuse an answer that removes more than this share of a map of 10 keys or more.
    pub max_removed_fraction: f64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            allow_empty_map: false,
            max_removed_fraction: 0.5,
        }
    }
}

/// Why a valid-looking answer was not applied. The last good map keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    OlderVersion { got: u64, have: u64 },
    DeltaBase { since: u64, have: Option<u64> },
    EmptyMap { have: usize },
    MassRemoval { removed: usize, of: usize },
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::OlderVersion { got, have } => {
                write!(f, "answer has version {got}, older than the {have} we hold")
            }
            Refusal::DeltaBase { since, have } => {
                write!(f, "delta is since version {since} but we hold {have:?}")
            }
            Refusal::EmptyMap { have } => {
                write!(f, "answer is an empty map while we hold {have} keys")
            }
            Refusal::MassRemoval { removed, of } => write!(
                f,
                "answer would remove {removed} of {of} keys; refused as a likely mistake"
            ),
        }
    }
}

/// What applying an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Updated { version: u64, keys: usize },
}

/// The fetcher's view of the map it published: version, size and which buckets hold keys.
#[derive(Debug, Clone)]
pub struct SyncState {
    version: Option<u64>,
    keys: usize,
    occupied: Vec<bool>,
}

impl Default for SyncState {
    fn default() -> Self {
        // A fresh fetcher (first start, or a reloaded VM) cannot know which buckets an
        // earlier one left in shared data, so its first full map rewrites every bucket.
        SyncState {
            version: None,
            keys: 0,
            occupied: vec![true; BUCKETS],
        }
    }
}

impl SyncState {
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Applies a validated answer to `store`, or refuses it whole. Every bucket's new bytes
    /// are computed and the guard checked before the first write.
    pub fn apply(
        &mut self,
        message: ValidMessage,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        match message {
            ValidMessage::Full { version, keys } => self.apply_full(version, &keys, store, guard),
            ValidMessage::Delta(delta) => self.apply_delta(delta, store, guard),
        }
    }

    fn check_version(&self, version: u64) -> Result<bool, Refusal> {
        match self.version {
            Some(have) if version < have => Err(Refusal::OlderVersion { got: version, have }),
            Some(have) if version == have => Ok(false),
            _ => Ok(true),
        }
    }

    fn check_removal(&self, new_total: usize, guard: Guard) -> Result<(), Refusal> {
        if new_total == 0 && self.keys > 0 && !guard.allow_empty_map {
            return Err(Refusal::EmptyMap { have: self.keys });
        }
        let removed = self.keys.saturating_sub(new_total);
        if self.keys >= 10 && removed as f64 > self.keys as f64 * guard.max_removed_fraction {
            return Err(Refusal::MassRemoval {
                removed,
                of: self.keys,
            });
        }
        Ok(())
    }

    fn apply_full(
        &mut self,
        version: u64,
        keys: &KeyMap,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        if !self.check_version(version)? {
            return Ok(Applied::Unchanged);
        }
        if self.version.is_some() {
            self.check_removal(keys.len(), guard)?;
        }
        let mut buckets: Vec<Vec<u8>> = vec![Vec::new(); BUCKETS];
        for (digest, entry) in keys.iter() {
            if let Some(bucket) = buckets.get_mut(bucket_of(digest)) {
                encode_entry(bucket, digest, &entry.info());
            }
        }
        for (i, (bytes, occupied)) in buckets.iter().zip(self.occupied.iter_mut()).enumerate() {
            // Write what holds keys now, and empty what held keys before; skip the rest.
            if !bytes.is_empty() || *occupied {
                store.write(i, bytes);
            }
            *occupied = !bytes.is_empty();
        }
        self.version = Some(version);
        self.keys = keys.len();
        Ok(Applied::Updated {
            version,
            keys: self.keys,
        })
    }

    fn apply_delta(
        &mut self,
        delta: ValidDelta,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        if self.version != Some(delta.since) {
            return Err(Refusal::DeltaBase {
                since: delta.since,
                have: self.version,
            });
        }
        if !self.check_version(delta.version)? {
            return Ok(Applied::Unchanged);
        }
        // Group the changes by bucket, then rewrite each touched bucket once.
        let mut touched: Vec<usize> = delta
            .upserts
            .iter()
            .map(|(d, _)| bucket_of(d))
            .chain(delta.removes.iter().map(bucket_of))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut rewritten = Vec::with_capacity(touched.len());
        let mut total = self.keys;
        for &b in &touched {
            let old = store.read(b);
            let upserts: Vec<(Digest, KeyInfo<'_>)> = delta
                .upserts
                .iter()
                .filter(|(d, _)| bucket_of(d) == b)
                .map(|(d, e)| (*d, e.info()))
                .collect();
            let removes: Vec<Digest> = delta
                .removes
                .iter()
                .filter(|d| bucket_of(d) == b)
                .copied()
                .collect();
            let (bytes, count) = rewrite(&old, &upserts, &removes);
            total = total.saturating_sub(entries(&old).count()) + count;
            rewritten.push((b, bytes));
        }
        self.check_removal(total, guard)?;
        for (b, bytes) in rewritten {
            store.write(b, &bytes);
            if let Some(occupied) = self.occupied.get_mut(b) {
                *occupied = !bytes.is_empty();
            }
        }
        self.version = Some(delta.version);
        self.keys = total;
        Ok(Applied::Updated {
            version: delta.version,
            keys: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::find;

    #[derive(Default)]
    struct MemStore {
        buckets: std::collections::HashMap<usize, Vec<u8>>,
        writes: usize,
    }

    impl BucketStore for MemStore {
        fn read(&mut self, bucket: usize) -> Vec<u8> {
            self.buckets.get(&bucket).cloned().unwrap_or_default()
        }
        fn write(&mut self, bucket: usize, bytes: &[u8]) {
            self.writes += 1;
            self.buckets.insert(bucket, bytes.to_vec());
        }
    }

    impl MemStore {
        fn key_id(&self, key: &str) -> Option<String> {
            let d = Digest::of_key(key);
            let bucket = self.buckets.get(&bucket_of(&d))?;
            find(bucket, &d).map(|i| i.key_id.to_string())
        }
    }

    fn raw(key: &str, id: &str) -> String {
        format!(
            r#"{{"digest":"{}","account_id":"acct","key_id":"{id}","type":"secret","environment":"test"}}"#,
            Digest::of_key(key).to_hex()
        )
    }

    fn full(version: u64, keys: &[(&str, &str)]) -> ValidMessage {
        let keys: Vec<String> = keys.iter().map(|(k, id)| raw(k, id)).collect();
        let json = format!(
            r#"{{"kind":"full","version":{version},"keys":[{}]}}"#,
            keys.join(",")
        );
        parse_message(json.as_bytes()).expect("valid full")
    }

    fn delta(since: u64, version: u64, upserts: &[(&str, &str)], removes: &[&str]) -> ValidMessage {
        let upserts: Vec<String> = upserts.iter().map(|(k, id)| raw(k, id)).collect();
        let removes: Vec<String> = removes
            .iter()
            .map(|k| format!("\"{}\"", Digest::of_key(k).to_hex()))
            .collect();
        let json = format!(
            r#"{{"kind":"delta","version":{version},"since":{since},"upserts":[{}],"removes":[{}]}}"#,
            upserts.join(","),
            removes.join(",")
        );
        parse_message(json.as_bytes()).expect("valid delta")
    }

    #[test]
    fn a_full_map_then_a_delta_roll_one_key() {
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let applied = state.apply(
            full(3, &[("k1", "a"), ("k2", "b")]),
            &mut store,
            Guard::default(),
        );
        assert_eq!(
            applied,
            Ok(Applied::Updated {
                version: 3,
                keys: 2
            })
        );
        assert_eq!(store.key_id("k1").as_deref(), Some("a"));
        let writes = store.writes;
        let applied = state.apply(
            delta(3, 4, &[("k3", "c")], &["k1"]),
            &mut store,
            Guard::default(),
        );
        assert_eq!(
            applied,
            Ok(Applied::Updated {
                version: 4,
                keys: 2
            })
        );
        assert!(
            store.writes - writes <= 2,
            "a delta rewrites only touched buckets"
        );
        assert_eq!(store.key_id("k1"), None);
        assert_eq!(store.key_id("k3").as_deref(), Some("c"));
    }

    #[test]
    fn a_new_full_map_empties_buckets_of_removed_keys() {
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let guard = Guard {
            allow_empty_map: true,
            max_removed_fraction: 1.0,
        };
        state
            .apply(full(1, &[("k1", "a")]), &mut store, guard)
            .expect("applied");
        state
            .apply(full(2, &[("k2", "b")]), &mut store, guard)
            .expect("applied");
        assert_eq!(store.key_id("k1"), None);
        assert_eq!(store.key_id("k2").as_deref(), Some("b"));
    }

    #[test]
    fn older_versions_wrong_bases_and_mass_removals_are_refused() {
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let keys: Vec<(String, String)> = (0..20)
            .map(|i| (format!("k{i}"), format!("id{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = keys.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
        state
            .apply(full(5, &refs), &mut store, Guard::default())
            .expect("applied");
        assert_eq!(
            state.apply(full(4, &refs), &mut store, Guard::default()),
            Err(Refusal::OlderVersion { got: 4, have: 5 })
        );
        assert_eq!(
            state.apply(full(5, &refs), &mut store, Guard::default()),
            Ok(Applied::Unchanged)
        );
        assert_eq!(
            state.apply(delta(3, 6, &[], &[]), &mut store, Guard::default()),
            Err(Refusal::DeltaBase {
                since: 3,
                have: Some(5)
            })
        );
        assert_eq!(
            state.apply(full(6, &[]), &mut store, Guard::default()),
            Err(Refusal::EmptyMap { have: 20 })
        );
        assert_eq!(
            state.apply(full(6, &refs[..5]), &mut store, Guard::default()),
            Err(Refusal::MassRemoval {
                removed: 15,
                of: 20
            })
        );
        let many: Vec<&str> = refs[..11].iter().map(|(k, _)| *k).collect();
        assert_eq!(
            state.apply(delta(5, 6, &[], &many), &mut store, Guard::default()),
            Err(Refusal::MassRemoval {
                removed: 11,
                of: 20
            })
        );
        assert_eq!(state.version(), Some(5));
        assert_eq!(
            store.key_id("k0").as_deref(),
            Some("id0"),
            "the last good map still serves"
        );
    }

    #[test]
    fn garbage_answers_are_refused_before_anything_is_applied() {
        for body in [
            &b"not json"[..],
            br#"{"kind":"full","version":1}"#,
            br#"{"kind":"full","version":-1,"keys":[]}"#,
            br#"{"kind":"delta","version":2,"since":1,"upserts":[],"removes":["zz"]}"#,
            br#"{"kind":"full","version":1,"keys":[{"digest":"sk_test_abc","account_id":"a","key_id":"b","type":"secret","environment":"test"}]}"#,
            br#"{"kind":"full","version":1,"keys":[],"extra":1}"#,
            br#"{"kind":"full","version":1,"keys":["#,
        ] {
            assert!(parse_message(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}

/// Content type of the binary full map: what a million keys travel as. JSON would be about
/// 190 bytes a key and a costly parse; this is the bucket encoding itself, about 75 bytes a
/// key, sorted by digest so that each bucket's entries are contiguous.
pub const BINARY_CONTENT_TYPE: &str = "application/x-keygate-map";
const BINARY_MAGIC: &[u8; 8] = b"KGMAP01\n";
/// Magic, version (u64 LE), key count (u32 LE).
pub const BINARY_HEADER_LEN: usize = 20;
/// The longest entry `encode_entry` writes: digest, flags, expiry, two 255-byte strings.
const MAX_ENTRY_LEN: usize = 32 + 1 + 8 + 1 + 255 + 1 + 255;
/// How much of the answer is in the VM at once while it is read.
pub const CHUNK_LEN: usize = 1 << 20;

/// Encodes a full map: magic, version (u64 LE), key count (u32 LE), entries by digest.
pub fn encode_binary_full(version: u64, map: &KeyMap) -> Vec<u8> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(BINARY_HEADER_LEN + entries.len() * 80);
    out.extend_from_slice(BINARY_MAGIC);
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
        problem: crate::config::Problem::Binary(what),
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
fn read_exactly(body: &mut impl BodyReader, start: usize, len: usize) -> Vec<u8> {
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
                if !crate::config::is_valid_identifier(info.account_id)
                    || !crate::config::is_valid_identifier(info.key_id)
                {
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
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, BinaryError> {
        self.apply_binary_full_in_chunks(body, body_len, store, guard, CHUNK_LEN)
    }

    /// `apply_binary_full`, reading at most `chunk_len` bytes at a time.
    pub fn apply_binary_full_in_chunks(
        &mut self,
        body: &mut impl BodyReader,
        body_len: usize,
        store: &mut impl BucketStore,
        guard: Guard,
        chunk_len: usize,
    ) -> Result<Applied, BinaryError> {
        let header = parse_binary_header(&read_exactly(body, 0, BINARY_HEADER_LEN))
            .map_err(BinaryError::Invalid)?;
        stream_runs(body, body_len, header, chunk_len, |_, _| {}).map_err(BinaryError::Invalid)?;
        if !self
            .check_version(header.version)
            .map_err(BinaryError::Refused)?
        {
            return Ok(Applied::Unchanged);
        }
        if self.version.is_some() {
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
        self.version = Some(header.version);
        self.keys = header.count;
        Ok(Applied::Updated {
            version: header.version,
            keys: header.count,
        })
    }
}

#[cfg(test)]
mod binary_tests {
    use super::*;
    use crate::bucket::find;
    use crate::key::{Environment, KeyKind, KeyType};
    use crate::keymap::KeyEntry;
    use alloc::sync::Arc;
    use std::collections::HashMap;

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
        state.apply_binary_full(&mut Trickle(body), body.len(), store, guard)
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
                keys: 3000
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
            let ok = |s: &str| crate::config::is_valid_identifier(s);
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

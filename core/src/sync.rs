//! The key-map transfer format between `keygatectl` and the filters: a full snapshot, or a
//! delta since a version so that rolling one key does not resend the whole map. Defined
//! once here; the server writes it, the filter's fetcher reads it.

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

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

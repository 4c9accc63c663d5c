//! The fetcher's side of syncing: what it holds (version, lineage, which buckets hold keys)
//! and how an answer is applied to a bucket store, or refused whole. The last good map
//! keeps serving whatever an answer says.
//!
//! A map's **lineage** is the identity of the store it came from (keygatectl sends it as
//! the `keygate-store` header). Versions only compare within one lineage: a full map of
//! another lineage (a restored or migrated database, a new store) is taken as a new start,
//! with the same validation and guards as any full map; a lower version within one lineage
//! stays refused (a stale replica or a replayed answer).

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::message::{ValidDelta, ValidMessage, MAX_VERSION};
use keygate_core::bucket::{bucket_of, encode_entry, entries, rewrite, KeyInfo, BUCKETS};
use keygate_core::digest::Digest;
use keygate_core::keymap::KeyMap;

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
    OlderVersion {
        got: u64,
        have: u64,
    },
    DeltaBase {
        since: u64,
        have: Option<u64>,
    },
    /// A delta (or a 304) from another store than the map held came from.
    OtherLineage,
    /// A version no keygatectl issues (they are SQL integers).
    VersionOutOfRange {
        got: u64,
    },
    EmptyMap {
        have: usize,
    },
    MassRemoval {
        removed: usize,
        of: usize,
    },
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
            Refusal::OtherLineage => {
                f.write_str("delta is from another store than the map we hold")
            }
            Refusal::VersionOutOfRange { got } => {
                write!(f, "version {got} is larger than any keygatectl issues")
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
    Updated {
        version: u64,
        keys: usize,
        /// The map came from another store than the one held before (not on the first map).
        new_lineage: bool,
    },
}

/// The fetcher's view of the map it published: version, size and which buckets hold keys.
#[derive(Debug, Clone)]
pub struct SyncState {
    version: Option<u64>,
    /// The store the held map came from; empty for a keygatectl that does not say.
    lineage: String,
    keys: usize,
    pub(crate) occupied: Vec<bool>,
}

impl Default for SyncState {
    fn default() -> Self {
        // A fresh fetcher (first start, or a reloaded VM) cannot know which buckets an
        // earlier one left in shared data, so its first full map rewrites every bucket.
        SyncState {
            version: None,
            lineage: String::new(),
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

    /// The store the held map came from.
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// Applies a validated answer from store `lineage` to `store`, or refuses it whole.
    /// Every bucket's new bytes are computed and the guard checked before the first write.
    pub fn apply(
        &mut self,
        message: ValidMessage,
        lineage: &str,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        match message {
            ValidMessage::Full { version, keys } => {
                self.apply_full(version, lineage, &keys, store, guard)
            }
            ValidMessage::Delta(delta) => self.apply_delta(delta, lineage, store, guard),
        }
    }

    /// Whether a full map of `version` from `lineage` is news: `Ok(None)` when it is the
    /// map held, `Ok(Some(new_lineage))` when it is to be applied.
    pub(crate) fn check_full(&self, version: u64, lineage: &str) -> Result<Option<bool>, Refusal> {
        if version > MAX_VERSION {
            return Err(Refusal::VersionOutOfRange { got: version });
        }
        let Some(have) = self.version else {
            return Ok(Some(false));
        };
        if lineage != self.lineage {
            return Ok(Some(true));
        }
        match version.cmp(&have) {
            core::cmp::Ordering::Less => Err(Refusal::OlderVersion { got: version, have }),
            core::cmp::Ordering::Equal => Ok(None),
            core::cmp::Ordering::Greater => Ok(Some(false)),
        }
    }

    /// Records that a map of `version` from `lineage` with `keys` keys is now held.
    pub(crate) fn hold(&mut self, version: u64, lineage: &str, keys: usize) {
        self.version = Some(version);
        if self.lineage != lineage {
            self.lineage = lineage.to_string();
        }
        self.keys = keys;
    }

    pub(crate) fn check_removal(&self, new_total: usize, guard: Guard) -> Result<(), Refusal> {
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
        lineage: &str,
        keys: &KeyMap,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        let Some(new_lineage) = self.check_full(version, lineage)? else {
            return Ok(Applied::Unchanged);
        };
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
        self.hold(version, lineage, keys.len());
        Ok(Applied::Updated {
            version,
            keys: self.keys,
            new_lineage,
        })
    }

    fn apply_delta(
        &mut self,
        delta: ValidDelta,
        lineage: &str,
        store: &mut impl BucketStore,
        guard: Guard,
    ) -> Result<Applied, Refusal> {
        if self.version.is_some() && lineage != self.lineage {
            return Err(Refusal::OtherLineage);
        }
        if self.version != Some(delta.since) {
            return Err(Refusal::DeltaBase {
                since: delta.since,
                have: self.version,
            });
        }
        if self.check_full(delta.version, lineage)?.is_none() {
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
        self.hold(delta.version, lineage, total);
        Ok(Applied::Updated {
            version: delta.version,
            keys: total,
            new_lineage: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_message;
    use alloc::format;
    use alloc::string::String;
    use keygate_core::bucket::find;
    use std::prelude::rust_2021::*;

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
            "store_a",
            &mut store,
            Guard::default(),
        );
        assert_eq!(
            applied,
            Ok(Applied::Updated {
                version: 3,
                keys: 2,
                new_lineage: false
            })
        );
        assert_eq!(store.key_id("k1").as_deref(), Some("a"));
        let writes = store.writes;
        let applied = state.apply(
            delta(3, 4, &[("k3", "c")], &["k1"]),
            "store_a",
            &mut store,
            Guard::default(),
        );
        assert_eq!(
            applied,
            Ok(Applied::Updated {
                version: 4,
                keys: 2,
                new_lineage: false
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
            .apply(full(1, &[("k1", "a")]), "store_a", &mut store, guard)
            .expect("applied");
        state
            .apply(full(2, &[("k2", "b")]), "store_a", &mut store, guard)
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
            .apply(full(5, &refs), "store_a", &mut store, Guard::default())
            .expect("applied");
        assert_eq!(
            state.apply(full(4, &refs), "store_a", &mut store, Guard::default()),
            Err(Refusal::OlderVersion { got: 4, have: 5 })
        );
        assert_eq!(
            state.apply(full(5, &refs), "store_a", &mut store, Guard::default()),
            Ok(Applied::Unchanged)
        );
        assert_eq!(
            state.apply(
                delta(3, 6, &[], &[]),
                "store_a",
                &mut store,
                Guard::default()
            ),
            Err(Refusal::DeltaBase {
                since: 3,
                have: Some(5)
            })
        );
        assert_eq!(
            state.apply(full(6, &[]), "store_a", &mut store, Guard::default()),
            Err(Refusal::EmptyMap { have: 20 })
        );
        assert_eq!(
            state.apply(full(6, &refs[..5]), "store_a", &mut store, Guard::default()),
            Err(Refusal::MassRemoval {
                removed: 15,
                of: 20
            })
        );
        let many: Vec<&str> = refs[..11].iter().map(|(k, _)| *k).collect();
        assert_eq!(
            state.apply(
                delta(5, 6, &[], &many),
                "store_a",
                &mut store,
                Guard::default()
            ),
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
    fn another_lineage_starts_again_and_a_lower_version_within_one_stays_refused() {
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let guard = Guard::default();
        state
            .apply(
                full(u64::MAX >> 1, &[("k1", "a")]),
                "store_a",
                &mut store,
                guard,
            )
            .expect("applied");
        // The same store at a lower version: refused (a stale replica, a replayed answer).
        assert_eq!(
            state.apply(full(11, &[("k2", "b")]), "store_a", &mut store, guard),
            Err(Refusal::OlderVersion {
                got: 11,
                have: u64::MAX >> 1
            })
        );
        // Another store's deltas never apply to this map.
        assert_eq!(
            state.apply(
                delta(u64::MAX >> 1, 12, &[], &[]),
                "store_b",
                &mut store,
                guard
            ),
            Err(Refusal::OtherLineage)
        );
        // Another store's full map: a new start, whatever its version.
        assert_eq!(
            state.apply(full(11, &[("k2", "b")]), "store_b", &mut store, guard),
            Ok(Applied::Updated {
                version: 11,
                keys: 1,
                new_lineage: true
            })
        );
        assert_eq!(state.lineage(), "store_b");
        assert_eq!(store.key_id("k2").as_deref(), Some("b"));
        assert_eq!(store.key_id("k1"), None);
        // and deltas of the new store build on it.
        assert!(state
            .apply(
                delta(11, 12, &[("k3", "c")], &[]),
                "store_b",
                &mut store,
                guard
            )
            .is_ok());
        assert_eq!(store.key_id("k3").as_deref(), Some("c"));
    }

    #[test]
    fn a_new_lineage_passes_the_same_guards_as_any_full_map() {
        let mut state = SyncState::default();
        let mut store = MemStore::default();
        let keys: Vec<(String, String)> = (0..20)
            .map(|i| (format!("k{i}"), format!("id{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = keys.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
        state
            .apply(full(5, &refs), "store_a", &mut store, Guard::default())
            .expect("applied");
        assert_eq!(
            state.apply(full(1, &refs[..3]), "store_b", &mut store, Guard::default()),
            Err(Refusal::MassRemoval {
                removed: 17,
                of: 20
            })
        );
        assert_eq!(state.lineage(), "store_a", "the last good map still serves");
    }
}

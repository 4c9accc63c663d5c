//! `sync_message`: `message::parse_message` and `SyncState::apply` (keygate-sync-core) over a
//! sequence of answers, with an in-memory `BucketStore`, checked against a model key map.
//!
//! Input: one answer per line (`\n`-separated JSON, `{"kind":"full",...}` or
//! `{"kind":"delta",...}`), applied in order; a line may start with `@<store> ` to say which
//! store (lineage) it came from, else it came from store `s`. The sequence runs twice: with the
//! default guard, and with a guard that allows empty maps and any removal.
//!
//! Invariants: after every answer, applied or refused, the store holds exactly the model map
//! (the last applied full map with the later applied deltas): every key is found by
//! `bucket::find` in its own bucket with the same entry, and nothing else is there; the
//! state's key count is the model's; within one store the version never decreases, it changes
//! only when an answer is applied, and is that answer's version; a full map of another store
//! is taken whatever its version (a new lineage) and a delta of another store never is.
//! Refusals are the documented ones (an older version, a delta on another base or store, an
//! empty map or a mass removal); parse errors never echo a plaintext key.

use crate::invariant;
use keygate_core::bucket::{bucket_of, entries, find, KeyInfo, BUCKETS};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use keygate_sync_core::message::{parse_message, ValidMessage};
use keygate_sync_core::state::{Applied, BucketStore, Guard, Refusal, SyncState};
use std::collections::{BTreeMap, BTreeSet};

/// A bucket store in memory: one `Vec` per bucket (a fresh `SyncState`'s first full map
/// writes all of them, so this is cheaper than a map), and the set of non-empty ones.
#[derive(Clone)]
pub struct MemStore {
    pub buckets: Vec<Vec<u8>>,
    pub non_empty: BTreeSet<usize>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore {
            buckets: vec![Vec::new(); BUCKETS],
            non_empty: BTreeSet::new(),
        }
    }
}

impl BucketStore for MemStore {
    fn read(&mut self, bucket: usize) -> Vec<u8> {
        self.buckets.get(bucket).cloned().unwrap_or_default()
    }
    fn write(&mut self, bucket: usize, bytes: &[u8]) {
        let slot = &mut self.buckets[bucket];
        // A fresh state's first map empties all 65,536 buckets: keep that cheap.
        match (slot.is_empty(), bytes.is_empty()) {
            (true, true) => return,
            (false, true) => {
                self.non_empty.remove(&bucket);
            }
            (true, false) => {
                self.non_empty.insert(bucket);
            }
            (false, false) => {}
        }
        slot.clear();
        slot.extend_from_slice(bytes);
    }
}

/// Equal when the same buckets hold the same bytes (the others are empty).
impl PartialEq for MemStore {
    fn eq(&self, other: &MemStore) -> bool {
        self.non_empty == other.non_empty
            && self
                .non_empty
                .iter()
                .all(|&b| self.buckets[b] == other.buckets[b])
    }
}

impl MemStore {
    /// Every stored entry, by digest.
    pub fn contents(&self) -> Vec<(Digest, KeyInfo<'_>)> {
        let mut all: Vec<_> = self
            .non_empty
            .iter()
            .flat_map(|&b| entries(&self.buckets[b]))
            .collect();
        all.sort_by_key(|a| a.0);
        all
    }
}

/// A key entry as the model keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    account_id: String,
    key_id: String,
    kind: KeyKind,
    expires_at: Option<u64>,
    disabled: bool,
    limit: Option<keygate_core::rate_limit::RateLimit>,
}

impl From<KeyInfo<'_>> for Entry {
    fn from(i: KeyInfo<'_>) -> Entry {
        Entry {
            account_id: i.account_id.to_owned(),
            key_id: i.key_id.to_owned(),
            kind: i.kind,
            expires_at: i.expires_at,
            disabled: i.disabled,
            limit: i.limit,
        }
    }
}

type Model = BTreeMap<[u8; 32], Entry>;

pub fn check(data: &[u8]) {
    let lenient = Guard {
        allow_empty_map: true,
        max_removed_fraction: 1.0,
    };
    for guard in [Guard::default(), lenient] {
        run(data, guard);
    }
}

fn run(data: &[u8], guard: Guard) {
    let mut state = SyncState::default();
    let mut store = MemStore::default();
    let mut model = Model::new();
    for line in data.split(|&b| b == b'\n') {
        let (store_id, line) = match line.strip_prefix(b"@") {
            Some(rest) => {
                let at = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                (
                    String::from_utf8_lossy(&rest[..at]).into_owned(),
                    rest.get(at + 1..).unwrap_or_default(),
                )
            }
            None => ("s".to_owned(), line),
        };
        let same_lineage = state.version().is_none() || state.lineage() == store_id;
        let message = match parse_message(line) {
            Ok(m) => m,
            Err(e) => {
                crate::config::check_error(&e);
                continue;
            }
        };
        let before = state.version();
        let (kind, version, since) = match &message {
            ValidMessage::Full { version, .. } => ("full", *version, None),
            ValidMessage::Delta(d) => ("delta", d.version, Some(d.since)),
        };
        // The model's next map, were the answer applied.
        let next: Model = match &message {
            ValidMessage::Full { keys, .. } => keys
                .iter()
                .map(|(d, e)| (d.0, Entry::from(e.info())))
                .collect(),
            ValidMessage::Delta(delta) => {
                let mut map = keygate_core::keymap::KeyMap::build(
                    model.iter().map(|(d, e)| (Digest(*d), to_key_entry(e))),
                )
                .expect("model digests are unique");
                delta.clone().apply_to(&mut map);
                map.iter()
                    .map(|(d, e)| (d.0, Entry::from(e.info())))
                    .collect()
            }
        };

        let result = state.apply(message, &store_id, &mut store, guard);
        match &result {
            Ok(Applied::Updated {
                version: v,
                keys,
                new_lineage,
            }) => {
                invariant!(*v == version, "{kind} {version} applied as version {v}");
                invariant!(
                    *new_lineage == (before.is_some() && !same_lineage),
                    "{kind} {version} from {store_id} reported new lineage {new_lineage}"
                );
                invariant!(
                    !same_lineage || before.is_none_or(|b| version > b),
                    "{kind} {version} applied over version {before:?}"
                );
                invariant!(
                    same_lineage || kind == "full",
                    "a delta of another store was applied"
                );
                invariant!(
                    since.is_none() || since == before,
                    "delta since {since:?} applied over {before:?}"
                );
                model = next;
                invariant!(
                    *keys == model.len(),
                    "{keys} keys reported, model has {}",
                    model.len()
                );
            }
            Ok(Applied::Unchanged) => {
                invariant!(
                    before == Some(version) && same_lineage,
                    "{kind} {version} unchanged over {before:?}"
                );
            }
            Err(refusal) => {
                invariant!(!refusal.to_string().is_empty(), "empty refusal message");
                match refusal {
                    Refusal::OlderVersion { got, have } => invariant!(
                        got < have && Some(*have) == before && same_lineage,
                        "{refusal:?} with version {before:?}"
                    ),
                    Refusal::OtherLineage => invariant!(
                        kind == "delta" && !same_lineage,
                        "{refusal:?} for a {kind} of the store held"
                    ),
                    Refusal::VersionOutOfRange { got } => {
                        invariant!(*got > i64::MAX as u64, "{refusal:?}")
                    }
                    Refusal::DeltaBase { since: s, have } => invariant!(
                        since == Some(*s) && *have == before && Some(*s) != before,
                        "{refusal:?} with version {before:?}"
                    ),
                    Refusal::EmptyMap { have } => invariant!(
                        !guard.allow_empty_map
                            && next.is_empty()
                            && *have == model.len()
                            && *have > 0,
                        "{refusal:?} with {} keys held, {} next",
                        model.len(),
                        next.len()
                    ),
                    Refusal::MassRemoval { removed, of } => invariant!(
                        *of == model.len()
                            && *of >= 10
                            && *removed == of.saturating_sub(next.len())
                            && *removed as f64 > *of as f64 * guard.max_removed_fraction,
                        "{refusal:?} with {} keys held, {} next",
                        model.len(),
                        next.len()
                    ),
                }
            }
        }
        let after = state.version();
        invariant!(
            after >= before || (result.is_ok() && !same_lineage),
            "version went from {before:?} to {after:?}"
        );
        invariant!(
            result.is_ok() || after == before,
            "a refused answer changed the version"
        );
        if after.is_some() {
            invariant!(
                state.keys() == model.len(),
                "state counts {} keys, model {}",
                state.keys(),
                model.len()
            );
        }
        check_store(&store, &model);
    }
}

fn to_key_entry(e: &Entry) -> keygate_core::keymap::KeyEntry {
    keygate_core::keymap::KeyEntry {
        account_id: e.account_id.as_str().into(),
        key_id: e.key_id.as_str().into(),
        kind: e.kind,
        expires_at: e.expires_at,
        disabled: e.disabled,
        limit: e.limit,
    }
}

/// The store holds exactly `model`: each key findable in its bucket, nothing more.
fn check_store(store: &MemStore, model: &Model) {
    for (digest, want) in model {
        let d = Digest(*digest);
        let found = store
            .buckets
            .get(bucket_of(&d))
            .and_then(|bucket| find(bucket, &d))
            .map(Entry::from);
        invariant!(
            found.as_ref() == Some(want),
            "key {d:?} found as {found:?}, model has {want:?}"
        );
    }
    let mut stored = 0;
    for &b in &store.non_empty {
        let bytes = &store.buckets[b];
        let mut parsed_len = 0;
        for (d, info) in entries(bytes) {
            stored += 1;
            invariant!(bucket_of(&d) == b, "key {d:?} stored in bucket {b}");
            invariant!(
                model.get(&d.0) == Some(&Entry::from(info)),
                "stored key {d:?} not in the model"
            );
            let mut one = Vec::new();
            keygate_core::bucket::encode_entry(&mut one, &d, &info);
            parsed_len += one.len();
        }
        invariant!(
            parsed_len == bytes.len(),
            "bucket {b} has trailing or malformed bytes"
        );
    }
    invariant!(
        stored == model.len(),
        "store holds {stored} keys, model {}",
        model.len()
    );
}

//! What the key-map endpoint keeps in memory: the store's identity and current version (so a
//! poll that changes nothing is answered 304 without touching the database), the last full
//! map in each encoding, the deltas to the current version asked for since it came, and the
//! channel that wakes every held watch when the version moves (or the server closes).

use crate::store::{KeyMapStatus, StoreId};
use axum::body::Bytes;
use axum::http::HeaderValue;
use std::sync::{Mutex, RwLock};
use tokio::sync::watch;

/// Deltas to the current version kept at once (one per `since` asked for), and the largest
/// kept: a change wakes every watch at one `since`, and they share one query and one body.
const DELTAS_KEPT: usize = 16;
const DELTA_KEPT_BYTES: usize = 4 << 20;

/// The `ETag` of a key-map version: `"<store id>:<version>"`.
pub fn etag(store: &StoreId, version: u64) -> String {
    format!("\"{store}:{version}\"")
}

/// True when an `If-None-Match` value names this store's `version`: `"<store>:<version>"`
/// (weak or not), or `*`. A bare `"<version>"`, as filters sent before stores had an id,
/// matches on the version alone: such a filter compares versions only, and would refuse a
/// full map of the version it holds anyway.
pub fn if_none_match_matches(header_value: &str, store: &StoreId, version: u64) -> bool {
    header_value.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        if tag == "*" {
            return true;
        }
        let Some(opaque) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return false;
        };
        let (tag_store, tag_version) = match opaque.split_once(':') {
            Some((tag_store, tag_version)) => (Some(tag_store), tag_version),
            None => (None, opaque),
        };
        tag_store.map_or(true, |s| s == store.as_str())
            && tag_version.parse::<u64>().ok() == Some(version)
    })
}

/// The two headers every answer about one version carries, `keygate-store` and `ETag`, made
/// once per version: the answers of a version share them (a clone is a reference count).
#[derive(Debug, Clone)]
pub struct VersionTags {
    store_id: StoreId,
    version: u64,
    /// `None` if not a valid header value (never: a store id is hex, a version decimal).
    pub store: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
}

impl VersionTags {
    pub fn new(store: &StoreId, version: u64) -> VersionTags {
        VersionTags {
            store_id: store.clone(),
            version,
            store: HeaderValue::from_str(store.as_str()).ok(),
            etag: HeaderValue::from_str(&etag(store, version)).ok(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn names(&self, store: &StoreId, version: u64) -> bool {
        self.version == version && self.store_id == *store
    }
}

struct CachedFull {
    store: StoreId,
    version: u64,
    body: Bytes,
}

/// The two encodings of a full map: JSON, and keygate's binary form for large maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json = 0,
    Binary = 1,
}

impl Encoding {
    /// As the metrics name it.
    pub fn label(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

/// What a status read from the store did to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The same or a newer version of the same store: taken.
    Current,
    /// An older version of the same store: kept out. A slow reader's, or (if the store
    /// confirms it) a database that went back to an older copy.
    Older { cached: u64 },
    /// Another store's: taken, and the cached maps dropped.
    NewLineage { previous: StoreId },
}

/// What held watches wait on: bumped on every change of store or version, and once more
/// (with `closing`) when the server shuts down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchSignal {
    pub generation: u64,
    pub closing: bool,
}

struct CachedDelta {
    store: StoreId,
    since: u64,
    version: u64,
    body: Bytes,
}

pub struct KeyMapCache {
    status: RwLock<KeyMapStatus>,
    /// The current version's headers.
    tags: RwLock<VersionTags>,
    full: [Mutex<Option<CachedFull>>; 2],
    /// Deltas to the current version, dropped whenever it moves.
    deltas: Mutex<Vec<CachedDelta>>,
    /// One delta query at a time: watches woken together wait for the first one's answer.
    pub delta_build: tokio::sync::Mutex<()>,
    signal: watch::Sender<WatchSignal>,
}

impl KeyMapCache {
    pub fn new(status: KeyMapStatus) -> KeyMapCache {
        KeyMapCache {
            tags: RwLock::new(VersionTags::new(&status.store, status.version)),
            status: RwLock::new(status),
            full: [Mutex::new(None), Mutex::new(None)],
            deltas: Mutex::new(Vec::new()),
            delta_build: tokio::sync::Mutex::new(()),
            signal: watch::Sender::new(WatchSignal::default()),
        }
    }

    /// A receiver that sees every later change of the map's store or version: subscribe
    /// first, then read the status, so no change falls between the two.
    pub fn subscribe(&self) -> watch::Receiver<WatchSignal> {
        self.signal.subscribe()
    }

    /// How many watches are held now.
    pub fn watches_held(&self) -> usize {
        self.signal.receiver_count()
    }

    /// Wakes every held watch: one pass over the waiters, whatever their number.
    pub fn wake_watches(&self) {
        self.signal
            .send_modify(|s| s.generation = s.generation.wrapping_add(1));
    }

    /// Ends every held watch (the server is shutting down), and any that starts after.
    pub fn close_watches(&self) {
        self.signal.send_modify(|s| {
            s.generation = s.generation.wrapping_add(1);
            s.closing = true;
        });
    }

    pub fn closing(&self) -> bool {
        self.signal.borrow().closing
    }

    /// Takes a status read from the store. Never goes back to an older version of the same
    /// store by itself: a slow reader must not undo a newer writer's news (`reset` does,
    /// once the store confirmed it).
    pub fn observe(&self, status: KeyMapStatus) -> Observed {
        // The status is plain data, always whole: a poisoned lock still holds a valid one.
        let mut current = self.status.write().unwrap_or_else(|e| e.into_inner());
        if status.store != current.store {
            self.set_tags(&status);
            let previous = std::mem::replace(&mut *current, status).store;
            self.drop_full_maps();
            drop(current);
            self.wake_watches();
            return Observed::NewLineage { previous };
        }
        if status.version < current.version {
            return Observed::Older {
                cached: current.version,
            };
        }
        let moved = status.version != current.version;
        if moved {
            self.set_tags(&status);
        }
        *current = status;
        drop(current);
        if moved {
            self.wake_watches();
        }
        Observed::Current
    }

    /// Takes `status` whatever was cached, and drops the cached maps: the store went back.
    pub fn reset(&self, status: KeyMapStatus) {
        let mut current = self.status.write().unwrap_or_else(|e| e.into_inner());
        self.set_tags(&status);
        *current = status;
        self.drop_full_maps();
        drop(current);
        self.wake_watches();
    }

    /// Made while the status is written (its lock held), so that they follow it.
    fn set_tags(&self, status: &KeyMapStatus) {
        *self.tags.write().unwrap_or_else(|e| e.into_inner()) =
            VersionTags::new(&status.store, status.version);
    }

    /// The headers of `store`'s `version`: the ones made for the current version, or new.
    pub fn tags(&self, store: &StoreId, version: u64) -> VersionTags {
        let current = self.tags.read().unwrap_or_else(|e| e.into_inner());
        if current.names(store, version) {
            return current.clone();
        }
        drop(current);
        VersionTags::new(store, version)
    }

    fn drop_full_maps(&self) {
        for full in &self.full {
            *full.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.deltas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The delta from `since` to the current version, if one was answered since it came.
    pub fn cached_delta(&self, now: u64, since: u64) -> Option<(StoreId, u64, Bytes)> {
        let (store, version) = self.fresh(now)?;
        let deltas = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        deltas
            .iter()
            .find(|d| d.since == since && d.version == version && d.store == store)
            .map(|d| (store, version, d.body.clone()))
    }

    /// Keeps a delta answered from the store, while it leads to the current version (or a
    /// newer one the status has not caught up with yet).
    pub fn remember_delta(&self, store: &StoreId, since: u64, version: u64, body: Bytes) {
        if body.len() > DELTA_KEPT_BYTES {
            return;
        }
        let current = self.status();
        let mut deltas = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        deltas.retain(|d| d.store == current.store && d.version >= current.version);
        if current.store != *store || version < current.version {
            return;
        }
        if deltas.len() >= DELTAS_KEPT {
            deltas.remove(0);
        }
        deltas.push(CachedDelta {
            store: store.clone(),
            since,
            version,
            body,
        });
    }

    /// The store and version cached, whether or not an expiry is due.
    pub fn status(&self) -> KeyMapStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current version's next expiry (unix seconds), if any key has one.
    pub fn next_expiry(&self) -> Option<u64> {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .next_expiry
    }

    /// The store and current version while it is still exact: `None` once a key's expiry
    /// has passed and the map must be purged (by a store read) before any answer.
    pub fn fresh(&self, now: u64) -> Option<(StoreId, u64)> {
        let status = self.status.read().unwrap_or_else(|e| e.into_inner());
        match status.next_expiry {
            Some(expiry) if now >= expiry => None,
            _ => Some((status.store.clone(), status.version)),
        }
    }

    /// The last full map in `encoding`, if it is still the current map.
    pub fn cached_full(&self, now: u64, encoding: Encoding) -> Option<(StoreId, u64, Bytes)> {
        let (store, version) = self.fresh(now)?;
        let full = self.full[encoding as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        full.as_ref()
            .filter(|cached| cached.store == store && cached.version == version)
            .map(|cached| (store, cached.version, cached.body.clone()))
    }

    pub fn remember_full(&self, store: &StoreId, version: u64, body: Bytes, encoding: Encoding) {
        let mut full = self.full[encoding as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let newer_cached = matches!(full.as_ref(), Some(cached) if cached.store == *store && cached.version > version);
        if !newer_cached {
            *full = Some(CachedFull {
                store: store.clone(),
                version,
                body,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(c: char) -> StoreId {
        StoreId::parse(&c.to_string().repeat(32)).expect("store id")
    }

    fn status(c: char, version: u64, next_expiry: Option<u64>) -> KeyMapStatus {
        KeyMapStatus {
            store: store(c),
            version,
            next_expiry,
        }
    }

    #[test]
    fn etags_name_the_store_and_version() {
        let a = store('a');
        let b = store('b');
        assert_eq!(etag(&a, 7), format!("\"{a}:7\""));
        let tag = etag(&a, 7);
        assert!(if_none_match_matches(&tag, &a, 7));
        assert!(if_none_match_matches(&format!("W/{tag}"), &a, 7));
        assert!(if_none_match_matches(&format!("\"{a}:3\", {tag}"), &a, 7));
        assert!(if_none_match_matches("*", &a, 7));
        // Another store's version 7 is another map.
        assert!(!if_none_match_matches(&etag(&b, 7), &a, 7));
        assert!(!if_none_match_matches(&etag(&a, 6), &a, 7));
        // The form filters sent before store ids: the version alone.
        assert!(if_none_match_matches("\"7\"", &a, 7));
        assert!(!if_none_match_matches("\"6\"", &a, 7));
        for bad in [
            "7",
            "",
            "\"\"",
            "\"a:7",
            &format!("\"{a}:\""),
            &format!("\"{a}:x\""),
        ] {
            assert!(!if_none_match_matches(bad, &a, 7), "{bad}");
        }
    }

    #[test]
    fn versions_never_go_back_by_themselves_and_expiry_makes_them_stale() {
        let cache = KeyMapCache::new(status('a', 5, Some(100)));
        assert_eq!(
            cache.observe(status('a', 4, None)),
            Observed::Older { cached: 5 }
        );
        assert_eq!(cache.fresh(99), Some((store('a'), 5)));
        assert_eq!(cache.fresh(100), None);
        assert_eq!(cache.observe(status('a', 6, None)), Observed::Current);
        assert_eq!(cache.fresh(1000), Some((store('a'), 6)));
        // Confirmed by the store: the database went back.
        cache.reset(status('a', 2, None));
        assert_eq!(cache.fresh(0), Some((store('a'), 2)));
    }

    #[test]
    fn a_new_version_or_store_wakes_watches_and_an_older_or_same_one_does_not() {
        let cache = KeyMapCache::new(status('a', 5, None));
        let mut watch = cache.subscribe();
        cache.observe(status('a', 5, Some(9)));
        cache.observe(status('a', 4, None));
        assert!(!watch.has_changed().expect("open"), "nothing moved");
        cache.observe(status('a', 6, None));
        assert!(watch.has_changed().expect("open"));
        watch.borrow_and_update();
        cache.observe(status('b', 1, None));
        assert!(watch.has_changed().expect("open"), "another store");
        watch.borrow_and_update();
        cache.reset(status('b', 1, None));
        assert!(watch.has_changed().expect("open"), "a reset");
        assert!(!watch.borrow_and_update().closing);
        cache.close_watches();
        assert!(watch.borrow_and_update().closing);
        assert!(cache.closing());
    }

    #[test]
    fn deltas_are_kept_for_the_current_version_only() {
        let cache = KeyMapCache::new(status('a', 5, None));
        cache.remember_delta(&store('a'), 4, 5, Bytes::from_static(b"4-5"));
        cache.remember_delta(&store('a'), 3, 4, Bytes::from_static(b"old"));
        cache.remember_delta(&store('b'), 4, 5, Bytes::from_static(b"other"));
        assert_eq!(
            cache.cached_delta(0, 4),
            Some((store('a'), 5, Bytes::from_static(b"4-5")))
        );
        assert_eq!(cache.cached_delta(0, 3), None);
        // A delta to a version the status has not caught up with waits for it.
        cache.remember_delta(&store('a'), 5, 6, Bytes::from_static(b"5-6"));
        assert_eq!(cache.cached_delta(0, 5), None);
        cache.observe(status('a', 6, None));
        assert_eq!(cache.cached_delta(0, 5).map(|d| d.1), Some(6));
        assert_eq!(cache.cached_delta(0, 4), None, "its version has passed");
        for since in 0..40 {
            cache.remember_delta(&store('a'), since, 6, Bytes::from_static(b"x"));
        }
        assert!(cache.deltas.lock().expect("lock").len() <= DELTAS_KEPT);
        cache.remember_delta(
            &store('a'),
            99,
            6,
            Bytes::from(vec![0u8; DELTA_KEPT_BYTES + 1]),
        );
        assert_eq!(cache.cached_delta(0, 99), None, "too large to keep");
        // Stale (an expiry due): nothing from memory.
        cache.observe(status('a', 7, Some(10)));
        cache.remember_delta(&store('a'), 6, 7, Bytes::from_static(b"6-7"));
        assert!(cache.cached_delta(9, 6).is_some());
        assert_eq!(cache.cached_delta(10, 6), None);
        cache.reset(status('a', 7, None));
        assert_eq!(cache.cached_delta(0, 6), None, "a reset drops them");
    }

    #[test]
    fn another_store_is_a_new_lineage_whatever_its_version() {
        let cache = KeyMapCache::new(status('a', 1_000, None));
        cache.remember_full(&store('a'), 1_000, Bytes::from_static(b"a"), Encoding::Json);
        assert_eq!(
            cache.observe(status('b', 3, None)),
            Observed::NewLineage {
                previous: store('a')
            }
        );
        assert_eq!(cache.fresh(0), Some((store('b'), 3)));
        assert_eq!(cache.cached_full(0, Encoding::Json), None);
    }

    #[test]
    fn the_full_map_is_served_only_for_the_current_store_and_version() {
        let cache = KeyMapCache::new(status('a', 2, None));
        cache.remember_full(&store('a'), 2, Bytes::from_static(b"two"), Encoding::Json);
        assert_eq!(
            cache.cached_full(0, Encoding::Json),
            Some((store('a'), 2, Bytes::from_static(b"two")))
        );
        assert_eq!(cache.cached_full(0, Encoding::Binary), None);
        cache.remember_full(&store('a'), 1, Bytes::from_static(b"one"), Encoding::Json);
        assert_eq!(cache.cached_full(0, Encoding::Json).map(|c| c.1), Some(2));
        // Another store's map at the same version is not this one.
        cache.remember_full(&store('b'), 2, Bytes::from_static(b"b2"), Encoding::Binary);
        assert_eq!(cache.cached_full(0, Encoding::Binary), None);
        cache.observe(status('a', 3, None));
        assert_eq!(cache.cached_full(0, Encoding::Json), None);
        cache.reset(status('a', 3, None));
        cache.remember_full(&store('a'), 3, Bytes::from_static(b"3"), Encoding::Json);
        cache.reset(status('a', 3, None));
        assert_eq!(cache.cached_full(0, Encoding::Json), None);
    }
}

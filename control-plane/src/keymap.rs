//! What the key-map endpoint keeps in memory: the current version (so a poll that changes
//! nothing is answered 304 without touching the database) and the last full map's JSON.

use crate::store::KeyMapStatus;
use axum::body::Bytes;
use std::sync::{Mutex, RwLock};

/// The `ETag` of a key-map version: `"<version>"`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// True when an `If-None-Match` value names `version` (weak tags and `*` included).
pub fn if_none_match_matches(header_value: &str, version: u64) -> bool {
    header_value.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*"
            || tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
                == Some(version)
    })
}

struct CachedFull {
    version: u64,
    body: Bytes,
}

/// The two encodings of a full map: JSON, and keygate's binary form for large maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json = 0,
    Binary = 1,
}

pub struct KeyMapCache {
    status: RwLock<KeyMapStatus>,
    full: [Mutex<Option<CachedFull>>; 2],
}

impl KeyMapCache {
    pub fn new(status: KeyMapStatus) -> KeyMapCache {
        KeyMapCache {
            status: RwLock::new(status),
            full: [Mutex::new(None), Mutex::new(None)],
        }
    }

    /// Takes a status read from the store. Never goes back to an older version: a slow
    /// reader must not undo a newer writer's news.
    pub fn observe(&self, status: KeyMapStatus) {
        // The status is plain data, always whole: a poisoned lock still holds a valid one.
        let mut current = self.status.write().unwrap_or_else(|e| e.into_inner());
        if status.version >= current.version {
            *current = status;
        }
    }

    /// The current version while it is still exact: `None` once a key's expiry has passed
    /// and the map must be purged (by a store read) before any answer.
    pub fn fresh_version(&self, now: u64) -> Option<u64> {
        let status = *self.status.read().unwrap_or_else(|e| e.into_inner());
        match status.next_expiry {
            Some(expiry) if now >= expiry => None,
            _ => Some(status.version),
        }
    }

    /// The last full map in `encoding`, if it is still the current map.
    pub fn cached_full(&self, now: u64, encoding: Encoding) -> Option<(u64, Bytes)> {
        let version = self.fresh_version(now)?;
        let full = self.full[encoding as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        full.as_ref()
            .filter(|cached| cached.version == version)
            .map(|cached| (cached.version, cached.body.clone()))
    }

    pub fn remember_full(&self, version: u64, body: Bytes, encoding: Encoding) {
        let mut full = self.full[encoding as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !matches!(full.as_ref(), Some(cached) if cached.version > version) {
            *full = Some(CachedFull { version, body });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: u64, next_expiry: Option<u64>) -> KeyMapStatus {
        KeyMapStatus {
            version,
            next_expiry,
        }
    }

    #[test]
    fn etags_match_if_none_match_forms() {
        assert_eq!(etag(7), "\"7\"");
        assert!(if_none_match_matches("\"7\"", 7));
        assert!(if_none_match_matches("W/\"7\"", 7));
        assert!(if_none_match_matches("\"3\", \"7\"", 7));
        assert!(if_none_match_matches("*", 7));
        assert!(!if_none_match_matches("\"6\"", 7));
        assert!(!if_none_match_matches("7", 7));
        assert!(!if_none_match_matches("", 7));
    }

    #[test]
    fn versions_never_go_back_and_expiry_makes_them_stale() {
        let cache = KeyMapCache::new(status(5, Some(100)));
        cache.observe(status(4, None));
        assert_eq!(cache.fresh_version(99), Some(5));
        assert_eq!(cache.fresh_version(100), None);
        cache.observe(status(6, None));
        assert_eq!(cache.fresh_version(1000), Some(6));
    }

    #[test]
    fn the_full_map_is_served_only_for_the_current_version() {
        let cache = KeyMapCache::new(status(2, None));
        cache.remember_full(2, Bytes::from_static(b"two"), Encoding::Json);
        assert_eq!(
            cache.cached_full(0, Encoding::Json),
            Some((2, Bytes::from_static(b"two")))
        );
        assert_eq!(cache.cached_full(0, Encoding::Binary), None);
        cache.remember_full(1, Bytes::from_static(b"one"), Encoding::Json);
        assert_eq!(cache.cached_full(0, Encoding::Json).map(|c| c.0), Some(2));
        cache.observe(status(3, None));
        assert_eq!(cache.cached_full(0, Encoding::Json), None);
    }
}

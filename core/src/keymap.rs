//! The key map: digest of a key → what the key is. Lookup is one hash probe whatever the
//! number of keys, and digests are compared in constant time (`Digest`'s equality).

use crate::prelude::*;

use crate::bucket::KeyInfo;
use crate::digest::{Digest, DigestBuildHasher};
use crate::key::KeyKind;
use alloc::sync::Arc;
use core::fmt;
use hashbrown::HashMap;

/// What the map knows about one key. Never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Shared by all the keys of one account.
    pub account_id: Arc<str>,
    /// A non-secret handle for logs and headers.
    pub key_id: Box<str>,
    pub kind: KeyKind,
    /// Unix seconds after which the key is refused (a rolled key's grace period).
    pub expires_at: Option<u64>,
    pub disabled: bool,
    pub limit: Option<crate::rate_limit::RateLimit>,
}

impl KeyEntry {
    pub fn info(&self) -> KeyInfo<'_> {
        KeyInfo {
            account_id: &self.account_id,
            key_id: &self.key_id,
            kind: self.kind,
            expires_at: self.expires_at,
            disabled: self.disabled,
            limit: self.limit,
        }
    }
}

/// A digest appeared twice where the map must be one-to-one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateDigest {
    /// Position of the second occurrence in the input.
    pub index: usize,
}

impl fmt::Display for DuplicateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate digest (also given by an earlier key)")
    }
}

#[derive(Debug, Default, Clone)]
pub struct KeyMap {
    entries: HashMap<Digest, KeyEntry, DigestBuildHasher>,
}

impl KeyMap {
    pub fn new() -> KeyMap {
        KeyMap::default()
    }

    /// Builds a map, refusing any digest given twice.
    pub fn build(
        pairs: impl IntoIterator<Item = (Digest, KeyEntry)>,
    ) -> Result<KeyMap, DuplicateDigest> {
        let iter = pairs.into_iter();
        let mut entries =
            HashMap::with_capacity_and_hasher(iter.size_hint().0, DigestBuildHasher::default());
        for (index, (digest, entry)) in iter.enumerate() {
            if entries.insert(digest, entry).is_some() {
                return Err(DuplicateDigest { index });
            }
        }
        Ok(KeyMap { entries })
    }

    pub fn get(&self, digest: &Digest) -> Option<&KeyEntry> {
        self.entries.get(digest)
    }

    /// Adds or replaces one key (a delta from the control plane).
    pub fn upsert(&mut self, digest: Digest, entry: KeyEntry) {
        self.entries.insert(digest, entry);
    }

    /// Removes one key; true when it was there.
    pub fn remove(&mut self, digest: &Digest) -> bool {
        self.entries.remove(digest).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Digest, &KeyEntry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Environment, KeyType};

    fn entry(account: &str, id: &str) -> KeyEntry {
        KeyEntry {
            account_id: Arc::from(account),
            key_id: id.into(),
            kind: KeyKind::new(KeyType::Secret, Environment::Test),
            expires_at: None,
            disabled: false,
            limit: None,
        }
    }

    #[test]
    fn finds_keys_by_digest_and_nothing_else() {
        let map = KeyMap::build([
            (Digest::of_key("sk_test_a"), entry("acct_1", "key_a")),
            (Digest::of_key("sk_test_b"), entry("acct_1", "key_b")),
        ])
        .expect("no duplicates");
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.get(&Digest::of_key("sk_test_b")).map(|e| &*e.key_id),
            Some("key_b")
        );
        assert!(map.get(&Digest::of_key("sk_test_c")).is_none());
    }

    #[test]
    fn digests_sharing_their_first_bytes_stay_apart() {
        let a = Digest([7; 32]);
        let mut b = a;
        b.0[31] = 8;
        let map = KeyMap::build([(a, entry("x", "a")), (b, entry("x", "b"))]).expect("distinct");
        assert_eq!(map.get(&a).map(|e| &*e.key_id), Some("a"));
        assert_eq!(map.get(&b).map(|e| &*e.key_id), Some("b"));
    }

    #[test]
    fn duplicate_digests_are_refused_with_their_position() {
        let d = Digest::of_key("sk_test_a");
        let err = KeyMap::build([(d, entry("a", "1")), (d, entry("a", "2"))]);
        assert_eq!(err.err(), Some(DuplicateDigest { index: 1 }));
    }

    #[test]
    fn deltas_add_replace_and_remove() {
        let mut map = KeyMap::new();
        let d = Digest::of_key("sk_test_a");
        map.upsert(d, entry("a", "1"));
        map.upsert(d, entry("a", "2"));
        assert_eq!(map.get(&d).map(|e| &*e.key_id), Some("2"));
        assert!(map.remove(&d));
        assert!(!map.remove(&d));
        assert!(map.is_empty());
    }
}

//! Turns a presented key into its kind and SHA-256 digest, remembering recent answers.
//!
//! A client sends the same key on every call, so the filter would recompute the same
//! checksum check and SHA-256 (in wasm, the largest part of a decision) again and again. The
//! cache keeps, per recently seen key, a 128-bit SipHash-1-3 tag of the key under a secret
//! drawn once per VM, with the key's kind and digest: no plaintext, and nothing an attacker
//! can aim at without the secret (a false hit needs a 128-bit tag collision). The mapping
//! key → (kind, digest) never changes, so entries cannot go stale when keys are rolled or
//! revoked: the key map is still asked on every request.

use crate::prelude::*;

use crate::digest::Digest;
use crate::key::{check_key, KeyFormatError, KeyKind};
use core::hash::Hasher;
use siphasher::sip128::{Hasher128, SipHasher13};

/// Slots in a cache: 64 bytes each, so 4 MiB per worker VM (allocated at its first
/// request). Direct-mapped, so 10,000 clients' keys in rotation mostly hit (about 86%).
pub const DEFAULT_SLOTS: usize = 65536;

/// The kind and digest of a well-formed key: what a key map lookup needs.
pub fn identify(key: &str) -> Result<(KeyKind, Digest), KeyFormatError> {
    let kind = check_key(key)?;
    Ok((kind, Digest::of_key(key)))
}

#[derive(Clone, Copy)]
struct Slot {
    tag: u128,
    kind: KeyKind,
    digest: Digest,
}

/// A direct-mapped cache of `identify` answers (only well-formed keys are kept).
pub struct DigestCache {
    secret: [u8; 16],
    slots: Box<[Option<Slot>]>,
}

impl DigestCache {
    /// `secret` must come from a secure random source; `slots` is rounded up to a power of two.
    pub fn new(secret: [u8; 16], slots: usize) -> DigestCache {
        let slots = slots.max(1).next_power_of_two();
        DigestCache {
            secret,
            slots: vec![None; slots].into_boxed_slice(),
        }
    }

    /// `identify(key)`, from the cache when this key was seen (and not evicted) before.
    pub fn identify(&mut self, key: &str) -> Result<(KeyKind, Digest), KeyFormatError> {
        let mut hasher = SipHasher13::new_with_key(&self.secret);
        hasher.write(key.as_bytes());
        let tag = hasher.finish128().as_u128();
        // The low bits pick the slot; the whole tag must match for a hit.
        let index = (tag as usize) & (self.slots.len() - 1);
        if let Some(slot) = &self.slots[index] {
            if slot.tag == tag {
                return Ok((slot.kind, slot.digest));
            }
        }
        let (kind, digest) = identify(key)?;
        self.slots[index] = Some(Slot { tag, kind, digest });
        Ok((kind, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::issue_key;

    fn key(kind: usize, seed: u8) -> String {
        issue_key(KeyKind::ALL[kind], &[seed; 32])
    }

    #[test]
    fn answers_as_identify_does_on_a_miss_and_on_a_hit() {
        let mut cache = DigestCache::new([9; 16], 16);
        for seed in 0..40u8 {
            let k = key(usize::from(seed % 4), seed);
            let expected = identify(&k).unwrap();
            assert_eq!(cache.identify(&k).unwrap(), expected);
            assert_eq!(cache.identify(&k).unwrap(), expected);
        }
    }

    #[test]
    fn refuses_malformed_keys_every_time_and_keeps_none() {
        let mut cache = DigestCache::new([1; 16], 4);
        let good = key(0, 3);
        let mut bad = good.clone();
        bad.pop();
        bad.push(if good.ends_with('A') { 'B' } else { 'A' });
        for _ in 0..3 {
            assert_eq!(cache.identify(&bad), Err(KeyFormatError::BadChecksum));
            assert_eq!(cache.identify("nope"), Err(KeyFormatError::UnknownPrefix));
        }
        assert!(cache.slots.iter().all(Option::is_none));
    }

    #[test]
    fn a_one_slot_cache_still_answers_right_for_alternating_keys() {
        let mut cache = DigestCache::new([4; 16], 1);
        let (a, b) = (key(0, 1), key(2, 2));
        for _ in 0..3 {
            assert_eq!(cache.identify(&a).unwrap(), identify(&a).unwrap());
            assert_eq!(cache.identify(&b).unwrap(), identify(&b).unwrap());
        }
    }

    #[test]
    fn holds_no_plaintext() {
        let mut cache = DigestCache::new([7; 16], 8);
        let k = key(1, 5);
        cache.identify(&k).unwrap();
        let slot = cache.slots.iter().flatten().next().unwrap();
        let mut stored = slot.tag.to_le_bytes().to_vec();
        stored.extend_from_slice(&slot.digest.0);
        assert!(!stored
            .windows(8)
            .any(|w| k.as_bytes().windows(8).any(|kw| kw == w)));
    }

    #[test]
    fn a_slot_is_64_bytes() {
        assert_eq!(core::mem::size_of::<Option<Slot>>(), 64);
    }

    #[test]
    fn tags_depend_on_the_secret() {
        let k = key(0, 8);
        let tag = |secret| {
            let mut h = SipHasher13::new_with_key(&secret);
            h.write(k.as_bytes());
            h.finish128().as_u128()
        };
        assert_ne!(tag([0; 16]), tag([1; 16]));
    }
}

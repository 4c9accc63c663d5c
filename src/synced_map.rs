//! A worker's window onto the synced key map in shared data: the published version, and a
//! bounded cache of the buckets this worker has read. A version change clears the cache, so
//! a rolled key is refused within one tick of the fetcher publishing.

#![forbid(unsafe_code)]

use crate::abi;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use keygate_core::bucket::BUCKETS;
use keygate_core::shared_data::{bucket_key, version_key};

/// Buckets cached per worker (about 15 MB at a million keys): enough that 10,000 clients'
/// keys in rotation find their buckets cached instead of costing a shared-data read each.
const MAX_CACHED_BUCKETS: usize = 16384;

pub struct SyncedMap {
    version_key: String,
    bucket_keys: Vec<String>,
    version: Cell<Option<u64>>,
    cache: RefCell<BucketCache>,
}

/// Cached buckets by bucket number (a slot per bucket: 256 KB, no hashing per lookup), and
/// which ones are held, so that one can be evicted without a scan.
struct BucketCache {
    slots: Vec<Option<Rc<Vec<u8>>>>,
    held: Vec<u32>,
}

impl BucketCache {
    fn new() -> BucketCache {
        BucketCache {
            slots: vec![None; BUCKETS],
            held: Vec::new(),
        }
    }

    fn get(&self, bucket: usize) -> Option<&Rc<Vec<u8>>> {
        self.slots.get(bucket)?.as_ref()
    }

    fn insert(&mut self, bucket: usize, bytes: Rc<Vec<u8>>) {
        let Some(slot) = self.slots.get_mut(bucket) else {
            return;
        };
        if slot.replace(bytes).is_some() {
            return;
        }
        if self.held.len() < MAX_CACHED_BUCKETS {
            self.held.push(bucket as u32);
            return;
        }
        // Full: evict one bucket, in effect at random (bucket numbers come from digests), so
        // hot buckets tend to stay, where clearing the whole cache would make every next
        // lookup miss.
        let victim_at = bucket % self.held.len();
        let victim = core::mem::replace(&mut self.held[victim_at], bucket as u32);
        if let Some(slot) = self.slots.get_mut(victim as usize) {
            *slot = None;
        }
    }

    fn clear(&mut self) {
        for bucket in self.held.drain(..) {
            if let Some(slot) = self.slots.get_mut(bucket as usize) {
                *slot = None;
            }
        }
    }
}

impl SyncedMap {
    pub fn new(namespace: &str) -> SyncedMap {
        SyncedMap {
            version_key: version_key(namespace),
            // Built once so a lookup formats nothing.
            bucket_keys: (0..BUCKETS).map(|b| bucket_key(namespace, b)).collect(),
            version: Cell::new(None),
            cache: RefCell::new(BucketCache::new()),
        }
    }

    /// The version this worker serves; None before the first synced map.
    pub fn version(&self) -> Option<u64> {
        self.version.get()
    }

    /// Re-reads the published version; a new one drops every cached bucket.
    pub fn refresh(&self) {
        let published = abi::shared_data(&self.version_key)
            .ok()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_le_bytes);
        if published.is_some() && published != self.version.get() {
            self.cache.borrow_mut().clear();
            self.version.set(published);
        }
    }

    /// One bucket's bytes, from the cache or shared data (empty when it holds no key).
    pub fn bucket(&self, bucket: usize) -> Rc<Vec<u8>> {
        if let Some(bytes) = self.cache.borrow().get(bucket) {
            return bytes.clone();
        }
        let bytes = self
            .bucket_keys
            .get(bucket)
            .and_then(|key| abi::shared_data(key).ok())
            .unwrap_or_default();
        let bytes = Rc::new(bytes);
        self.cache.borrow_mut().insert(bucket, bytes.clone());
        bytes
    }
}

//! A worker's window onto the synced key map in shared data: the published version, and a
//! bounded cache of the buckets this worker has read. A version change clears the cache, so
//! a rolled key is refused within one tick of the fetcher publishing.

use crate::abi;
use keygate_core::bucket::BUCKETS;
use keygate_core::service_config::{bucket_key, version_key};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Buckets cached per worker (about 15 MB at a million keys): enough that 10,000 clients'
/// keys in rotation find their buckets cached instead of costing a shared-data read each.
const MAX_CACHED_BUCKETS: usize = 16384;

pub struct SyncedMap {
    version_key: String,
    bucket_keys: Vec<String>,
    version: Cell<Option<u64>>,
    cache: RefCell<HashMap<usize, Rc<Vec<u8>>>>,
}

impl SyncedMap {
    pub fn new(namespace: &str) -> SyncedMap {
        SyncedMap {
            version_key: version_key(namespace),
            // Built once so a lookup formats nothing.
            bucket_keys: (0..BUCKETS).map(|b| bucket_key(namespace, b)).collect(),
            version: Cell::new(None),
            cache: RefCell::new(HashMap::new()),
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
        if let Some(bytes) = self.cache.borrow().get(&bucket) {
            return bytes.clone();
        }
        let bytes = self
            .bucket_keys
            .get(bucket)
            .and_then(|key| abi::shared_data(key).ok())
            .unwrap_or_default();
        let bytes = Rc::new(bytes);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_CACHED_BUCKETS {
            // Evict one bucket, in effect at random (hash order): hot buckets tend to stay,
            // where clearing the whole cache would make every next lookup miss.
            if let Some(victim) = cache.keys().next().copied() {
                cache.remove(&victim);
            }
        }
        cache.insert(bucket, bytes.clone());
        bytes
    }
}
